"""Every method on one engine (methods.py): the rows each method trains on, the traces the
off-policy baselines read, a short end-to-end run of each method, and prefixrl-adaptive's
re-calibration, growing trace pool and resume, all on a tiny random model and the sort task."""

import copy
import json
import math
import shutil
from types import SimpleNamespace

import pytest
import torch
from transformers import AutoModelForCausalLM
from trl import GRPOTrainer

import prefixrl.train as train_module
from conftest import record_sampler_params, solve_sort
from prefixrl.adaptive import AdaptiveConfig, AdaptivePrefixes
from prefixrl.files import InputError, read_jsonl
from prefixrl.flops import FlopsLedger
from prefixrl.methods import METHODS, off_policy_traces, run_method, select_rows
from prefixrl.models import char_tokenizer, load_model, n_params, sequence_logprobs, tiny_model
from prefixrl.prefixes import BASE_HINT, PrefixConfig, prefixed_problems, render_prompt
from prefixrl.sft import SFTStageConfig
from prefixrl.train import TrainConfig
from test_train import SMALL, mixed_rewards, read

torch.set_num_threads(1)
MAX_LEN = 48
TRACE_LEN = 100  # a sort trace is 97 characters + <eos>: the off-policy baselines' groups must hold it
OFF_POLICY = ("offpolicy-is", "luffy")


def cfg_for(method: str, **changes) -> TrainConfig:
    fields = dict(steps=1, problems_per_step=2, num_generations=2, eval_every=1, eval_n=2, progress_bar=False,
                  max_completion_length=TRACE_LEN if method in OFF_POLICY else MAX_LEN)
    return TrainConfig(**{**fields, **changes})


def policy_ids(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]


@pytest.fixture(scope="module")
def setup(sort_task, tmp_path_factory):
    tok = char_tokenizer()
    model_dir = tmp_path_factory.mktemp("tiny")
    tiny_model(tok, SMALL).save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    problems = {p.id: p for p in sort_task.problems("train")[:2]}
    traces = [{"problem_id": pid, "completion": solve_sort(p.prompt)} for pid, p in problems.items()]
    rows = prefixed_problems(tok, traces, problems)  # 3 prefixed + 1 unprefixed row per problem
    assert sum(r["prefixed"] for r in rows) == 6 and len(rows) == 8
    return SimpleNamespace(tok=tok, model_dir=model_dir, problems=problems, traces=traces, rows=rows)


# -- the rows each method trains on ---------------------------------------------------------------

KEEPS = {"prefixrl": "all", "prefixrl-adaptive": "all", "prefixrl-only": "prefixed", "rl": "unprefixed",
         "rl-n64": "unprefixed", "sft-rl": "unprefixed", "offpolicy-is": "unprefixed", "luffy": "unprefixed"}


def test_every_method_is_covered():
    assert set(KEEPS) | {"hint"} == set(METHODS)


@pytest.mark.parametrize("method", sorted(KEEPS))
def test_select_rows_keeps_each_methods_rows(setup, method):
    before = copy.deepcopy(setup.rows)
    selected = select_rows(setup.rows, method)
    expected = {"all": setup.rows, "prefixed": [r for r in setup.rows if r["prefixed"]],
                "unprefixed": [r for r in setup.rows if not r["prefixed"]]}[KEEPS[method]]
    assert selected == expected
    assert len(selected) == {"all": 8, "prefixed": 6, "unprefixed": 2}[KEEPS[method]]
    assert setup.rows == before  # the caller's rows are not changed


def test_hint_moves_each_prefix_into_the_prompt(setup):
    before = copy.deepcopy(setup.rows)
    hinted = select_rows(setup.rows, "hint", setup.tok, setup.problems)
    assert len(hinted) == len(setup.rows) and setup.rows == before
    for row, new in zip(setup.rows, hinted):
        problem = setup.problems[row["problem_id"]]
        assert new["prefix"] == ""  # the reward scores the policy's own, whole solution
        assert {k: new[k] for k in ("problem_id", "prefixed", "prefix_tokens", "prefix_fraction")} == \
            {k: row[k] for k in ("problem_id", "prefixed", "prefix_tokens", "prefix_fraction")}
        if not row["prefixed"]:
            assert new == {**row, "hint": ""}
            continue
        assert new["hint"] == row["prefix"] and row["prefix"]
        prompt = new["prompt"]
        # no chat template: the hint, then the problem, whose prompt the policy answers from
        assert prompt.startswith(BASE_HINT) and prompt.endswith(problem.prompt)
        at = prompt.rindex(problem.prompt)
        assert row["prefix"] in prompt[:at] and prompt[:at].index(row["prefix"]) >= len(BASE_HINT)
        assert prompt != row["prompt"] and not prompt.endswith(row["prefix"])


def test_select_rows_rejects_unknown_methods_and_empty_selections(setup):
    with pytest.raises(ValueError) as err:
        select_rows(setup.rows, "grpo")
    assert "grpo" in str(err.value) and all(method in str(err.value) for method in METHODS)
    prefixed = [r for r in setup.rows if r["prefixed"]]
    unprefixed = [r for r in setup.rows if not r["prefixed"]]
    for rows, method in ((prefixed, "rl"), (prefixed, "luffy"), (unprefixed, "prefixrl-only"), ([], "prefixrl")):
        with pytest.raises(ValueError, match=f"{method!r} found no rows"):
            select_rows(rows, method)
    with pytest.raises(ValueError, match="no rows"):
        select_rows([], "hint", setup.tok, setup.problems)


@pytest.mark.parametrize("traces", [None, []], ids=["none", "empty"])
@pytest.mark.parametrize("method", ["sft-rl", "offpolicy-is", "luffy", "prefixrl-adaptive"])
def test_trace_methods_need_traces(setup, sort_task, tmp_path, method, traces):
    with pytest.raises(ValueError, match=r"traces") as err:
        run_method(method, sort_task, str(setup.model_dir), setup.rows, tmp_path / "out", cfg_for(method),
                   traces=traces)
    assert repr(method) in str(err.value)
    assert not (tmp_path / "out").exists()  # refused before anything ran


@pytest.mark.parametrize("method", ["sft-rl", "offpolicy-is", "luffy", "prefixrl-adaptive"])
def test_methods_with_a_stage_of_their_own_refuse_several_processes(setup, sort_task, tmp_path, monkeypatch, method):
    """Under `accelerate launch` (WORLD_SIZE > 1) each process would run the SFT stage, the behaviour
    log-probs or the calibration alone and write the same files: refused before anything ran."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match=r"runs in one process .*--num_processes 1") as err:
        run_method(method, sort_task, str(setup.model_dir), setup.rows, tmp_path / "out", cfg_for(method),
                   traces=setup.traces)
    assert repr(method) in str(err.value)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("method", ["prefixrl-adaptive", "offpolicy-is", "luffy"])
def test_trace_methods_need_traces_of_their_problems(setup, sort_task, tmp_path, method):
    others = [{"problem_id": p.id, "completion": solve_sort(p.prompt)} for p in sort_task.problems("train")[2:4]]
    assert not {t["problem_id"] for t in others} & set(setup.problems)
    with pytest.raises(ValueError, match="trace"):
        run_method(method, sort_task, str(setup.model_dir), setup.rows, tmp_path / "out",
                   cfg_for(method, eval_every=0), traces=others)


# -- the off-policy baselines' traces --------------------------------------------------------------

def test_off_policy_traces_use_the_recorded_logprobs(setup):
    tok, cfg = setup.tok, TrainConfig(max_completion_length=TRACE_LEN, is_truncation=2.0, luffy_gamma=0.3)
    traces, expected = [], {}
    for k, trace in enumerate(setup.traces):
        ids = policy_ids(tok, trace["completion"])
        expected[trace["problem_id"]] = [-0.01 * (i + 1) - k for i in range(len(ids))]
        traces.append({**trace, "token_ids": ids, "logprobs": expected[trace["problem_id"]]})
    ledger = FlopsLedger()
    off = off_policy_traces(str(setup.model_dir), traces, setup.problems, "luffy", cfg, ledger)
    assert off.behaviour_logprobs == expected
    assert off.token_ids == {t["problem_id"]: policy_ids(tok, t["completion"]) for t in setup.traces}
    assert (off.weight, off.is_truncation, off.luffy_gamma) == ("luffy", 2.0, 0.3)
    assert ledger.stages == {} and ledger.total == 0  # no forward pass: nothing charged


@pytest.mark.parametrize("recorded", ["none", "other_tokens", "short_logprobs"])
def test_off_policy_traces_compute_logprobs_without_usable_records(setup, recorded):
    tok, cfg = setup.tok, TrainConfig(max_completion_length=TRACE_LEN)
    traces = []
    for trace in setup.traces:
        ids = policy_ids(tok, trace["completion"])
        if recorded == "other_tokens":  # another tokenization (here: no <eos>), its own log-probs
            trace = {**trace, "token_ids": ids[:-1], "logprobs": [-0.5] * (len(ids) - 1)}
        elif recorded == "short_logprobs":
            trace = {**trace, "token_ids": ids, "logprobs": [-0.5] * (len(ids) - 1)}
        traces.append(trace)
    first = setup.traces[0]
    traces.append({"problem_id": first["problem_id"], "completion": " 1:000000/0 =000000."})  # a second trace: unused
    ledger = FlopsLedger()
    off = off_policy_traces(str(setup.model_dir), traces, setup.problems, "is", cfg, ledger)
    model, _ = load_model(str(setup.model_dir), device="cpu")
    tokens = 0
    assert set(off.token_ids) == set(off.behaviour_logprobs) == set(setup.problems)
    for trace in setup.traces:
        pid, ids = trace["problem_id"], policy_ids(tok, trace["completion"])
        prompt = render_prompt(tok, setup.problems[pid].prompt, "")
        assert off.token_ids[pid] == ids  # the problem's first trace, in the policy's tokens with <eos>
        assert off.behaviour_logprobs[pid] == pytest.approx(sequence_logprobs(model, tok, prompt, ids), abs=1e-5)
        assert off.behaviour_logprobs[pid] != pytest.approx([-0.5] * len(ids), abs=1e-3)
        tokens += len(tok(prompt, add_special_tokens=False)["input_ids"]) + len(ids)
    assert set(ledger.stages) == {"behaviour_forward"}
    entry = ledger.stages["behaviour_forward"]
    assert entry["inference_tokens"] == tokens and entry["train_tokens"] == 0
    assert entry["flops"] == pytest.approx(2 * n_params(model) * tokens)


def test_off_policy_traces_reject_a_trace_longer_than_the_completions(setup):
    pid = setup.traces[0]["problem_id"]
    length = len(policy_ids(setup.tok, setup.traces[0]["completion"]))
    fits = off_policy_traces(str(setup.model_dir), setup.traces[:1], setup.problems, "is",
                             TrainConfig(max_completion_length=length), FlopsLedger())
    assert len(fits.token_ids[pid]) == length
    for limit in (length - 1, MAX_LEN):
        with pytest.raises(ValueError, match=f"{pid!r}.*{length} tokens.*max_completion_length={limit}"):
            off_policy_traces(str(setup.model_dir), setup.traces, setup.problems, "is",
                              TrainConfig(max_completion_length=limit), FlopsLedger())


# -- every method end to end ------------------------------------------------------------------------

def recording(log: list):
    """GRPOTrainer's rollouts, recorded: the global step, the rows after the live-row substitution
    and the decoded completions (the text the reward scored)."""
    original = GRPOTrainer._generate_and_score_completions

    def wrapper(self, inputs):
        out = original(self, inputs)
        if self.model.training:
            texts = self.processing_class.batch_decode(out["completion_ids"], skip_special_tokens=True)
            log.append({"step": self.state.global_step, "inputs": [dict(x) for x in inputs], "completions": texts,
                        "lengths": out["completion_mask"].sum(1).tolist()})
        return out

    return wrapper


@pytest.fixture(scope="module")
def runs(setup, sort_task, tmp_path_factory):
    """run(method): the method's 1-step run with the real reward (run once, then cached)."""
    done = {}

    def run(method):
        if method not in done:
            out = tmp_path_factory.mktemp(method)
            log = []
            with pytest.MonkeyPatch.context() as mp:
                mp.setattr(GRPOTrainer, "_generate_and_score_completions", recording(log))
                model = run_method(method, sort_task, str(setup.model_dir), setup.rows, out, cfg_for(method),
                                   traces=setup.traces, eval_problems={"train": list(setup.problems.values())},
                                   sft_cfg=SFTStageConfig(epochs=1))
            done[method] = SimpleNamespace(out=out, model=model, rollouts=log, steps=1)
        return done[method]

    return run


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


def weights(path):
    return AutoModelForCausalLM.from_pretrained(path).state_dict()


@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_runs_end_to_end(setup, runs, adaptive_run, method):
    run = adaptive_run if method == "prefixrl-adaptive" else runs(method)
    out = run.out
    assert run.model == out / "model" and (out / "model" / "config.json").exists()
    after = weights(out / "model")
    assert all(torch.isfinite(v).all() for v in after.values())
    manifest = json.loads((out / "manifest.json").read_text())
    ledger = json.loads((out / "flops.json").read_text())
    assert manifest["flops"] == ledger["total"] > 0

    evals = read(out / "eval.jsonl")
    assert [r["step"] for r in evals] == list(range(run.steps + 1))  # step 0, then every step to the last
    assert all(0 <= r["eval/train/pass@1"] <= 1 for r in evals)
    has_prefixes = method in ("prefixrl", "prefixrl-only", "prefixrl-adaptive")
    assert all(("eval/prefix_nll" in r) == has_prefixes for r in evals)  # hint rows carry no prefix
    metrics = read(out / "metrics.jsonl")
    losses = [r for r in metrics if "loss" in r]
    assert [r["step"] for r in losses] == list(range(1, run.steps + 1))
    assert all(math.isfinite(r["loss"]) for r in losses)
    if method != "prefixrl-adaptive":  # (whose last re-calibration comes after its last rollout)
        assert losses[-1]["flops/total"] == ledger["total"]

    config = json.loads((out / "config.json").read_text())
    generations = 64 if method == "rl-n64" else 2
    assert config["num_generations"] == generations
    stages = {"rollouts", "updates"} | {"sft-rl": {"sft"}, "offpolicy-is": {"behaviour_forward"},
                                        "luffy": {"behaviour_forward"},
                                        "prefixrl-adaptive": {"calibration"}}.get(method, set())
    assert set(ledger["stages"]) == stages
    trained, sampled = ledger["stages"]["updates"]["train_tokens"], ledger["stages"]["rollouts"]["inference_tokens"]
    if method in ("offpolicy-is", "luffy"):  # the samples a trace replaced were generated too
        assert sampled > trained
    else:
        assert sampled == trained

    batches = [r["inputs"] for r in run.rollouts]
    assert len(batches) == run.steps and all(len(b) == 2 * generations for b in batches)
    for batch in batches:  # groups of `generations` samples of one row each
        for g in range(0, len(batch), generations):
            assert all(x == batch[g] for x in batch[g:g + generations])
    seen = [x for b in batches for x in b]
    if method in ("rl", "rl-n64", "sft-rl", "offpolicy-is", "luffy"):
        assert not any(x["prefixed"] or x["prefix"] for x in seen)
        assert all(x["prompt"] == setup.problems[x["problem_id"]].prompt for x in seen)
        assert all("continuation_length_prefixed" not in r for r in losses)
    if method == "prefixrl-only":
        assert all(x["prefixed"] and x["prompt"].endswith(x["prefix"]) for x in seen)
        assert all("continuation_length_unprefixed" not in r for r in losses)
    if method == "hint":
        assert all(x["prefix"] == "" for x in seen)
        assert all(x["prompt"].startswith(BASE_HINT) for x in seen if x["prefixed"])

    if method in ("rl", "rl-n64"):
        # the ledger counts every prompt and completion token of 2 problems x `generations` samples
        prompts = sum(len(setup.tok(x["prompt"], add_special_tokens=False)["input_ids"]) for x in seen)
        completions = sum(n for r in run.rollouts for n in r["lengths"])
        assert ledger["stages"]["rollouts"]["inference_tokens"] == prompts + completions
        assert prompts == generations * sum(len(p.prompt) for p in setup.problems.values())
        assert all(r["unprefixed/reward"] == 0.0 for r in losses)  # a random model never sorts

    if method == "sft-rl":
        assert (out / "sft" / "model" / "config.json").exists() and (out / "sft" / "manifest.json").exists()
        sft_ledger = json.loads((out / "sft" / "flops.json").read_text())
        assert ledger["stages"]["sft"] == sft_ledger["stages"]["sft"] and sft_ledger["stages"]["sft"]["flops"] > 0
        assert manifest["config"]["model"] == str(out / "sft" / "model")  # RL starts from the SFT model
        base, tuned = weights(setup.model_dir), weights(out / "sft" / "model")
        assert any(not torch.equal(base[k], tuned[k]) for k in base)

    if method in OFF_POLICY:
        # each group's last sample is the trace, which succeeds where the random policy fails
        for rollout in run.rollouts:
            for i, (x, text) in enumerate(zip(rollout["inputs"], rollout["completions"])):
                assert (text == solve_sort(setup.problems[x["problem_id"]].prompt)) == (i % 2 == 1)
        assert all(r["unprefixed/reward"] == 0.5 for r in losses)
        forward = sum(len(setup.tok(p.prompt)["input_ids"]) + 98 for p in setup.problems.values())
        assert ledger["stages"]["behaviour_forward"]["inference_tokens"] == forward
        assert all(("importance_weight/mean" in r) == (method == "offpolicy-is") for r in losses)
        if method == "offpolicy-is":  # the first update: the policy is the behaviour policy, pi/mu = 1
            assert losses[0]["importance_weight/mean"] == pytest.approx(1.0, abs=1e-3)
        before = weights(setup.model_dir)
        assert any(not torch.equal(before[k], after[k]) for k in before)  # the trace's advantage: a gradient


# -- prefixrl-adaptive ------------------------------------------------------------------------------

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


def test_a_hint_prompt_must_leave_room_for_a_whole_solution(setup, sort_task, tmp_path):
    """The hint prompt holds the prefix and asks for a whole solution: where the prefixed prompts
    leave room for max_completion_length tokens, the longer hint prompts may not. Refused before
    anything is written, so the fixed rerun starts in a clean folder."""
    window = SMALL.max_position_embeddings
    longest = max(len(setup.tok(r["prompt"])["input_ids"]) for r in setup.rows)
    room = window - longest  # the prefixed rows fit exactly
    train_module._check_context(setup.rows, str(setup.model_dir), room)
    with pytest.raises(InputError, match=r"training row \d+ \(problem .*context window of 256.*prefixes --high"):
        run_method("hint", sort_task, str(setup.model_dir), setup.rows, tmp_path / "out",
                   cfg_for("hint", max_completion_length=room))
    assert not (tmp_path / "out").exists()


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
