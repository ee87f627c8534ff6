"""Prefix reliance per training problem (HiLL's measure, reliance.py): success with its prefixes
vs without, in training's evaluations, and its figure in the report."""

import pytest
import torch

from conftest import solve_sort
from prefixrl.generate import Sample, SamplingParams
from prefixrl.models import char_tokenizer, tiny_model
from prefixrl.prefixes import prefixed_problems
from prefixrl.reliance import prefix_reliance
from test_train import SMALL

torch.set_num_threads(1)


class ContinuingSampler:
    """Continues each prefixed prompt correctly (`right[prompt]`) in its first `good[prompt]` of n samples."""

    def __init__(self, right, good):
        self.right, self.good, self.params, self.calls = right, good, SamplingParams(batch_size=4), []

    def generate(self, prompts, n, seed, dead_end=None):
        self.calls.append(len(prompts))
        return [[Sample(text=self.right[p] if j < self.good.get(p, 0) else " 9:999999/0 =000000.", token_ids=[1],
                        prompt_tokens=1) for j in range(n)] for p in prompts]


def test_prefix_reliance_per_problem_by_hand(sort_task):
    a, b, c = sort_task.problems("train")[:3]
    problems = {p.id: p for p in (a, b, c)}
    traces = [{"problem_id": p.id, "completion": solve_sort(p.prompt)} for p in (a, b, c)]
    rows = prefixed_problems(char_tokenizer(), traces, problems)  # 3 prefixed + 1 unprefixed per problem
    prefixed = {p.id: [r for r in rows if r["prefixed"] and r["problem_id"] == p.id] for p in (a, b)}
    # a: its 3 prefixes succeed in 4, 2 and 0 of 4 samples; b: 1, 1, 1 of 4; c has no unprefixed score
    good = {r["prompt"]: k for r, k in zip(prefixed[a.id] + prefixed[b.id], [4, 2, 0, 1, 1, 1])}
    right = {r["prompt"]: solve_sort(problems[r["problem_id"]].prompt)[len(r["prefix"]):] for r in rows}
    sampler = ContinuingSampler(right, good)
    result = prefix_reliance(sort_task, sampler, rows + rows, problems, {a.id: 0.25, b.id: 0.0}, n=4, seed=0)
    assert result["reliance"] == {a.id: {"prefixed": 0.5, "unprefixed": 0.25},
                                  b.id: {"prefixed": 0.25, "unprefixed": 0.0}}
    assert result["eval/reliance/prefixed_pass@1"] == pytest.approx(0.375)
    assert result["eval/reliance/unprefixed_pass@1"] == pytest.approx(0.125)
    assert result["eval/reliance/gap"] == pytest.approx(0.25)
    assert sum(sampler.calls) == 6  # each prefixed row of a and b once (repeats dropped), a batch of 4 // 4 rows
    assert prefix_reliance(sort_task, sampler, rows, problems, {}, n=4, seed=0) == {}


def test_training_evaluations_record_prefix_reliance(sort_task, tmp_path):
    from prefixrl.files import read_jsonl
    from prefixrl.train import TrainConfig, train

    tok = char_tokenizer()
    tiny_model(tok, SMALL).save_pretrained(tmp_path / "tiny")
    tok.save_pretrained(tmp_path / "tiny")
    problems = {p.id: p for p in sort_task.problems("train")[:2]}
    traces = [{"problem_id": pid, "completion": solve_sort(p.prompt)} for pid, p in problems.items()]
    rows = prefixed_problems(tok, traces, problems)
    cfg = TrainConfig(steps=2, problems_per_step=2, num_generations=2, eval_every=2, eval_n=2, reliance_n=2,
                      max_completion_length=48, progress_bar=False)
    train(sort_task, str(tmp_path / "tiny"), rows, tmp_path / "run", cfg,
          eval_problems={"train": list(problems.values()), "heldout": sort_task.problems("heldout")[:1]})
    evals = read_jsonl(tmp_path / "run" / "eval.jsonl")
    assert [e["step"] for e in evals] == [0, 2]
    for e in evals:
        scores = read_jsonl(tmp_path / "run" / "evals" / f"step-{e['step']}-train" / "scores.jsonl")
        assert e["reliance"].keys() == problems.keys()
        assert {pid: r["unprefixed"] for pid, r in e["reliance"].items()} == {s["id"]: s["correct"] / 2 for s in scores}
        assert all(r["prefixed"] in (0.0, 1 / 6, 1 / 3, 0.5, 2 / 3, 5 / 6, 1.0) for r in e["reliance"].values())
        assert e["eval/reliance/gap"] == pytest.approx(e["eval/reliance/prefixed_pass@1"] -
                                                       e["eval/reliance/unprefixed_pass@1"])


def test_the_report_draws_prefix_reliance(tmp_path):
    from prefixrl.report import plot_prefix_reliance

    def run(values):
        return {"eval": [{"step": s, "eval/reliance/prefixed_pass@1": p, "eval/reliance/unprefixed_pass@1": u,
                          "reliance": {"x": {"prefixed": p, "unprefixed": u}}} for s, p, u in values], "metrics": []}

    runs = {"prefixrl": [run([(0, 0.2, 0.0), (10, 0.9, 0.4)]), run([(0, 0.3, 0.0), (10, 0.8, 0.5)])],
            "rl": [{"eval": [{"step": 0, "eval/hard/pass@1": 0.0}], "metrics": []}]}
    assert plot_prefix_reliance(runs, tmp_path / "r.png").read_bytes()[:4] == b"\x89PNG"
    assert plot_prefix_reliance({"rl": runs["rl"]}, tmp_path / "none.png") is None
