"""A small compute-matched experiment end to end on the shipped chain model: every run stops at
the FLOPs budget, the report's numbers match the runs' own logs, and a killed experiment resumes."""

import json
import os
import shutil

import pytest
import torch

from prefixrl.experiment import run_experiment
from prefixrl.analysis import read_metrics
from prefixrl.files import InputError, read_jsonl

torch.set_num_threads(1)
BUDGET, STEPS = 2.4e10, 6
CONFIG = f"""
task: chain
model: builtin:chain
sampling: {{temperature: 1.0, max_new_tokens: 96, batch_size: 256}}
screen: {{problems: easy, limit: 6, n: 4, k: 4}}     # easy problems: traces in a few dozen attempts
collect: {{max_attempts: 256, attempts_per_round: 64}}
methods: [prefixrl, rl, sft-rl]
seeds: [0, 1]
budget_flops: {BUDGET}
train: {{steps: {STEPS}, problems_per_step: 4, num_generations: 4, max_completion_length: 96, eval_every: 2,
         eval_n: 4, save_every: 100}}
sft: {{sweep_lr: [1.0e-3, 3.0e-3], sweep_epochs: [1, 2], validation_problems: 2, validation_n: 2}}
calibration_traces: 2
calibration_n: 4
"""


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    folder = tmp_path_factory.mktemp("experiment")
    (folder / "config.yaml").write_text(CONFIG)
    summary = run_experiment(folder / "config.yaml", folder / "out", quiet=True)
    return folder, summary


def evals(out, method, seed):
    return read_jsonl(out / "runs" / method / f"seed-{seed}" / "eval.jsonl")


def test_runs_are_compute_matched(experiment):
    folder, _ = experiment
    out = folder / "out"
    collect = json.loads((out / "traces" / "flops.json").read_text())["total"]
    for method in ("prefixrl", "rl", "sft-rl"):
        for seed in (0, 1):
            curve = evals(out, method, seed)
            start = curve[0]["flops"]
            if method == "rl":
                assert start == 0  # never sees a trace: not charged for collecting them
            elif method == "prefixrl":
                assert start == collect
            else:
                assert start > collect  # collection, then SFT on the traces
            steps = [r for r in read_jsonl(out / "runs" / method / f"seed-{seed}" / "metrics.jsonl") if "loss" in r]
            assert all(r["flops/total"] < BUDGET for r in steps[:-1])  # it ran until the budget ...
            assert steps[-1]["flops/total"] >= BUDGET or len(steps) == STEPS  # ... or the step cap
            assert curve[-1]["step"] == len(steps) and curve[-1]["flops"] == steps[-1]["flops/total"]
    # trace methods spend part of the budget on collection: fewer RL steps than plain RL
    assert len(evals(out, "prefixrl", 0)) < len(evals(out, "rl", 0)) or evals(out, "rl", 0)[-1]["step"] == STEPS


def _mean_reach(runs, target):
    """First FLOPs at which the seed mean (each seed holding its last evaluation) reaches target."""
    for x in sorted({f for run in runs for f, _ in run}):
        held = [[v for f, v in run if f <= x] for run in runs]
        if all(held) and sum(h[-1] for h in held) / len(held) >= target:
            return x
    return None


def test_report_numbers_match_the_logs(experiment):
    folder, summary = experiment
    out = folder / "out"
    assert json.loads((out / "report" / "summary.json").read_text()) == json.loads(json.dumps(summary))
    for split in ("hard", "heldout"):
        key = f"eval/{split}/pass@1"
        curves = {m: [[(r["flops"], r[key]) for r in evals(out, m, s)] for s in (0, 1)] for m in ("prefixrl", "rl", "sft-rl")}
        finals = {m: sum(c[-1][1] for c in runs) / 2 for m, runs in curves.items()}
        numbers = summary["headline"][split]
        for method, value in finals.items():
            assert numbers["final"][method]["mean"] == pytest.approx(value)
        for baseline in ("rl", "sft-rl"):
            row = numbers["against"][baseline]
            if finals[baseline] > 0:
                assert row["final_ratio"] == pytest.approx(finals["prefixrl"] / finals[baseline])
                spent = _mean_reach(curves[baseline], finals[baseline])
                ours = _mean_reach(curves["prefixrl"], finals[baseline])
                assert row["speedup"] == (None if ours is None else pytest.approx(spent / ours))
            elif finals["prefixrl"] > 0:
                assert row["speedup"] == row["final_ratio"] == float("inf")
            else:
                assert row["speedup"] is None and row["final_ratio"] is None
    text = (out / "report" / "README.md").read_text()
    assert f"{summary['headline']['hard']['final']['prefixrl']['mean']:.3f}" in text
    assert all(c["claim"] in text and c["status"] in text for c in summary["claims"])
    for figure in ("curves", "entropy", "grad_norm", "success_vs_prefix", "back_generalization"):
        assert (out / "report" / f"{figure}.png").read_bytes()[:4] == b"\x89PNG"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["flops"] == summary["total_flops"] > BUDGET and manifest["versions"]["torch"]
    # sft-rl's SFT was tuned on validation problems: 2 lrs x 2 lengths per seed, its choice the best
    assert [t["seed"] for t in summary["sft_tuning"]] == [0, 1] and "The SFT baseline, tuned" in text
    for tuned in summary["sft_tuning"]:
        assert len(tuned["sweep"]) == 4
        best = max(tuned["sweep"], key=lambda r: (r["validation_pass@1"], -r["train_loss"]))
        assert (tuned["chosen"]["lr"], tuned["chosen"]["epochs"]) == (best["lr"], best["epochs"])


def test_the_regime_row_is_read_from_the_experiments_own_stages(experiment, capsys):
    """The report's regime row: the task's measured properties beside who won, each from the
    experiment's own files; benchmarks/regime_table.py puts rows side by side."""
    import importlib.util

    folder, summary = experiment
    out, row = folder / "out", summary["regime"]
    screened, hard = json.loads((out / "screen" / "screen.json").read_text())["problems"], read_jsonl(
        out / "screen" / "hard.jsonl")
    traces = read_jsonl(out / "traces" / "traces.jsonl")
    assert row["hard share (pass@k = 0)"] == pytest.approx(len(hard) / screened)
    assert row["trace yield (of hard)"] == pytest.approx(len({t["problem_id"] for t in traces}) / len(hard))
    after_sft = [evals(out, "sft-rl", s)[0]["eval/heldout/pass@1"] for s in (0, 1)]
    assert row["sft pass@1 right after SFT (heldout)"] == pytest.approx(sum(after_sft) / 2)
    zero = [r["unprefixed/zero_advantage"] for s in (0, 1)
            for r in read_metrics(out / "runs" / "rl" / f"seed-{s}" / "metrics.jsonl") if "flops/total" in r]
    assert row["rl zero-advantage groups"] == pytest.approx(sum(zero) / len(zero))
    finals = {m: v["mean"] for m, v in summary["headline"]["heldout"]["final"].items()}
    assert row["winner (heldout)"] == max(finals, key=finals.get)
    assert "## The task's regime" in (out / "report" / "README.md").read_text()
    spec = importlib.util.spec_from_file_location("regime_table", "benchmarks/regime_table.py")
    table = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(table)
    assert table.main([str(out), str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed.count(f"`{row['task']}`") == 2 and "| trace yield (of hard) |" in printed
    assert table.main([str(folder / "missing")]) == 2


def test_a_killed_experiment_resumes_with_the_same_numbers(experiment, tmp_path):
    folder, summary = experiment
    out = tmp_path / "out"
    shutil.copytree(folder / "out", out)
    killed = out / "runs" / "sft-rl" / "seed-1"  # killed during its RL: logs, no model
    shutil.rmtree(killed / "model")
    (killed / "manifest.json").unlink()
    shutil.rmtree(out / "report")
    before = {m: evals(out, m, 0) for m in ("prefixrl", "rl")}
    resumed = run_experiment(folder / "config.yaml", out, quiet=True)
    assert {m: evals(out, m, 0) for m in ("prefixrl", "rl")} == before  # finished runs untouched
    assert resumed["headline"] == summary["headline"]  # the redone run: same seed, same numbers


def test_traces_from_another_model(tmp_path):
    """Cross-family traces: screening uses the policy, collection the trace model, whose own
    log-probs the traces record as the behaviour policy's."""
    from rich.console import Console

    from prefixrl.models import load_model, resolve_model, sequence_logprobs
    from prefixrl.pipeline import PipelineConfig, build_config, prepare_data
    from prefixrl.tasks import problems_by_id

    policy, tokenizer = load_model(resolve_model("builtin:chain"), device="cpu")
    other, _ = load_model(resolve_model("builtin:chain"), device="cpu")
    torch.manual_seed(0)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(0.02 * torch.randn_like(p))  # another model that still executes the steps
    other.save_pretrained(tmp_path / "other")
    tokenizer.save_pretrained(tmp_path / "other")
    cfg = build_config(PipelineConfig, {
        "task": "chain", "model": "builtin:chain", "trace_model": str(tmp_path / "other"),
        "sampling": {"max_new_tokens": 96, "batch_size": 256}, "screen": {"problems": "easy", "limit": 4, "n": 4, "k": 4},
        "collect": {"max_attempts": 256, "attempts_per_round": 64}}, "test")
    data = prepare_data(cfg, tmp_path / "out", Console(quiet=True), quiet=True)
    assert data.traces and all(t["source"] == str(tmp_path / "other") for t in data.traces)
    trace, problem = data.traces[0], problems_by_id(data.task)[data.traces[0]["problem_id"]]
    mine = [sequence_logprobs(m, tokenizer, problem.prompt, trace["token_ids"]) for m in (other, policy)]
    assert trace["logprobs"] == pytest.approx(mine[0], abs=1e-4)
    assert trace["logprobs"] != pytest.approx(mine[1], abs=1e-4)


def test_prepared_prefixes_keep_to_the_context_window(chain_task, tmp_path, monkeypatch):
    """The data stages bound a prefixed prompt by the policy's context window (256 tokens) less the
    tokens training generates, as `prefixrl prefixes` does (screening and collection stubbed)."""
    from rich.console import Console

    import prefixrl.pipeline as pipeline
    from conftest import solve_chain
    from prefixrl.pipeline import PipelineConfig, build_config, prepare_data
    from prefixrl.prefixes import prefixed_problems

    hard = chain_task.problems("train")[:2]
    traces = [{"problem_id": p.id, "completion": solve_chain(p.prompt)} for p in hard]
    monkeypatch.setattr(pipeline, "screen", lambda *args, **kwargs: hard)
    monkeypatch.setattr(pipeline, "collect", lambda *args, **kwargs: traces)
    cfg = build_config(PipelineConfig, {"task": "chain", "prefixes": {"on_too_long": "truncate"}}, "test")
    room = max(len(p.prompt) for p in hard) + 5  # a char-level base model: a prompt's tokens are its characters
    data = prepare_data(cfg, tmp_path, Console(quiet=True), quiet=True, max_completion_length=256 - room)
    prompts = {p.id: p.prompt for p in hard}
    prefixed = [r for r in data.rows if r["prefixed"]]
    assert prefixed and all(len(prompts[r["problem_id"]]) + r["prefix_tokens"] <= room for r in prefixed)
    assert (tmp_path / "prefixes" / "train.jsonl").exists()
    refused = build_config(PipelineConfig, {"task": "chain"}, "test")  # on_too_long: error
    with pytest.raises(InputError, match="trace 0"):
        prepare_data(refused, tmp_path / "refused", Console(quiet=True), quiet=True, max_completion_length=256 - room)
    # by default the sampling's max_new_tokens (128) leaves room for every prefix, uncut
    uncut = prepare_data(refused, tmp_path / "default", Console(quiet=True), quiet=True).rows
    expected = prefixed_problems(data.sampler.tokenizer, traces, {p.id: p for p in hard}, refused.prefixes)
    assert [r["prefix"] for r in uncut] == [r["prefix"] for r in expected]


def test_a_config_section_keeps_the_defaults_it_does_not_set(tmp_path):
    """An experiment's `train:` without `steps` keeps the experiment's cap (a budget, not 100
    steps, ends each run), and YAML's text for 1e-4 is read as a number."""
    from prefixrl.experiment import ExperimentConfig

    (tmp_path / "c.yaml").write_text("train: {lr: 1e-4, eval_every: 5}\nsft: {lr: 2e-3}\n")
    cfg = ExperimentConfig.from_yaml(tmp_path / "c.yaml")
    assert cfg.train.steps == ExperimentConfig().train.steps == 100_000
    assert (cfg.train.lr, cfg.train.eval_every, cfg.sft.lr) == (1e-4, 5, 2e-3)
    (tmp_path / "bad.yaml").write_text("train: {lr: fast}\n")
    with pytest.raises(InputError, match="train: lr must be a number, got 'fast'"):
        ExperimentConfig.from_yaml(tmp_path / "bad.yaml")


def test_an_experiment_refuses_what_its_report_could_not_compare(tmp_path, monkeypatch):
    """No evaluations (eval_every 0), or no held-out problems: refused before anything trains."""
    from types import SimpleNamespace

    from prefixrl import experiment

    (tmp_path / "c.yaml").write_text("train: {eval_every: 0}\n")
    with pytest.raises(ValueError, match="eval_every must be >= 1"):
        experiment.ExperimentConfig.from_yaml(tmp_path / "c.yaml")
    no_heldout = SimpleNamespace(solved=["p"], task=SimpleNamespace(problems=lambda split: []))
    monkeypatch.setattr(experiment, "prepare_data", lambda *args, **kwargs: no_heldout)
    (tmp_path / "c.yaml").write_text("task: math\n")
    with pytest.raises(InputError, match="no held-out problems"):
        experiment.run_experiment(tmp_path / "c.yaml", tmp_path / "out", quiet=True)


def _start_pool_then_die(pid_file: str) -> None:
    """An experiment's main process killed mid-run: its pool's worker is busy with a long run."""
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    from prefixrl.experiment import _init_worker

    pool = ProcessPoolExecutor(1, mp_context=get_context("spawn"), initializer=_init_worker,
                               initargs=(1, os.getpid()))
    worker_pid = pool.submit(os.getpid).result()
    pool.submit(time_sleep, 600)
    with open(pid_file, "w") as f:
        f.write(str(worker_pid))
    os._exit(0)


def time_sleep(seconds: float) -> None:
    import time

    time.sleep(seconds)


@pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="reads /proc")
def test_workers_exit_when_the_experiment_is_killed(tmp_path):
    """A worker left running would keep writing its run folder under a restarted experiment."""
    import time
    from multiprocessing import get_context

    pid_file = tmp_path / "worker.pid"
    main = get_context("spawn").Process(target=_start_pool_then_die, args=(str(pid_file),))
    main.start()
    main.join(60)
    worker = int(pid_file.read_text())
    deadline = time.time() + 15
    while time.time() < deadline and _alive(worker):
        time.sleep(0.5)
    assert not _alive(worker)


def _thread_settings() -> tuple[int, int, str | None]:
    return torch.get_num_threads(), torch.get_num_interop_threads(), os.environ.get("TOKENIZERS_PARALLELISM")


def test_workers_split_the_cores_between_them():
    """Two workers get half the cores this process may use each, in torch's intra-op and inter-op
    pools, and the tokenizers' pool is off: together they never ask for more threads than cores."""
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    from prefixrl.experiment import _init_worker, threads_per_worker

    cores = len(os.sched_getaffinity(0))
    share = threads_per_worker(2)
    assert share == max(1, cores // 2) and threads_per_worker(4 * cores) == 1
    with ProcessPoolExecutor(1, mp_context=get_context("spawn"), initializer=_init_worker,
                             initargs=(share, os.getpid())) as pool:
        assert pool.submit(_thread_settings).result() == (share, share, "false")


def _alive(pid: int) -> bool:
    """Running, and not a zombie waiting to be reaped (a container's init may never reap it)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.parametrize("name", ["benchmark-chain", "diagnostics", "adaptive"])
def test_the_chain_experiment_configs_build(name):
    """chain's experiment configs are read as written (a key the builder does not know, or a method
    it does not have, is an error), and they share chain's headline data and settings."""
    from prefixrl.experiment import ExperimentConfig
    from prefixrl.methods import METHODS

    cfg, headline = ExperimentConfig.from_yaml(f"configs/{name}.yaml"), ExperimentConfig.from_yaml(
        "configs/benchmark-chain.yaml")
    assert set(cfg.methods) <= set(METHODS) and "prefixrl" in cfg.methods
    assert headline.sft.sweep_lr and headline.sft.validation_problems  # sft-rl tuned, as on every task
    assert (cfg.screen, cfg.collect, cfg.prefixes, cfg.train, cfg.sft, cfg.budget_flops) == \
        (headline.screen, headline.collect, headline.prefixes, headline.train, headline.sft, headline.budget_flops)


@pytest.mark.parametrize("name", ["benchmark", "benchmark-mines", "benchmark-gambles"])
def test_the_headline_configs_build_at_honest_scale(name):
    """The headline (minefield) and the other regime tasks' headlines: read as written, every main
    method, and the issue's honest scale (>= 64 held-out problems, sft-rl tuned on a validation
    split, 3 seeds)."""
    from prefixrl.experiment import ExperimentConfig

    cfg = ExperimentConfig.from_yaml(f"configs/{name}.yaml")
    assert {"prefixrl", "sft-rl", "rl"} <= set(cfg.methods) and len(cfg.seeds) == 3
    assert cfg.heldout >= 64 and cfg.task_args["n_heldout"] >= 64 and cfg.sft.sweep_lr


@pytest.mark.parametrize("workers", [1, 2])
def test_a_failed_run_is_named_at_once_and_the_others_go_on(tmp_path, workers):
    """A run that fails (here: hint prompts that leave no room for a whole solution) is reported by
    name as it fails; the other runs still train, and the experiment then raises its error."""
    import io

    from rich.console import Console

    config = CONFIG.replace("methods: [prefixrl, rl, sft-rl]", "methods: [hint, prefixrl-only]")
    config = config.replace("seeds: [0, 1]", "seeds: [0]")
    config = config.replace("max_completion_length: 96", "max_completion_length: 248")  # 8 tokens of prompt
    config += f"prefixes: {{on_too_long: truncate}}\nworkers: {workers}\n"  # prefixes cut to fit; hints can't be
    (tmp_path / "config.yaml").write_text(config)
    printed = io.StringIO()
    with pytest.raises(InputError, match=r"training row \d+ .*context window"):
        run_experiment(tmp_path / "config.yaml", tmp_path / "out", quiet=True,
                       console=Console(file=printed, width=200))
    assert "run hint, seed 0 failed" in printed.getvalue()
    assert (tmp_path / "out" / "runs" / "prefixrl-only" / "seed-0" / "model").is_dir()  # ran after the failure
    assert not (tmp_path / "out" / "report").exists()


def test_runs_one_by_one_then_the_report_equal_the_one_process_experiment(experiment, tmp_path):
    """The cluster path: two runs as separate invocations (`--run I`, reusing the shared data
    stages on disk), then `--report-only`: the same report as the one-process experiment's."""
    from typer.testing import CliRunner

    from prefixrl.cli import app

    folder, summary = experiment
    out = tmp_path / "out"
    shutil.copytree(folder / "out", out)
    for method, seed in (("prefixrl", 0), ("rl", 1)):
        shutil.rmtree(out / "runs" / method / f"seed-{seed}")
    shutil.rmtree(out / "calibration" / "prefixrl")
    shutil.rmtree(out / "report")
    logs = [out / "screen" / "scores.jsonl", out / "traces" / "rounds.jsonl", out / "prefixes" / "train.jsonl"]
    data = [path.read_bytes() for path in logs]

    def cli(*args):
        result = CliRunner().invoke(app, ["experiment", str(folder / "config.yaml"), "--out", str(out), "--quiet",
                                          *args], env={"COLUMNS": "300"})
        return result.exit_code, " ".join(result.output.split())

    code, listed = cli("--list")
    assert code == 0 and "6 runs: --run 0 .. --run 5" in listed
    assert f"0 prefixrl 0 {out}/runs/prefixrl/seed-0 to run" in listed and "4 sft-rl 0" in listed
    assert listed.count("to run") == 2
    code, refused = cli("--report-only")
    assert code == 2 and "runs 0 (prefixrl, seed 0), 3 (rl, seed 1) are not finished" in refused
    assert cli("--run", "6")[0] == 2
    for index in (0, 3):
        code, output = cli("--run", str(index))
        assert code == 0, output
    assert [path.read_bytes() for path in logs] == data  # screened and collected once: nothing sampled again
    code, output = cli("--report-only")
    assert code == 0, output
    report, one_process = (json.loads((o / "report" / "summary.json").read_text()) for o in (out, folder / "out"))
    assert report == one_process and report["headline"] == json.loads(json.dumps(summary["headline"]))
    assert (out / "report" / "README.md").read_text() == (folder / "out" / "report" / "README.md").read_text()
