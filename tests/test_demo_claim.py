"""The demo's claim, in small (README, `make demo`): PrefixRL training on prefixes of correct traces
of hard `chain` problems raises the base model's *unprefixed* pass@1 on those problems.

The demo finds traces for 18 hard problems and trains 150 steps (16 problems x 8 samples per step,
lr 1e-4); unprefixed pass@1 on the 18 goes from 0.002 to 0.161. Here the same 18 traces
(tests/data/chain_demo_traces.jsonl, from a demo run) and the demo's prefixes (3 cuts per trace at
40-80% + 1 unprefixed copy: PrefixConfig's defaults) train the shipped base model for 100 steps at a
higher learning rate, and the test checks that unprefixed pass@1 on the 18 problems rises well
clear of its start. This is the suite's slow end-to-end test (about 2.5 minutes on 2 cores).

What it does not check: which problems gain. In every run measured for this test (step 100 at
seed 0 included), the gain sits on the 3 problems whose correct solution is all L moves (chain-33-11,
chain-01-11, chain-34-12: solved ~90%), the other 15 stay at ~0: at this learning rate and length
the policy first drifts towards "always L", not to a rule. Longer runs at lr 1e-4 (the benchmark,
200 steps) gain on about half the problems and on held-out ones by switching to strategy Q, whose
rule on this task degenerates to "R at every move once a+b is odd" (R keeps a+b's parity): a
shortcut of the task's design, not a rule learned move by move.
"""

import os
from pathlib import Path

import pytest
import torch

from prefixrl.files import read_jsonl
from prefixrl.models import load_model, resolve_model
from prefixrl.prefixes import PrefixConfig, prefixed_problems
from prefixrl.tasks import problems_by_id
from prefixrl.traces import load_traces
from prefixrl.train import TrainConfig, train

TRACES = Path(__file__).parent / "data" / "chain_demo_traces.jsonl"
MODEL = "builtin:chain"
# 100 steps of 16 problems x 8 samples at lr 1.75e-4 (the demo: 150 steps at 1e-4). Measured
# (1 thread): pass@1 0.000 at step 0 at every seed; at step 80 0.038 / 0.135 / 0.139 (seeds 0-2), at
# step 90 0.153 / 0.156 / 0.122 (seeds 1, 2, 4); at step 100 0.149 (seed 0, 2 threads, as CI): the
# rise starts at ~step 60, hence 100 steps. lr 2e-4 reached it sooner but at some seeds the policy wrote "/0" after its first move and ended there (pass@1 0, as the
# README reports for the demo); lr 1e-4 and 1.5e-4 had not taken off by step 80 at some seeds.
SETTINGS = TrainConfig(steps=100, problems_per_step=16, num_generations=8, lr=1.75e-4, max_completion_length=96,
                       eval_every=100, eval_n=16, save_every=10**6, seed=0)
MIN_FINAL = 0.05  # final unprefixed pass@1 must reach this, and gain at least MIN_GAIN and 5x the start
MIN_GAIN = 0.04
PREFIXED_GAIN = 0.05  # prefixed reward, last quarter of the steps over the first (measured: ~0.09 -> ~0.2)


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
    assert len(traces) == 18 and len({p.id for p in problems}) == 18
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
    assert sum(r["prefixed"] for r in rows) == 3 * 18 and sum(not r["prefixed"] for r in rows) == 18

    train(chain_task, path, rows, tmp_path, SETTINGS, eval_problems={"train": problems})

    evals = {row["step"]: row["eval/train/pass@1"] for row in read_jsonl(tmp_path / "eval.jsonl")}
    base, final = evals[0], evals[SETTINGS.steps]
    assert base <= 0.02, f"the 18 problems should be hard for the base model: pass@1 {base:.3f}"
    assert final >= max(MIN_FINAL, base + MIN_GAIN, 5 * base), \
        f"unprefixed pass@1 on the 18 trained problems: {base:.3f} -> {final:.3f} ({evals})"

    metrics = [row for row in read_jsonl(tmp_path / "metrics.jsonl") if "reward_prefixed" in row]
    quarter = len(metrics) // 4
    first = sum(r["reward_prefixed"] for r in metrics[:quarter]) / quarter
    last = sum(r["reward_prefixed"] for r in metrics[-quarter:]) / quarter
    assert last > first + PREFIXED_GAIN, f"prefixed reward, first vs last quarter of training: {first:.3f} -> {last:.3f}"
