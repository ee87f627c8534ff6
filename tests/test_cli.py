"""The CLI stages end to end on a tiny random-weight model, in-process (no subprocesses)."""

import json

import pytest
import torch
from typer.testing import CliRunner

from prefixrl.cli import app
from prefixrl.files import read_jsonl
from prefixrl.generate import HFSampler, SamplingParams
from prefixrl.models import TinyModelConfig, char_tokenizer, tiny_model
from prefixrl.tasks import Problem

torch.set_num_threads(1)
SMALL = TinyModelConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
FAST = ["--max-new-tokens", "40", "--quiet"]


@pytest.fixture(scope="module")
def tokenizer():
    return char_tokenizer()


@pytest.fixture(scope="module")
def model(tokenizer):
    return tiny_model(tokenizer, SMALL).eval()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, model, tokenizer):
    path = tmp_path_factory.mktemp("tiny")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def invoke(*args):
    result = CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "400"})
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result


def test_screen_collect_evaluate(model_dir, tmp_path):
    screen = invoke("screen", model_dir, "--task", "sort", "--problems", "easy", "--n", 4,
                    "--out", tmp_path / "screen", *FAST)
    assert screen.exit_code == 0, screen.output
    summary = json.loads((tmp_path / "screen" / "screen.json").read_text())
    assert (summary["n"], summary["k"], summary["problems"]) == (4, 4, 64)
    assert {"pass@1", "pass@2", "pass@4"} <= set(summary)
    scores = [json.loads(line) for line in (tmp_path / "screen" / "scores.jsonl").read_text().splitlines()]
    assert len(scores) == 64 and all(row["n"] == 4 and row["tokens"] > 0 for row in scores)
    hard = [Problem.from_dict(json.loads(line)) for line in (tmp_path / "screen" / "hard.jsonl").read_text().splitlines()]
    assert len(hard) == summary["hard"] == sum(row["correct"] == 0 for row in scores) > 0
    assert all(p.split == "easy" for p in hard)
    assert (tmp_path / "screen" / "manifest.json").exists()

    collect = invoke("collect", model_dir, "--task", "sort", "--problems", tmp_path / "screen" / "hard.jsonl",
                     "--max-attempts", 8, "--attempts-per-round", 8, "--out", tmp_path / "traces", *FAST)
    assert collect.exit_code == 0, collect.output
    result = json.loads((tmp_path / "traces" / "collect.json").read_text())
    assert result["problems"] == len(hard)
    assert [row["id"] for row in result["per_problem"]] == [p.id for p in hard]
    assert all(row["samples"] == 8 or row["solved"] for row in result["per_problem"])
    assert all(row["prompt_tokens"] > 0 and row["generated_tokens"] > 0 for row in result["per_problem"])
    assert (tmp_path / "traces" / "traces.jsonl").exists()

    evaluate = invoke("evaluate", model_dir, "--task", "sort", "--n", 4, "--out", tmp_path / "eval", *FAST)
    assert evaluate.exit_code == 0, evaluate.output
    ev = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert set(ev) == {"n", "problems", "pass@1", "pass@2", "pass@4"}
    assert ev["n"] == 4 and ev["problems"] == 64
    assert 0.0 <= ev["pass@1"] <= ev["pass@2"] <= ev["pass@4"] <= 1.0
    manifest = json.loads((tmp_path / "eval" / "manifest.json").read_text())
    ledger = json.loads((tmp_path / "eval" / "flops.json").read_text())
    assert manifest["stage"] == "evaluate" and manifest["flops"] == ledger["total"] > 0
    assert len(manifest["config"]["problems"]) == 64 and manifest["config"]["sampling"]["temperature"] == 0.7  # evaluate's default


def test_unknown_task_exits_2(model_dir, tmp_path):
    for command in (["screen", model_dir], ["evaluate", model_dir], ["collect", model_dir, "--problems", "train"]):
        result = invoke(*command, "--task", "nope", "--out", tmp_path / "x", "--quiet")
        assert result.exit_code == 2, result.output
        assert "unknown task 'nope'" in result.output and "['chain', 'gambles', 'math', 'minefield', 'mines', 'sort']" in result.output


def test_hf_sampler_samples(model, tokenizer):
    sampler = HFSampler(model, tokenizer, SamplingParams(max_new_tokens=24, batch_size=4))
    prompts = ["123 4:", "740365 8:", "1:"]  # unequal lengths: left padding; 9 sequences: 3 batches
    out = sampler.generate(prompts, 3, seed=7)
    assert [len(samples) for samples in out] == [3, 3, 3]
    for prompt, samples in zip(prompts, out):
        for s in samples:
            assert s.prompt_tokens == len(tokenizer(prompt, add_special_tokens=False).input_ids) == len(prompt)
            assert 1 <= len(s.token_ids) == len(s.logprobs) <= 24
            assert all(lp <= 0 for lp in s.logprobs)
            assert tokenizer.eos_token_id not in s.token_ids[:-1]
            assert s.text == tokenizer.decode(s.token_ids, skip_special_tokens=True)
            assert s.tokens == s.prompt_tokens + len(s.token_ids)
    again = sampler.generate(prompts, 3, seed=7)
    assert [[(s.text, s.token_ids, s.logprobs) for s in x] for x in again] == \
           [[(s.text, s.token_ids, s.logprobs) for s in x] for x in out]
    other = sampler.generate(prompts, 3, seed=8)
    assert [[s.token_ids for s in x] for x in other] != [[s.token_ids for s in x] for x in out]


def test_hf_sampler_logprobs_are_the_model_s(model, tokenizer):
    """At temperature 1 the behaviour log-probs are the model's own log-probs of the sampled tokens."""
    sampler = HFSampler(model, tokenizer, SamplingParams(max_new_tokens=16, batch_size=8))
    prompt = "418236 8:"
    for s in sampler.generate([prompt], 4, seed=0)[0]:
        ids = torch.tensor([tokenizer(prompt, add_special_tokens=False).input_ids + s.token_ids])
        with torch.no_grad():
            logprobs = model(ids).logits.log_softmax(-1)[0, len(prompt) - 1:-1]
        expected = logprobs.gather(-1, torch.tensor(s.token_ids)[:, None]).squeeze(-1)
        assert torch.allclose(expected, torch.tensor(s.logprobs), atol=1e-4), (expected, s.logprobs)


def test_prefixes_calibration_samples_up_to_max_completion_length(model_dir, tmp_path, monkeypatch, sort_task):
    """--calibrate-n samples as many tokens as training will generate (--max-completion-length), not
    SamplingParams' default."""
    import prefixrl.generate
    from conftest import record_sampler_params, solve_sort
    from prefixrl.files import write_jsonl

    made = record_sampler_params(monkeypatch, prefixrl.generate)
    problem = sort_task.problems("train")[0]
    write_jsonl(tmp_path / "traces.jsonl", [{"problem_id": problem.id, "prompt": problem.prompt,
                                            "completion": solve_sort(problem.prompt)}])
    result = invoke("prefixes", model_dir, "--task", "sort", "--traces", tmp_path / "traces.jsonl", "--calibrate-n", 1,
                    "--max-completion-length", 9, "--out", tmp_path / "out", "--quiet")
    assert result.exit_code == 0, result.output
    assert [p.max_new_tokens for p in made] == [9]
    # the calibration's sampling is in the stage's ledger (chargeable with --prior-flops) and manifest
    calibration = read_jsonl(tmp_path / "out" / "calibration.jsonl")
    tokens = sum(point["tokens"] for row in calibration for point in row["points"])
    ledger = json.loads((tmp_path / "out" / "flops.json").read_text())
    assert ledger["stages"]["calibration"]["inference_tokens"] == tokens > 0
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["stage"] == "prefixes" and manifest["flops"] == ledger["total"]


@pytest.fixture
def sort_rows(sort_task, tmp_path):
    """A `prefixrl prefixes` data file for two sort problems."""
    from conftest import solve_sort
    from prefixrl.files import write_jsonl
    from prefixrl.prefixes import prefixed_problems

    problems = {p.id: p for p in sort_task.problems("train")[:2]}
    traces = [{"problem_id": pid, "completion": solve_sort(p.prompt)} for pid, p in problems.items()]
    write_jsonl(tmp_path / "train.jsonl", prefixed_problems(char_tokenizer(), traces, problems))
    return tmp_path / "train.jsonl"


def test_train_passes_eval_batch_size(model_dir, sort_rows, tmp_path, monkeypatch):
    import prefixrl.engine

    seen = {}
    monkeypatch.setattr(prefixrl.engine, "run_method", lambda *args, **kwargs: seen.update(cfg=args[5]) or tmp_path)
    result = invoke("train", model_dir, "--task", "sort", "--data", sort_rows, "--eval-batch-size", 7)
    assert result.exit_code == 0, result.output
    assert seen["cfg"].eval_batch_size == 7


def test_train_refuses_rows_of_another_task(model_dir, sort_rows):
    result = invoke("train", model_dir, "--task", "chain", "--data", sort_rows)
    assert result.exit_code == 2  # an error message, not a KeyError's traceback
    message = " ".join(result.output.split())  # as one line, whatever the terminal's width
    assert f"{sort_rows}: 2 of 2 problems are not task 'chain''s, e.g. 'sort-" in message
    assert "--task (and --task-arg) the rows were made for" in message
