"""prefixrl-adaptive (adaptive.py): re-calibration every `every` steps, charged to the ledger;
training on the live rows of their slots; the trace pool growing with the policy's own correct
answers; resume; calibration batches; prefixes past the context window. On a tiny random model
and the sort task, with test_methods.py's setup."""

import json
import shutil
from types import SimpleNamespace

import pytest
import torch
from transformers import AutoModelForCausalLM
from trl import GRPOTrainer

import prefixrl.train as train_module
from conftest import record_sampler_params
from prefixrl.adaptive import AdaptiveConfig, AdaptivePrefixes
from prefixrl.engine import run_method
from prefixrl.files import read_jsonl
from prefixrl.flops import FlopsLedger
from prefixrl.models import load_model, n_params
from prefixrl.prefixes import PrefixConfig, prefixed_problems
from test_methods import SMALL, cfg_for, check_method_run, policy_ids, recording, setup, weights  # noqa: F401
from test_train import mixed_rewards, read


ADAPTIVE_PREFIXES = PrefixConfig(cuts_per_trace=1)  # 4 rows: 2 steps of 2 problems see each row once
ADAPTIVE = AdaptiveConfig(every=1, n=2)
ADAPTIVE_SEED = 3  # its first batch holds both unprefixed slots, so the pool grows at once and step 1's rows change


def run_adaptive(setup, task, out):
    log = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(train_module, "reward_function", mixed_rewards)
        mp.setattr(GRPOTrainer, "_generate_and_score_completions", recording(log))
        model = run_method("prefixrl-adaptive", task, str(setup.model_dir), setup.rows, out,
                           cfg_for("prefixrl-adaptive", steps=2, save_every=1, seed=ADAPTIVE_SEED), traces=setup.traces,
                           eval_problems={"train": list(setup.problems.values())}, prefix_cfg=ADAPTIVE_PREFIXES,
                           adaptive_cfg=ADAPTIVE)
    return SimpleNamespace(out=out, model=model, rollouts=log, steps=2)


@pytest.fixture(scope="module")
def adaptive_run(setup, sort_task, tmp_path_factory):
    return run_adaptive(setup, sort_task, tmp_path_factory.mktemp("adaptive"))


def test_adaptive_runs_end_to_end(setup, adaptive_run):
    check_method_run(setup, adaptive_run, "prefixrl-adaptive")


def adaptive_rows(setup, folder):
    """The rows chosen from a re-calibration's folder, rebuilt from its traces and calibration."""
    prefix_cfg = PrefixConfig(cuts_per_trace=1, policy="adaptive", band=ADAPTIVE.band)
    return prefixed_problems(setup.tok, read(folder / "traces.jsonl"), setup.problems, prefix_cfg,
                             calibration=read(folder / "calibration.jsonl"))


def test_adaptive_recalibrates_every_step_and_charges_it(setup, adaptive_run):
    folder = adaptive_run.out / "adaptive"
    log = read(folder / "adaptive.jsonl")
    assert [r["step"] for r in log] == [0, 1, 2]
    tokens = 0
    for step in (0, 1, 2):
        calibration = read(folder / f"step-{step}" / "calibration.jsonl")
        assert len(calibration) == 2 and all(len(r["points"]) == 11 for r in calibration)
        assert all(p["n"] == ADAPTIVE.n for r in calibration for p in r["points"])
        tokens += sum(p["tokens"] for r in calibration for p in r["points"])
        rows = adaptive_rows(setup, folder / f"step-{step}")
        assert log[step]["rows"] == len(rows) == 4 and log[step]["prefixed"] == sum(r["prefixed"] for r in rows)
    ledger = json.loads((adaptive_run.out / "flops.json").read_text())
    calibration = ledger["stages"]["calibration"]
    model = AutoModelForCausalLM.from_pretrained(setup.model_dir)
    assert calibration["inference_tokens"] == tokens > 0
    assert calibration["flops"] == pytest.approx(2 * n_params(model) * tokens) and calibration["flops"] > 0


def test_adaptive_trains_on_the_live_rows_of_their_slots(setup, adaptive_run):
    folder = adaptive_run.out / "adaptive"
    assert [r["step"] for r in adaptive_run.rollouts] == [0, 1]
    slots = set()
    for rollout in adaptive_run.rollouts:
        rows = adaptive_rows(setup, folder / f"step-{rollout['step']}")  # the latest re-calibration's rows
        for x in rollout["inputs"]:
            assert "slot" in x and 0 <= x["slot"] < len(rows)
            row = rows[x["slot"]]
            assert {k: x[k] for k in ("prompt", "prefix", "prefixed", "problem_id")} == \
                {k: row[k] for k in ("prompt", "prefix", "prefixed", "problem_id")}
            slots.add(x["slot"])
    assert slots == {0, 1, 2, 3}  # one pass over the 4 slots
    # the policy's own answers replaced the traces: step 1 trained on prompts the start did not have
    first = adaptive_rows(setup, folder / "step-0")
    assert any(x["prompt"] != first[x["slot"]]["prompt"] for x in adaptive_run.rollouts[1]["inputs"]), \
        "ADAPTIVE_SEED no longer puts both unprefixed slots in the first batch: choose another seed"


def test_adaptive_pool_grows_with_correct_unprefixed_answers(setup, adaptive_run):
    folder = adaptive_run.out / "adaptive"
    # mixed_rewards: the first sample of each group is "correct"; unprefixed ones join the pool
    found = []
    for rollout in adaptive_run.rollouts:
        for i in range(0, len(rollout["inputs"]), 2):
            x = rollout["inputs"][i]
            if not x["prefixed"]:
                found.append((rollout["step"], x["problem_id"], rollout["completions"][i]))
    assert {pid for _, pid, _ in found} == set(setup.problems)  # both unprefixed slots were trained on
    pool = read(folder / "trace_pool.jsonl")
    originals = {t["completion"] for t in setup.traces}
    assert [(r["step"], r["problem_id"], r["completion"]) for r in pool] == \
        [f for f in found if f[2] not in originals]
    assert pool and all(r["origin"] == "policy" for r in pool)
    log = read(folder / "adaptive.jsonl")
    for step in (0, 1, 2):
        assert log[step]["policy_traces"] == sum(r["step"] < step for r in pool)
        latest = {t["problem_id"]: t["completion"] for t in setup.traces}
        latest.update({r["problem_id"]: r["completion"] for r in pool if r["step"] < step})
        # each re-calibration cuts from the problem's latest trace: the policy's own once it has one
        assert {t["problem_id"]: t["completion"] for t in read(folder / f"step-{step}" / "traces.jsonl")} == latest


@pytest.fixture(scope="module")
def resumed_run(setup, sort_task, adaptive_run, tmp_path_factory):
    """The adaptive run killed after checkpoint-1 (its logs ran on past it), then resumed."""
    out = tmp_path_factory.mktemp("resumed") / "killed"
    shutil.copytree(adaptive_run.out, out)
    shutil.rmtree(out / "model")
    (out / "manifest.json").unlink()
    shutil.rmtree(out / "checkpoints" / "checkpoint-2")
    # what the lost step had found (sampling after a resume may differ, e.g. on a GPU): forgotten
    with open(out / "adaptive" / "trace_pool.jsonl", "a") as f:
        f.write(json.dumps({"problem_id": setup.traces[0]["problem_id"], "completion": " lost",
                            "step": 1, "origin": "policy"}) + "\n")
    return run_adaptive(setup, sort_task, out)


def test_adaptive_resume_matches_an_uninterrupted_run(adaptive_run, resumed_run):
    out = resumed_run.out
    assert resumed_run.model == out / "model" and (out / "manifest.json").exists()
    assert [r["step"] for r in resumed_run.rollouts] == [1]  # only the lost step is redone
    assert resumed_run.rollouts[0]["inputs"] == adaptive_run.rollouts[1]["inputs"]  # step 1's live rows
    for name in ("adaptive/adaptive.jsonl", "adaptive/trace_pool.jsonl"):
        assert read(out / name) == read(adaptive_run.out / name), name
    for step in (0, 1, 2):
        for name in ("traces.jsonl", "calibration.jsonl"):
            path = f"adaptive/step-{step}/{name}"
            assert read(out / path) == read(adaptive_run.out / path), path
    # (eval/prefix_nll: see the next test)
    evals = [{k: v for k, v in r.items() if k != "eval/prefix_nll"} for r in read(out / "eval.jsonl")]
    assert evals == [{k: v for k, v in r.items() if k != "eval/prefix_nll"} for r in read(adaptive_run.out / "eval.jsonl")]
    assert json.loads((out / "flops.json").read_text()) == json.loads((adaptive_run.out / "flops.json").read_text())
    assert [r["step"] for r in read(out / "metrics.jsonl")] == [r["step"] for r in read(adaptive_run.out / "metrics.jsonl")]
    after, reference = weights(out / "model"), weights(adaptive_run.out / "model")
    assert all(torch.allclose(after[k], reference[k]) for k in reference)


def test_adaptive_resume_keeps_the_prefix_nll_set(adaptive_run, resumed_run):
    nll = [[r.get("eval/prefix_nll") for r in read(run.out / "eval.jsonl")] for run in (resumed_run, adaptive_run)]
    assert nll[0] == nll[1]


def test_adaptive_calibration_samples_in_batches_of_eval_batch_size(setup, sort_task, tmp_path, monkeypatch):
    import prefixrl.adaptive as adaptive_module

    made = record_sampler_params(monkeypatch, adaptive_module)
    adaptive = adaptive_module.AdaptivePrefixes(sort_task, setup.problems, setup.traces, ADAPTIVE_PREFIXES,
                                                AdaptiveConfig(every=1, n=1), tmp_path, max_new_tokens=8, batch_size=3)
    adaptive.start(0)
    model, tok = load_model(str(setup.model_dir), device="cpu")
    adaptive.rows(model, tok, 0, FlopsLedger())
    assert [(p.batch_size, p.max_new_tokens) for p in made] == [(3, 8)]


def test_adaptive_cuts_a_prefix_past_the_context_window_instead_of_failing(setup, sort_task, tmp_path):
    """The calibration grid ends at the whole trace; where a whole trace leaves no room for the
    completion (a chain trace of 18 moves in the benchmark did), that point and any row cut there
    are held to the longest prefix that fits."""
    model, tok = load_model(str(setup.model_dir), device="cpu")
    limit = 48
    window = SMALL.max_position_embeddings
    adaptive = AdaptivePrefixes(sort_task, setup.problems, setup.traces, ADAPTIVE_PREFIXES,
                                AdaptiveConfig(every=1, n=1), tmp_path, max_new_tokens=window - limit)
    adaptive.start(0)
    rows = adaptive.rows(model, tok, 0, FlopsLedger())
    assert all(len(tok(r["prompt"])["input_ids"]) <= limit for r in rows)
    points = [p for row in read_jsonl(tmp_path / "adaptive" / "step-0" / "calibration.jsonl") for p in row["points"]]
    longest = max(len(policy_ids(tok, t["completion"])) for t in setup.traces)
    assert max(p["prefix_tokens"] for p in points) < min(limit, longest)  # the 1.0 point was cut
