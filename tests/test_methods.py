"""Every method on one engine (methods.py, engine.py): the rows each method trains on, the traces
the off-policy baselines read, and a short end-to-end run of each method (prefixrl-adaptive's, and
its re-calibration, trace pool and resume: test_adaptive.py), all on a tiny random model and the
sort task."""

import copy
import json
import math
from types import SimpleNamespace

import pytest
import torch
from transformers import AutoModelForCausalLM
from trl import GRPOTrainer

import prefixrl.train as train_module
from conftest import solve_sort
from prefixrl.files import InputError
from prefixrl.flops import FlopsLedger
from prefixrl.engine import run_method
from prefixrl.methods import METHODS, select_rows
from prefixrl.offpolicy import off_policy_traces
from prefixrl.models import char_tokenizer, load_model, n_params, sequence_logprobs, tiny_model
from prefixrl.prefixes import BASE_HINT, prefixed_problems, render_prompt
from prefixrl.sft import SFTStageConfig
from prefixrl.train import TrainConfig
from test_train import SMALL, read

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


def weights(path):
    return AutoModelForCausalLM.from_pretrained(path).state_dict()


@pytest.mark.parametrize("method", [m for m in METHODS if m != "prefixrl-adaptive"])  # (test_adaptive.py's)
def test_every_method_runs_end_to_end(setup, runs, method):
    check_method_run(setup, runs(method), method)


def check_method_run(setup, run, method):
    """What every method's short run must show (prefixrl-adaptive's run: test_adaptive.py)."""
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
