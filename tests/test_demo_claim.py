"""The demo's claim, in small (README, `make demo`): PrefixRL training on prefixes of correct traces
of hard `chain` problems raises the base model's *unprefixed* pass@1 on those problems.

Here the traces of a demo run (tests/data/chain_demo_traces.jsonl) and the demo's prefixes (3 cuts
per trace at 40-80% + 1 unprefixed copy: PrefixConfig's defaults) train the shipped base model for
SETTINGS.steps steps, and the test checks that unprefixed pass@1 on those problems rises well clear
of its start, that the share of unprefixed moves that follow the declared rule rises (the skill
pass@1 amplifies), and that prefixed reward rises. This is the suite's slow end-to-end test; its
margins are measured over seeds and thread counts (SETTINGS, benchmarks/claim_margin.py).

What the policy learns is the rule itself, move by move: `chain`'s rules have no fixed-pattern
shortcut (tests/test_tasks.py), and the base model follows them at about 3/5 of its moves, which
RL sharpens. Plain RL on the same problems stays at ~0 for 120 steps (README, Tasks).
"""

import os
from pathlib import Path

import pytest
import torch

from prefixrl.files import read_jsonl
from prefixrl.generate import SamplingParams, make_sampler
from prefixrl.models import load_model, resolve_model
from prefixrl.prefixes import PrefixConfig, prefixed_problems, render_prompt
from prefixrl.tasks import problems_by_id
from prefixrl.traces import load_traces
from prefixrl.train import TrainConfig, train

TRACES = Path(__file__).parent / "data" / "chain_demo_traces.jsonl"
MODEL = "builtin:chain"
# 80 steps of 16 problems x 8 samples at lr 2e-4 (the demo: 150 steps at 1e-4). An RL run's trajectory
# depends on float order (CPU, BLAS, threads): at 50 steps this test passed on one machine (0.341) and
# ended at 0.000 on a fresh 2-core one (issue 17), and here seed 0 at 2 threads also ended at 0.000.
# Measured at 80 steps, `python benchmarks/claim_margin.py --seeds 0 1 2 3 4 5` (seeds stand in for
# machines; 13 problems x 32 samples at temperature 0.7; the base: pass@1 0.000, rule share 0.618):
#   seed/threads  0/1    0/2    1/1    1/2    2/1    2/2    3/1    4/1    5/1
#   pass@1        0.587  0.683  0.623  0.623  0.565  0.565  0.418  0.661  0.661
#   rule share    0.968  0.975  0.973  0.973  0.966  0.966  0.928  0.974  0.964
# (at step 70 pass@1 was 0.375-0.615). The thresholds sit at a third of the worst pass@1 and under half
# the smallest rule-share gain (+0.31).
SETTINGS = TrainConfig(steps=80, problems_per_step=16, num_generations=8, lr=2e-4, max_completion_length=128,
                       eval_every=80, eval_n=16, save_every=10**6, seed=0)
N_TRACES = 13  # the demo run's: 47 of 48 screened problems hard, traces for 13 within 2,500 attempts
MIN_FINAL = 0.15  # final unprefixed pass@1 must reach this, and gain at least MIN_GAIN and 5x the start
MIN_GAIN = 0.1
MIN_RULE_GAIN = 0.15  # unprefixed answers: share of moves that follow the declared rule, final over base
PREFIXED_GAIN = 0.1  # prefixed reward, last quarter of the steps over the first


@pytest.fixture(scope="module")
def demo(chain_task):
    traces = load_traces(TRACES)
    by_id = problems_by_id(chain_task)
    return traces, [by_id[t["problem_id"]] for t in traces]


@pytest.fixture
def cpu_threads():
    """Two threads (CI has two cores) unless OMP_NUM_THREADS says otherwise; restored after."""
    before = torch.get_num_threads()
    wanted = os.environ.get("OMP_NUM_THREADS", "")
    torch.set_num_threads(int(wanted) if wanted.isdigit() and int(wanted) > 0 else min(2, os.cpu_count() or 1))
    yield
    torch.set_num_threads(before)


def test_demo_traces_are_correct_and_fit(chain_task, demo):
    traces, problems = demo
    assert len(traces) == N_TRACES and len({p.id for p in problems}) == N_TRACES
    for trace, problem in zip(traces, problems):
        assert trace["prompt"] == problem.prompt
        assert chain_task.verify(problem, trace["completion"]).reward == 1
    _, tokenizer = load_model(resolve_model(MODEL))
    longest = max(len(tokenizer(t["completion"], add_special_tokens=False)["input_ids"]) for t in traces)
    assert longest + 1 <= SETTINGS.max_completion_length  # + EOS: a whole unprefixed solution fits


@pytest.mark.slow
def test_prefixrl_raises_unprefixed_pass_at_1_on_demo_problems(chain_task, demo, tmp_path, cpu_threads):
    traces, problems = demo
    path = resolve_model(MODEL)
    _, tokenizer = load_model(path)
    rows = prefixed_problems(tokenizer, traces, {p.id: p for p in problems}, PrefixConfig())
    assert sum(r["prefixed"] for r in rows) == 3 * N_TRACES and sum(not r["prefixed"] for r in rows) == N_TRACES

    train(chain_task, path, rows, tmp_path, SETTINGS, eval_problems={"train": problems})

    evals = {row["step"]: row["eval/train/pass@1"] for row in read_jsonl(tmp_path / "eval.jsonl")}
    base, final = evals[0], evals[SETTINGS.steps]
    assert base <= 0.02, f"the {N_TRACES} problems should be hard for the base model: pass@1 {base:.3f}"
    assert final >= max(MIN_FINAL, base + MIN_GAIN, 5 * base), \
        f"unprefixed pass@1 on the {N_TRACES} trained problems: {base:.3f} -> {final:.3f} ({evals})"

    # the per-decision skill that pass@1 raises to the power of 16-18 moves: it rises smoothly
    base_share, final_share = (rule_share(chain_task, model, problems) for model in (path, tmp_path / "model"))
    assert final_share >= base_share + MIN_RULE_GAIN, \
        f"share of unprefixed moves that follow the declared rule: {base_share:.3f} -> {final_share:.3f}"

    metrics = [row for row in read_jsonl(tmp_path / "metrics.jsonl") if "prefixed/reward" in row]
    quarter = len(metrics) // 4
    first = sum(r["prefixed/reward"] for r in metrics[:quarter]) / quarter
    last = sum(r["prefixed/reward"] for r in metrics[-quarter:]) / quarter
    assert last > first + PREFIXED_GAIN, f"prefixed reward, first vs last quarter of training: {first:.3f} -> {last:.3f}"


def rule_share(task, model_path, problems, n: int = 32) -> float:
    """Mean share of moves following the declared rule in n unprefixed answers per problem (temperature 0.7)."""
    sampler = make_sampler(None, str(model_path), SamplingParams(temperature=0.7, max_new_tokens=128, batch_size=512))
    samples = sampler.generate([render_prompt(sampler.tokenizer, p.prompt) for p in problems], n, seed=12345)
    shares = [task.rule_share(p, s.text) for p, group in zip(problems, samples) for s in group]
    shares = [v for v in shares if v is not None]  # as benchmarks/claim_margin.py measures it
    return sum(shares) / len(shares)
