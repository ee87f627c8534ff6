"""The `math` task: problems from files with configurable columns, math-verify in worker processes
under a hard timeout, the exact-match fast path, and task options from the CLI and configs."""

import json
import logging
import pickle
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from prefixrl.cli import app
from prefixrl.files import InputError
from prefixrl.tasks import load_task, parse_task_args, problems_by_id, task_args
from prefixrl.tasks.math import DEFAULT_INSTRUCTION, gold_answer, last_boxed, normalize

DATA = Path(__file__).parent / "data"
TRAIN, HELDOUT = DATA / "math_problems.jsonl", DATA / "math_heldout.jsonl"
HANGS = "\\boxed{9^{9^{9^{9}}}}"  # sympy computes this power when comparing: never returns


@pytest.fixture(scope="module")
def task():
    task = load_task("math", train=str(TRAIN), heldout=str(HELDOUT), id_column="id", verify_timeout_s=2.0)
    yield task
    task.close()


def problem(task, pid):
    return problems_by_id(task)[pid]


# --- problems -------------------------------------------------------------------------------

def test_load_task_reads_train_and_heldout_files():
    task = load_task("math", train=str(TRAIN), heldout=str(HELDOUT))
    train, heldout = task.problems("train"), task.problems("heldout")
    assert (len(train), len(heldout), task.problems("easy")) == (12, 4, [])
    assert all(p.split == "train" for p in train) and all(p.split == "heldout" for p in heldout)
    first = json.loads(TRAIN.read_text().splitlines()[1])
    assert train[1].prompt == f"{first['problem']}\n\n{DEFAULT_INSTRUCTION}" and train[1].answer == "\\frac{1}{2}"
    assert train[1].difficulty == 0 and train[1].meta == {}
    # no id column: ids from the question text, stable when the file is reordered
    assert all(p.id.startswith("math-") for p in train) and len(problems_by_id(task)) == 16
    assert load_task("math", train=str(TRAIN)).problems("train")[3].id == train[3].id
    assert task.strategy_markers == {} and task_args(task) == {"train": str(TRAIN), "heldout": str(HELDOUT)}
    with pytest.raises(ValueError, match="unknown split"):
        task.problems("test")
    with pytest.raises(ValueError, match="no pretraining corpus"):
        task.corpus(8, seed=0)


def test_column_options_and_instruction():
    task = load_task("math", train=str(TRAIN), id_column="id", source_column="source", difficulty_column="level",
                     instruction="Answer in \\boxed{}.", easy=str(HELDOUT))
    p = task.problems("train")[9]
    assert (p.id, p.meta, p.difficulty) == ("counting/10", {"source": "AMC-style"}, 3)
    assert p.prompt.endswith("common fraction.\n\nAnswer in \\boxed{}.")
    assert [p.split for p in task.problems("easy")] == ["easy"] * 4
    assert load_task("math", train=str(TRAIN), instruction="").problems("train")[0].prompt == \
        "What is the value of $2^{10} - 1000$?"


def test_parquet_and_saved_datasets_folder(tmp_path):
    import datasets

    rows = [{"question": "Compute $1+1$.", "solution": "We add: $1+1=\\boxed{2}$.", "uid": "a", "level": "Level 2"},
            {"question": "Half of 1?", "solution": "It is $\\boxed{\\frac{1}{2}}$.", "uid": "b", "level": "Level 5"}]
    datasets.Dataset.from_list(rows).to_parquet(str(tmp_path / "p.parquet"))
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "saved"))
    options = dict(question_column="question", answer_column="solution", id_column="uid", difficulty_column="level")
    for path in (tmp_path / "p.parquet", tmp_path / "saved"):
        problems = load_task("math", train=str(path), **options).problems("train")
        # the answer column may hold a whole solution: its last box is the gold answer
        assert [(p.id, p.answer, p.difficulty) for p in problems] == [("a", "2", 2), ("b", "\\frac{1}{2}", 5)]
    with pytest.raises(InputError, match=r"p\.parquet, row 1: no column 'answer'"):
        load_task("math", train=str(tmp_path / "p.parquet"), question_column="question")
    datasets.DatasetDict({"train": datasets.Dataset.from_list(rows)}).save_to_disk(str(tmp_path / "dict"))
    with pytest.raises(InputError, match=r"several splits \['train'\].*dict/train"):
        load_task("math", train=str(tmp_path / "dict"), **options)


def test_missing_column_names_file_column_existing_columns_and_option(tmp_path):
    with pytest.raises(InputError) as err:
        load_task("math", train=str(TRAIN), question_column="question")
    message = str(err.value)
    assert f"{TRAIN}, line 1: no column 'question' for the question" in message
    assert "the columns are ['answer', 'id', 'level', 'problem', 'source']" in message
    assert "--task-arg question_column=COLUMN" in message and "task_args: {question_column: COLUMN}" in message
    with pytest.raises(InputError, match="line 1: no column 'uid' for the id.*--task-arg id_column="):
        load_task("math", train=str(TRAIN), id_column="uid")
    (tmp_path / "held.jsonl").write_text(json.dumps({"problem": "1+1?", "gold": "2"}) + "\n")
    with pytest.raises(InputError, match=r"held\.jsonl, line 1: no column 'answer'.*\['gold', 'problem'\]"):
        load_task("math", train=str(TRAIN), heldout=str(tmp_path / "held.jsonl"))


def test_bad_rows_and_ids(tmp_path):
    def write(name, rows):
        (tmp_path / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
        return str(tmp_path / name)

    good = {"id": "1", "problem": "1+1?", "answer": "2"}
    with pytest.raises(InputError, match=r"empty\.jsonl, line 2: column 'answer' \(answer\) is empty"):
        load_task("math", train=write("empty.jsonl", [good, {"id": "2", "problem": "2+2?", "answer": ""}]))
    with pytest.raises(InputError, match="line 2: id '1' repeats line 1"):
        load_task("math", train=write("dup.jsonl", [good, dict(good, problem="3+3?")]), id_column="id")
    clash = write("clash.jsonl", [dict(good, problem="another question")])
    with pytest.raises(InputError, match=r"clash\.jsonl: ids \['1'\] also name different problems"):
        load_task("math", train=write("t.jsonl", [good]), heldout=clash, id_column="id")
    # a repeated question is one problem (its id is made from the text)
    assert len(load_task("math", train=write("rep.jsonl", [good, good])).problems("train")) == 1
    with pytest.raises(InputError, match="no such file"):
        load_task("math", train=str(tmp_path / "missing.jsonl"))
    with pytest.raises(InputError, match="holds no problems"):
        load_task("math", train=write("none.jsonl", []))
    with pytest.raises(InputError, match=r"bad\.jsonl, line 1: not a JSON object"):
        (tmp_path / "bad.jsonl").write_text("{oops\n")
        load_task("math", train=str(tmp_path / "bad.jsonl"))


DAPO_ROWS = [  # DAPO-Math-17k's layout: the question in a list of chat messages, the answer nested
    {"prompt": [{"role": "user", "content": question}], "reward_model": {"ground_truth": answer, "style": "rule"}}
    for question, answer in (("Compute $6 \\times 7$.", "42"), ("Compute $2^5$.", "32"))]


def test_non_text_question_or_answer_is_an_error_naming_row_column_type_and_fix(tmp_path):
    import datasets

    path = tmp_path / "dapo.parquet"
    flat = [{**row, "answer": row["reward_model"]["ground_truth"]} for row in DAPO_ROWS]
    datasets.Dataset.from_list(flat).to_parquet(str(path))
    with pytest.raises(InputError) as err:  # not the text of a list
        load_task("math", train=str(path), question_column="prompt")
    message = str(err.value)
    assert f"{path}, row 1: column 'prompt' (question) holds a list, not text" in message
    assert "--task-arg question_column=prompt.0.content" in message
    with pytest.raises(InputError) as err:
        load_task("math", train=str(path), question_column="prompt.0.content", answer_column="reward_model")
    message = str(err.value)
    assert f"{path}, row 1: column 'reward_model' (answer) holds a dict, not text" in message
    assert "--task-arg answer_column=reward_model.ground_truth" in message and "['ground_truth', 'style']" in message


def test_dotted_columns_name_nested_fields(tmp_path):
    import datasets

    numbers = [{**row, "reward_model": {"ground_truth": int(row["reward_model"]["ground_truth"])}} for row in DAPO_ROWS]
    (tmp_path / "dapo.jsonl").write_text("".join(json.dumps(row) + "\n" for row in numbers))
    datasets.Dataset.from_list(DAPO_ROWS).save_to_disk(str(tmp_path / "saved"))
    for path in (tmp_path / "dapo.jsonl", tmp_path / "saved"):
        task = load_task("math", train=str(path), question_column="prompt.0.content",
                         answer_column="reward_model.ground_truth")
        problems = task.problems("train")
        assert [(p.prompt.split("\n")[0], p.answer) for p in problems] == [
            ("Compute $6 \\times 7$.", "42"), ("Compute $2^5$.", "32")]  # (the JSONL's answers are numbers)
    with pytest.raises(InputError, match=r"row 1: no column 'reward_model\.gold' for the answer.*COLUMN\.FIELD"):
        load_task("math", train=str(tmp_path / "saved"), question_column="prompt.0.content",
                  answer_column="reward_model.gold")


def test_unknown_and_missing_task_options_are_named():
    with pytest.raises(ValueError, match=r"task 'math' has no option \['colum'\]: its options are \['train', "):
        load_task("math", train=str(TRAIN), colum="q")
    with pytest.raises(ValueError, match=r"task 'math' needs the option \['train'\].*--task-arg KEY=VALUE"):
        load_task("math")
    with pytest.raises(ValueError, match="has no option"):
        load_task("sort", n_digit=5)


# --- answers ----------------------------------------------------------------------------------

def test_answer_helpers():
    assert last_boxed("a \\boxed{1} b \\boxed{\\frac{1}{2}} c") == "\\frac{1}{2}"
    assert last_boxed("\\boxed{\\frac{1}{2}") is None and last_boxed("no box") is None
    assert last_boxed("\\boxed{x} then \\boxed") is None  # the last box is the one that counts, and it is empty
    assert normalize(" \\left( 2,\\,3 \\right) .") == "(2,3)" and normalize("\\dfrac{1}{2}") == "\\frac{1}{2}"
    assert normalize("\\leftarrow") == "\\leftarrow"
    assert gold_answer("so $\\boxed{7}$.") == "7" and gold_answer(" $\\frac{1}{2}$ ") == "\\frac{1}{2}"
    assert gold_answer(12) == "12"


CASES = [  # (problem id, solution, reward, scored by the fast path)
    ("algebra/1", "2^10 = 1024, so the answer is \\boxed{24}.", 1.0, True),
    ("algebra/1", "\\boxed{ 24 }", 1.0, True),
    ("algebra/1", "\\boxed{25}", 0.0, False),
    ("prealgebra/2", "$\\boxed{\\dfrac{1}{2}}$", 1.0, True),
    ("prealgebra/2", "It is \\boxed{0.5}.", 1.0, False),  # equal value, different text: math-verify
    ("prealgebra/2", "\\boxed{2/4}", 1.0, False),
    ("algebra/3", "\\boxed{\\left(2,3\\right)}", 1.0, True),
    ("algebra/3", "\\boxed{(2, 3]}", 0.0, False),  # an interval's ends matter
    ("algebra/6", "\\boxed{[-1,3]}", 1.0, True),
    ("algebra/6", "\\boxed{(-1,3)}", 0.0, False),
    ("algebra/4", "\\boxed{\\sqrt{50}}", 1.0, False),
    ("algebra/4", "\\boxed{5\\sqrt{3}}", 0.0, False),
    ("number_theory/7", "\\boxed{\\frac{2}{6}}", 1.0, False),
    ("algebra/9", "Subtract 7 and divide by 3: $x = -3$.", 1.0, False),  # no box: math-verify reads the last value
]


def test_verify_real_answers(task):
    before = dict(task.verifier_stats)
    for pid, solution, reward, fast in CASES:
        verdict = task.verify(problem(task, pid), solution)
        assert verdict.reward == reward, (pid, solution, verdict)
    stats = task.verifier_stats
    n_fast = sum(fast for *_, fast in CASES)
    assert stats["fast_path"] - before["fast_path"] == n_fast
    assert stats["math_verify"] - before["math_verify"] == len(CASES) - n_fast
    assert stats["timeouts"] == stats["errors"] == 0


def test_adversarial_answers(task):
    p = problem(task, "algebra/12")  # gold 7
    verdict = task.verify(p, "I could not solve it.")
    assert verdict.reward == 0.0 and verdict.answer is None
    # several boxes: the last one counts ...
    assert task.verify(p, "First try \\boxed{5}. " + "That is wrong. " * 5 + "So \\boxed{7}.").reward == 1.0
    assert task.verify(p, "First try \\boxed{7}. " + "That is wrong. " * 5 + "So \\boxed{5}.").reward == 0.0
    # ... but a list of boxes is one set answer: hedging over candidates earns nothing
    assert task.verify(p, "\\boxed{5}, \\boxed{6}, \\boxed{7}").reward == 0.0
    assert task.verify(p, " ".join(f"\\boxed{{{i}}}" for i in range(100))).reward == 0.0
    assert task.verify(p, "\\boxed{7").reward == 0.0  # unbalanced
    assert task.verify(p, None).reward == 0.0  # not text: still no exception
    huge = "\\boxed{" + "+".join(f"x^{{{i}}}" for i in range(400)) + "}"
    start = time.monotonic()
    assert task.verify(p, huge).reward == 0.0
    assert time.monotonic() - start < task.verify_timeout_s + 5


def test_hanging_answer_times_out_scores_zero_and_is_counted(caplog):
    task = load_task("math", train=str(TRAIN), id_column="id", verify_timeout_s=1.0)
    p = problem(task, "algebra/1")
    try:
        assert task.verify(p, "\\boxed{24.0}").reward == 1.0  # workers warmed up: the timeout counts the call only
        start = time.monotonic()
        with caplog.at_level(logging.WARNING, logger="prefixrl.tasks.math"):
            verdict = task.verify(p, HANGS)
        elapsed = time.monotonic() - start
        assert verdict.reward == 0.0 and 1.0 <= elapsed < 3.0
        assert "no verdict within 1 s for problem algebra/1; scored 0 (1 timeouts so far)" in caplog.text
        assert task.verify(p, "\\boxed{24.0}").reward == 1.0  # the hung worker was replaced
        stats = task.verifier_stats
        assert (stats["timeouts"], stats["worker_restarts"], stats["errors"]) == (1, 1, 0)
    finally:
        task.close()


def test_verify_many_on_two_workers():
    many = load_task("math", train=str(TRAIN), id_column="id", verify_workers=2, verify_timeout_s=1.0)
    try:
        items = [(problem(many, pid), solution) for pid, solution, *_ in CASES]
        items.insert(3, (problem(many, "algebra/1"), HANGS))  # a hang among them costs one timeout, not the batch
        rewards = [reward for _, _, reward, _ in CASES]
        assert [v.reward for v in many.verify_many(items)] == rewards[:3] + [0.0] + rewards[3:]
        assert many.verifier_stats["timeouts"] == 1 and many.verifier_stats["answers"] == len(items)
    finally:
        many.close()


def test_task_with_running_workers_pickles(task):
    task.verify(problem(task, "algebra/1"), "\\boxed{24.00}")  # starts the workers
    copy = pickle.loads(pickle.dumps(task))  # as sent to an experiment's worker process
    try:
        assert copy.verify(problem(copy, "algebra/1"), "\\boxed{24.00}").reward == 1.0
        assert copy.problems("heldout") == task.problems("heldout")
    finally:
        copy.close()


# --- task options from the CLI and configs ----------------------------------------------------

def test_parse_task_args():
    assert parse_task_args(["train=data/a b.jsonl", "verify_workers=2", "id_column=", "hard=[7, 8]",
                            "instruction=Answer: \\boxed{}", "x=a=b", "y=- item", "z=0.5"]) == \
        {"train": "data/a b.jsonl", "verify_workers": 2, "id_column": None, "hard": [7, 8],
         "instruction": "Answer: \\boxed{}", "x": "a=b", "y": "- item", "z": 0.5}
    for bad in ("train", "=x", "two words=1"):
        with pytest.raises(ValueError, match="expected KEY=VALUE"):
            parse_task_args([bad])
    assert len(load_task("sort", **parse_task_args(["n_train=10"])).problems("train")) == 10


def test_cli_task_arg(tmp_path):
    target = load_task("math", train=str(TRAIN), id_column="id").problems("train")
    (tmp_path / "old.jsonl").write_text(
        json.dumps({"problem_id": "algebra/1", "completion": "So \\boxed{24}."}) + "\n"
        + json.dumps({"problem_id": "algebra/8", "completion": "So \\boxed{8}."}) + "\n")
    assert {p.id for p in target} >= {"algebra/1", "algebra/8"}
    runner = CliRunner()
    args = ["import", str(tmp_path / "store"), "--file", str(tmp_path / "old.jsonl"), "--task", "math"]
    result = runner.invoke(app, args + ["--task-arg", f"train={TRAIN}", "--task-arg", "id_column=id"],
                           env={"COLUMNS": "400"})
    assert result.exit_code == 0, result.output
    assert "imported 1 traces" in result.output and "rejected 1" in result.output
    assert json.loads((tmp_path / "store" / "traces.jsonl").read_text())["problem_id"] == "algebra/1"
    for extra, message in ([[], "needs the option ['train']"], [["--task-arg", "train"], "expected KEY=VALUE"],
                           [["--task-arg", f"train={TRAIN}", "--task-arg", "question_column=q"],
                            "no column 'q' for the question"]):
        result = runner.invoke(app, args + extra, env={"COLUMNS": "400"})
        assert result.exit_code == 2 and message in result.output, result.output


def test_pipeline_config_task_args(tmp_path):
    from dataclasses import asdict

    from prefixrl.pipeline import PipelineConfig

    (tmp_path / "c.yaml").write_text(f"task: math\ntask_args:\n  train: {TRAIN}\n  id_column: id\n")
    cfg = PipelineConfig.from_yaml(tmp_path / "c.yaml")
    assert asdict(cfg)["task_args"] == {"train": str(TRAIN), "id_column": "id"}  # saved in config.json
    assert load_task(cfg.task, **cfg.task_args).problems("train")[0].id == "algebra/1"
    assert PipelineConfig().task_args == {}


# --- the task in the pipeline's stages ----------------------------------------------------------

class FakeMathSampler:
    """Answers the problems whose id is in `solves` right once in n samples, every other sample wrong."""

    def __init__(self, task, solves: set[str]):
        from prefixrl.generate import SamplingParams

        self.params, self.n_params = SamplingParams(batch_size=8), 1000
        self.tokenizer = None  # no chat template: the stages' prompts are the problems
        self.answers = {p.prompt: (p.id, p.answer) for p in task.problems("train")}
        self.solves = solves

    def generate(self, prompts, n, seed, dead_end=None):
        from prefixrl.generate import Sample

        def text(prompt, j):
            pid, answer = self.answers[prompt]
            good = pid in self.solves and j == n - 1
            return f"Working it out, we get $\\boxed{{{answer}}}$." if good else "So it is \\boxed{-17}."

        return [[Sample(text=text(p, j), token_ids=[5] * 20, prompt_tokens=10) for j in range(n)] for p in prompts]


def test_screen_stage_on_math_records_task_args(tmp_path):
    from prefixrl.screen import screen

    task = load_task("math", train=str(TRAIN), id_column="id")
    try:
        hard = screen(task, FakeMathSampler(task, solves={"algebra/1", "algebra/3"}), task.problems("train"),
                      tmp_path, n=4, quiet=True)
        assert {p.id for p in task.problems("train")} - {p.id for p in hard} == {"algebra/1", "algebra/3"}
        manifest = json.loads((tmp_path / "manifest.json").read_text())
        assert manifest["config"]["task"] == "math"
        assert manifest["config"]["task_args"] == {"train": str(TRAIN), "id_column": "id"}
        stats = task.verifier_stats  # the wrong answers all needed math-verify
        assert (stats["answers"], stats["fast_path"], stats["math_verify"], stats["timeouts"]) == (48, 2, 46, 0)
    finally:
        task.close()


def test_training_reward_function_scores_prefix_plus_continuation(task):
    from prefixrl.train import reward_function

    reward = reward_function(task, problems_by_id(task))
    assert reward(prompts=["p"] * 3, completions=["4}.", "5}.", "no"], problem_id=["algebra/1"] * 3,
                  prefix=["2^10 - 1000 = \\boxed{2", "2^10 - 1000 = \\boxed{2", ""]) == [1.0, 0.0, 0.0]


class ScriptedVerifier:
    """Stands in for the worker pool: every math-verify call gets `reply`."""

    restarts = 0

    def __init__(self, reply):
        self.reply = reply

    def map(self, calls):
        return [self.reply] * len(calls)

    def close(self):
        pass


def test_a_broken_verifier_stops_the_run_after_errors_in_a_row(caplog):
    task = load_task("math", train=str(TRAIN), id_column="id", max_errors_in_a_row=5)
    p = problem(task, "algebra/12")  # gold 7
    task._pool = ScriptedVerifier(("error", "ModuleNotFoundError: No module named 'math_verify'"))
    with caplog.at_level(logging.WARNING, logger="prefixrl.tasks.math"):
        assert [v.reward for v in task.verify_many([(p, "x = 3")] * 4)] == [0.0] * 4  # could be strange answers
    task._pool = ScriptedVerifier(("ok", (True, "7")))
    assert task.verify(p, "so x = 7").reward == 1.0  # one verdict: the verifier works, the count restarts
    task._pool = ScriptedVerifier(("error", "ModuleNotFoundError: No module named 'math_verify'"))
    assert [v.reward for v in task.verify_many([(p, "x = 3")] * 4)] == [0.0] * 4
    with pytest.raises(RuntimeError, match="math-verify failed on 5 answers in a row"):
        task.verify(p, "x = 3")
    assert task.verifier_stats["errors"] == 9


def test_manifests_record_the_verifier_counts(task, tmp_path):
    from prefixrl.runinfo import write_manifest

    task.verify(problem(task, "algebra/12"), "\\boxed{7}")
    write_manifest(tmp_path, stage="screen", config={}, seed=0, flops=0.0, wall_time_s=1.0, task=task)
    recorded = json.loads((tmp_path / "manifest.json").read_text())["verifier"]
    assert recorded == task.verifier_stats and recorded["fast_path"] >= 1
