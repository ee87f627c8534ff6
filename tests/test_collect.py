import json

import pytest

from conftest import FakeSortSampler
from prefixrl.traces import CollectConfig, collect, load_traces

CFG = CollectConfig(max_attempts=200, attempts_per_round=16, seed=0)


@pytest.fixture(scope="module")
def problems(sort_task):
    return sort_task.problems("train")[:6]


@pytest.fixture(scope="module")
def unsolvable(problems):
    return (problems[1].prompt, problems[4].prompt)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, sort_task, problems, unsolvable):
    """An uninterrupted run: (folder, its sampler)."""
    out = tmp_path_factory.mktemp("reference")
    sampler = FakeSortSampler(unsolvable=unsolvable)
    collect(sort_task, sampler, problems, out, CFG, source="fake", quiet=True)
    return out, sampler


def rounds_without_wall_time(out):
    rows = [json.loads(line) for line in (out / "rounds.jsonl").read_text().splitlines()]
    return [{k: v for k, v in event.items() if k != "wall_time_s"} for row in rows for event in row["events"]]


def per_problem_without_wall_time(out):
    rows = json.loads((out / "collect.json").read_text())["per_problem"]
    return [{k: v for k, v in row.items() if k != "wall_time_s"} for row in rows]


def replay(sampler, problem, task, cfg):
    """(samples generated for a problem, 1-based indices of its correct samples), re-derived from
    the sampler's recorded calls, independently of collect's own bookkeeping."""
    correct, seen = [], 0
    for prompts, n, seed in sampler.calls:
        if problem.prompt in prompts:
            for j in range(min(n, cfg.max_attempts - seen)):
                seen += 1
                if task.verify(problem, sampler._sample(problem.prompt, seed, j).text).reward > 0:
                    correct.append(seen)
    return seen, correct


def test_uninterrupted_collect(reference, sort_task, problems, unsolvable):
    out, sampler = reference
    traces = load_traces(out / "traces.jsonl")
    by_id = {p.id: p for p in problems}
    assert sorted(t["problem_id"] for t in traces) == sorted(p.id for p in problems if p.prompt not in unsolvable)
    for t in traces:
        problem = by_id[t["problem_id"]]
        assert t["prompt"] == problem.prompt and t["origin"] == "collect" and t["source"] == "fake"
        assert sort_task.verify(problem, t["completion"]).reward == 1.0
        assert 1 <= t["attempt"] <= CFG.max_attempts
        assert len(t["token_ids"]) == len(t["logprobs"]) == len(t["completion"]) + 1
    summary = json.loads((out / "collect.json").read_text())
    assert summary["problems"] == 6 and summary["solved"] == 4
    attempts = {t["problem_id"]: t["attempt"] for t in traces}
    for row, problem in zip(summary["per_problem"], problems):
        assert row["id"] == problem.id
        assert {"attempts", "samples", "prompt_tokens", "generated_tokens", "flops", "wall_time_s"} <= set(row)
        samples, correct = replay(sampler, problem, sort_task, CFG)
        generated = sum(n for prompts, n, _ in sampler.calls if problem.prompt in prompts)
        assert row["samples"] == samples
        assert row["prompt_tokens"] == generated * len(problem.prompt)  # every generated sample is paid for
        assert row["flops"] == 2.0 * sampler.n_params * (row["prompt_tokens"] + row["generated_tokens"])
        assert row["wall_time_s"] >= 0
        if problem.prompt in unsolvable:
            assert not row["solved"] and row["samples"] == row["attempts"] == CFG.max_attempts
        else:
            assert row["solved"] and row["attempts"] == attempts[problem.id] == correct[0]
            assert row["samples"] % CFG.attempts_per_round == 0 and row["samples"] >= row["attempts"]
    assert summary["flops"] == pytest.approx(sum(r["flops"] for r in summary["per_problem"]))
    flops = json.loads((out / "flops.json").read_text())
    assert flops["stages"]["collect"]["flops"] == pytest.approx(summary["flops"])
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["stage"] == "collect" and manifest["config"]["max_attempts"] == 200


def test_rerun_of_finished_collect_samples_nothing(reference, sort_task, problems, tmp_path):
    out, _ = reference
    for name in ("rounds.jsonl", "traces.jsonl"):
        (tmp_path / name).write_text((out / name).read_text())
    sampler = FakeSortSampler()
    collect(sort_task, sampler, problems, tmp_path, CFG, source="fake", quiet=True)
    assert sampler.calls == []
    assert (tmp_path / "traces.jsonl").read_text() == (out / "traces.jsonl").read_text()


def test_resume_after_kill(reference, sort_task, problems, unsolvable, tmp_path):
    ref_out, ref_sampler = reference
    n_calls = len(ref_sampler.calls)
    assert n_calls > 6
    for k in sorted({1, 2, 3, n_calls // 2, n_calls - 1, n_calls}):
        out = tmp_path / f"kill-{k}"
        with pytest.raises(KeyboardInterrupt):
            collect(sort_task, FakeSortSampler(unsolvable=unsolvable, interrupt_on=k), problems, out, CFG,
                    source="fake", quiet=True)
        before = [t for e in rounds_without_wall_time(out) for t in e["traces"]] if k > 1 else []
        sampler = FakeSortSampler(unsolvable=unsolvable)
        collect(sort_task, sampler, problems, out, CFG, source="fake", quiet=True)
        assert sampler.calls == ref_sampler.calls[k - 1:], f"kill at call {k}: finished rounds re-sampled"
        assert (out / "traces.jsonl").read_text() == (ref_out / "traces.jsonl").read_text()
        assert rounds_without_wall_time(out) == rounds_without_wall_time(ref_out)
        assert per_problem_without_wall_time(out) == per_problem_without_wall_time(ref_out)
        final = load_traces(out / "traces.jsonl")
        assert all(t in final for t in before), f"kill at call {k}: a trace was lost"


def test_truncated_rounds_line_is_repaired(reference, sort_task, problems, unsolvable, tmp_path):
    ref_out, ref_sampler = reference
    lines = (ref_out / "rounds.jsonl").read_text().splitlines(keepends=True)
    (tmp_path / "rounds.jsonl").write_text("".join(lines[:-1]) + lines[-1][:len(lines[-1]) // 2])
    sampler = FakeSortSampler(unsolvable=unsolvable)
    collect(sort_task, sampler, problems, tmp_path, CFG, source="fake", quiet=True)
    assert sampler.calls == ref_sampler.calls[-1:], "only the half-written round is redone"
    assert len((tmp_path / "rounds.jsonl").read_text().splitlines()) == len(lines)
    assert rounds_without_wall_time(tmp_path) == rounds_without_wall_time(ref_out)
    assert (tmp_path / "traces.jsonl").read_text() == (ref_out / "traces.jsonl").read_text()


def test_several_traces_per_problem(sort_task, problems, unsolvable, tmp_path):
    cfg = CollectConfig(max_attempts=200, attempts_per_round=16, traces_per_problem=3, seed=1)
    sampler = FakeSortSampler(p_correct=1 / 8, unsolvable=unsolvable)
    traces = collect(sort_task, sampler, problems, tmp_path, cfg, quiet=True)
    summary = {row["id"]: row for row in json.loads((tmp_path / "collect.json").read_text())["per_problem"]}
    for problem in problems:
        mine = [t for t in traces if t["problem_id"] == problem.id]
        if problem.prompt in unsolvable:
            assert mine == [] and summary[problem.id]["samples"] == 200
            continue
        _, correct = replay(sampler, problem, sort_task, cfg)
        assert [t["attempt"] for t in mine] == correct[:3]
        assert summary[problem.id]["traces"] == 3 and summary[problem.id]["attempts"] == correct[2]
    assert load_traces(tmp_path / "traces.jsonl") == traces


def test_bad_config():
    with pytest.raises(ValueError, match="max_attempts"):
        CollectConfig(max_attempts=0)
