import json
import re

import pytest
from typer.testing import CliRunner

from conftest import solve_sort
from prefixrl.files import InputError
from prefixrl.traces import import_traces, load_traces


@pytest.fixture(scope="module")
def records(sort_task):
    a, b = sort_task.problems("train")[:2]
    good_a = {"problem_id": a.id, "completion": solve_sort(a.prompt)}
    wrong_b = {"problem_id": b.id, "completion": solve_sort(b.prompt)[:-3] + "9."}
    return [
        good_a,  # 1: added
        dict(good_a),  # 2: duplicate
        wrong_b,  # 3: fails verification
        {"problem_id": "sort-999999", "completion": solve_sort(a.prompt)},  # 4: unknown problem
        {"problem_id": b.id, "answer": b.answer},  # 5: no text field
        {"completion": solve_sort(b.prompt)},  # 6: no problem id
        {"problem_id": b.id, "solution": solve_sort(b.prompt), "source": "other-model"},  # 7: added
    ]


EXPECTED = {2: "duplicate", 3: "fails verification", 4: "unknown problem id", 5: "no trace text",
            6: "no 'problem_id' field"}


def check_report(report, expected=EXPECTED, added=2):
    assert report["added"] == added
    assert [r["line"] for r in report["rejected"]] == sorted(expected)
    for reject in report["rejected"]:
        assert expected[reject["line"]] in reject["reason"], reject


def write_lines(path, lines):
    path.write_text("".join(line + "\n" for line in lines))


def test_import_jsonl(sort_task, records, tmp_path):
    source = tmp_path / "old.jsonl"
    lines = [json.dumps(r) for r in records]
    write_lines(source, lines[:5] + ['{"problem_id": "sort-1", "completion": '] + lines[5:])
    store = tmp_path / "store" / "traces.jsonl"
    report = import_traces(sort_task, store, source)
    # the malformed line 6 shifts the later records down by one
    expected = {**{k + (k >= 6): v for k, v in EXPECTED.items()}, 6: "line 6: not a JSON object"}
    check_report(report, expected)
    traces = load_traces(store)
    assert [t["completion"] for t in traces] == [records[0]["completion"], records[6]["solution"]]
    assert all(t["origin"] == "import" and t["token_ids"] is None for t in traces)
    assert [t["source"] for t in traces] == ["import", "other-model"]
    assert traces[0]["prompt"] == sort_task.problems("train")[0].prompt

    again = import_traces(sort_task, store, source)
    assert again["added"] == 0
    assert sum("duplicate" in r["reason"] for r in again["rejected"]) == 3
    assert load_traces(store) == traces


def test_import_keeps_existing_store_and_custom_column(sort_task, records, tmp_path):
    store = tmp_path / "traces.jsonl"
    write_lines(tmp_path / "a.jsonl", [json.dumps(records[0])])
    import_traces(sort_task, store, tmp_path / "a.jsonl")
    renamed = {"pid": records[6]["problem_id"], "text": records[6]["solution"]}
    write_lines(tmp_path / "b.jsonl", [json.dumps(renamed), json.dumps(records[0])])
    report = import_traces(sort_task, store, tmp_path / "b.jsonl", problem_column="pid")
    assert report["added"] == 1 and report["rejected"][0]["line"] == 2
    assert len(load_traces(store)) == 2
    with pytest.raises(InputError, match="no such file"):
        import_traces(sort_task, store, tmp_path / "absent.jsonl")


def test_import_parquet_and_saved_dataset(sort_task, records, tmp_path):
    import datasets

    rows = [{"problem_id": r.get("problem_id"), "completion": r.get("completion") or r.get("solution"),
             "source": r.get("source")} for r in records if "answer" not in r]  # one schema for all rows
    expected = {2: "duplicate", 3: "fails verification", 4: "unknown problem id", 5: "no 'problem_id' field"}
    datasets.Dataset.from_list(rows).to_parquet(str(tmp_path / "old.parquet"))
    check_report(import_traces(sort_task, tmp_path / "p" / "traces.jsonl", tmp_path / "old.parquet"), expected)
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "saved"))
    store = tmp_path / "d" / "traces.jsonl"
    check_report(import_traces(sort_task, store, tmp_path / "saved"), expected)
    assert import_traces(sort_task, store, tmp_path / "saved")["added"] == 0
    datasets.DatasetDict({"train": datasets.Dataset.from_list(rows)}).save_to_disk(str(tmp_path / "dict"))
    with pytest.raises(InputError, match="several splits"):
        import_traces(sort_task, store, tmp_path / "dict")


def test_cli_import_prints_rejected_lines(records, tmp_path):
    from prefixrl.cli import app

    source = tmp_path / "old.jsonl"
    write_lines(source, [json.dumps(r) for r in records[:3]] + ["not json"])
    result = CliRunner().invoke(app, ["import", str(tmp_path / "store"), "--file", str(source), "--task", "sort"],
                                env={"COLUMNS": "400"})
    assert result.exit_code == 0, result.output
    for line, reason in [(2, "duplicate"), (3, "fails verification"), (4, "not a JSON object")]:
        assert re.search(rf"rejected {re.escape(str(source))}, line {line}: .*{reason}", result.output), result.output
    assert "imported 1 traces" in result.output and "rejected 3" in result.output
    assert len(load_traces(tmp_path / "store" / "traces.jsonl")) == 1
    bad = CliRunner().invoke(app, ["import", str(tmp_path / "store"), "--file", str(tmp_path / "nope.jsonl"),
                                   "--task", "sort"],
                             env={"COLUMNS": "400"})
    assert bad.exit_code == 2 and "no such file" in bad.output


def test_a_line_that_is_not_utf8_is_skipped_by_its_number(sort_task, records, tmp_path):
    source = tmp_path / "mixed.jsonl"
    lines = [json.dumps(r).encode() for r in (records[0], records[6])]
    source.write_bytes(lines[0] + b"\n" + b'{"problem_id": "caf\xe9"}\n' + lines[1] + b"\n")
    report = import_traces(sort_task, tmp_path / "traces.jsonl", source)
    assert report["added"] == 2
    assert [(r["line"], "line 2: not UTF-8 text (byte 0xe9" in r["reason"]) for r in report["rejected"]] == [(2, True)]


def test_a_dataset_keyed_by_question_text_imports(tmp_path):
    """MATH-style rows (problem, solution): matched to the task's problems by question, up to
    spacing; the trace text from a named field or one of response/output."""
    from prefixrl.tasks import load_task

    task = load_task("math", train="tests/data/math_problems.jsonl", id_column="id")
    try:
        a, b, c = task.problems("train")[:3]
        rows = [{"problem": "  " + a.prompt.split("\n\nPlease")[0].replace(" ", "  ") + "\n",
                 "response": "So the value is $\\boxed{24}$."},
                {"question": task.question_of(b), "output": "\\boxed{\\frac{1}{2}}"},
                {"question": "What is 1 + 1?", "response": "\\boxed{2}"},  # no such problem
                {"prompt": c.prompt, "response": "\\boxed{7}"}]  # the whole prompt matches too; wrong answer
        write_lines(tmp_path / "q.jsonl", [json.dumps(r) for r in rows])
        report = import_traces(task, tmp_path / "traces.jsonl", tmp_path / "q.jsonl")
        assert report["added"] == 2, report
        assert [(r["line"], r["reason"].split(" (")[0]) for r in report["rejected"]] == [
            (3, "no problem of task 'math' has the question in field 'question'"),
            (4, "the trace fails verification")]
        assert [t["problem_id"] for t in load_traces(tmp_path / "traces.jsonl")] == [a.id, b.id]
        named = [{"q": task.question_of(c), "answer_text": "\\boxed{(2, 3)}", "problem": "not this one"}]
        write_lines(tmp_path / "named.jsonl", [json.dumps(r) for r in named])
        report = import_traces(task, tmp_path / "traces.jsonl", tmp_path / "named.jsonl", question_column="q",
                               text_column="answer_text")
        assert report["added"] == 1 and load_traces(tmp_path / "traces.jsonl")[-1]["problem_id"] == c.id
    finally:
        task.close()


def test_cli_import_exits_2_when_nothing_was_imported(records, tmp_path):
    from prefixrl.cli import app

    source = tmp_path / "bad.jsonl"
    write_lines(source, [json.dumps(records[2]), json.dumps({"id": 3, "output": "x"})])
    result = CliRunner().invoke(app, ["import", str(tmp_path / "store"), "--file", str(source), "--task", "sort"],
                                env={"COLUMNS": "400"})
    assert result.exit_code == 2, result.output
    assert "--question-column FIELD" in result.output and "no trace imported" in result.output
    write_lines(source, [json.dumps(records[0])])
    args = ["import", str(tmp_path / "store"), "--file", str(source), "--task", "sort"]
    assert CliRunner().invoke(app, args).exit_code == 0
    assert CliRunner().invoke(app, args).exit_code == 0  # importing the same file again: only duplicates, no error
    (tmp_path / "empty.jsonl").write_text("\n")
    empty = ["import", str(tmp_path / "store"), "--file", str(tmp_path / "empty.jsonl"), "--task", "sort"]
    assert CliRunner().invoke(app, empty).exit_code == 2  # a file with no record imports nothing


def test_reference_traces_from_a_math_solution_column(tmp_path):
    from prefixrl.tasks import load_task
    from prefixrl.traces import reference_traces

    rows = [{"problem": "What is 2 + 3?", "answer": "5", "solution": "2 + 3 = \\boxed{5}"},
            {"problem": "What is 2 * 3?", "answer": "6", "solution": "2 * 3 = \\boxed{5}"},  # a wrong solution
            {"problem": "What is 2 - 3?", "answer": "-1", "solution": "2 - 3 = \\boxed{-1}"}]
    write_lines(tmp_path / "train.jsonl", [json.dumps(r) for r in rows])
    task = load_task("math", train=str(tmp_path / "train.jsonl"), solution_column="solution")
    try:
        problems = task.problems("train")
        traces = reference_traces(task, problems, tmp_path / "traces")
    finally:
        task.close()
    assert [t["completion"] for t in traces] == [rows[0]["solution"], rows[2]["solution"]]
    assert {(t["origin"], t["source"]) for t in traces} == {("reference", "reference")}
    summary = json.loads((tmp_path / "traces" / "collect.json").read_text())
    assert (summary["solved"], summary["flops"]) == (2, 0.0)
    assert [r["reason"] for r in summary["per_problem"]] == [None, "fails verification", None]
    assert json.loads((tmp_path / "traces" / "flops.json").read_text())["total"] == 0.0
    assert load_traces(tmp_path / "traces" / "traces.jsonl") == traces
