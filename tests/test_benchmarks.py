"""Benchmark scripts in their --smoke mode: a rename in the library cannot break them silently."""

import os
import runpy
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"

# every script's --smoke run (each ~5-15 s on one core), from the repository root as the scripts are
# documented: its arguments ({out}: a fresh folder under tmp_path; nothing is written elsewhere), a line
# of the table it prints, and a file it writes under {out} (None: the printed table is the check)
SMOKE = {
    "claim_margin.py": (["--out", "{out}"], "| seed | threads | step 0 | step 1 |",
                        "lr0.0002-steps1-seed0-threads1/scores.json"),
    "claim_margin.py --task minefield": (["--task", "minefield", "--out", "{out}"],
                                         "| seed | threads | unprefixed signal 1-10 |",
                                         "minefield-lr0.0002-steps1-seed0-threads1/scores.json"),
    "cross_family.py": (["--out", "{out}"], "| traces | prefixes | own training problems: pass@1 |", "README.md"),
    "headline.py": (["--out", "{out}", "--seeds", "0"], "| baseline | final pass@1 | speedup [90%] | final ratio [90%] |",
                    "seeds.yaml"),
    "mines_sis.py": (["builtin:mines", "{}", "{out}/sis.json"], "success vs prefix (moves done fraction):", "sis.json"),
    "mines_sis.py --traces": (["--traces", "builtin:mines", "{out}"], "", "collect/traces.jsonl"),
    "notation.py": ([], "| traces | 0% | 20% |", None),
    "regime.py": (["--out", "{out}"], "| method | hard pass@1 (start -> end) | held-out pass@1 |",
                  "prefixrl/eval.jsonl"),
    "sampling.py": ([], "fast loop's samples identical to model.generate's", None),
    "task_properties.py": (["--quiet", "--out", "{out}"], "| property | sort |", "properties.json"),
    "train_step.py": ([], "| trainer                  |  s/step |", None),
    "verify.py": ([], "adversarial answer (timeout 1 s)", None),
}
ELSEWHERE = {"gpu_check.py": "the tests below", "regime_table.py": "tests/test_experiment.py"}


def run_script(name: str, *argv: str, monkeypatch) -> None:
    monkeypatch.setattr(sys, "argv", [name, *argv])
    runpy.run_path(str(BENCHMARKS / name), run_name="__main__")


def test_gpu_check_smoke_passes_its_own_checks_on_cpu(tmp_path, monkeypatch):
    run_script("gpu_check.py", "--smoke", "--out", str(tmp_path), monkeypatch=monkeypatch)  # exits 1 on a failed check
    table = (tmp_path / "gpu_check.md").read_text()
    assert "| train fp32 | True |" in table and "| sampling float32 | True |" in table


def test_gpu_check_refuses_to_run_without_a_gpu_unless_smoke(tmp_path, monkeypatch):
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    with pytest.raises(SystemExit, match="no CUDA device"):
        run_script("gpu_check.py", "--out", str(tmp_path), monkeypatch=monkeypatch)


def test_every_benchmark_script_has_a_smoke_test():
    scripts = {path.name for path in BENCHMARKS.glob("*.py")}
    assert scripts == {name.split()[0] for name in SMOKE} | set(ELSEWHERE)


@pytest.fixture(scope="module")
def smoke_runs(tmp_path_factory):
    """Every script's --smoke run, two at a time: each is one process on one thread, so the pair uses
    both cores of a 2-core machine and the whole set costs half its serial time (~1 min here)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), *filter(None, [os.environ.get("PYTHONPATH")])])}

    def run(name: str):
        args, _, _ = SMOKE[name]
        out = tmp_path_factory.mktemp(name.replace(" ", "_").replace(".py", ""))
        script, *_ = name.split()
        argv = [a.format(out=out) if a != "{}" else a for a in args] + ["--smoke"]
        result = subprocess.run([sys.executable, str(BENCHMARKS / script), *argv], cwd=ROOT, env=env,
                                capture_output=True, text=True, timeout=300)
        return out, result

    with ThreadPoolExecutor(max_workers=2) as pool:
        return dict(zip(sorted(SMOKE), pool.map(run, sorted(SMOKE))))


@pytest.mark.parametrize("name", sorted(SMOKE))
def test_benchmark_smoke_runs_and_prints_its_table(name, smoke_runs):
    _, table, written = SMOKE[name]
    out, result = smoke_runs[name]
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert table in result.stdout
    assert written is None or (out / written).exists()
