"""`math`: real math problems from your own files, answers checked with math-verify.

    prefixrl screen Qwen/Qwen3-4B --task math --task-arg train=data/train.jsonl \\
        --task-arg heldout=data/test.jsonl --task-arg question_column=problem

Problems come from JSONL, Parquet or a `datasets.save_to_disk` folder, one problem per row; the
columns holding the question and the answer are options, as are an id, a source and a difficulty
column. A dotted column names a nested field, a number in it a list item (DAPO-Math-17k:
`question_column=prompt.0.content`, `answer_column=reward_model.ground_truth`); the question and the
answer must be text (an answer may also be a number). `train` is the training file (the problems
screened for hard ones), `heldout` a separate file never trained on, `easy` an optional third file.
The prompt is the question followed by an instruction to put the final answer in \\boxed{}.
A `solution_column` (MATH's `solution`) keeps each problem's worked solution: `prefixrl reference`
makes those the trace store without rejection sampling.

Verification: a solution whose one \\boxed{} holds the gold answer verbatim (up to spaces, `$`,
\\left/\\right, \\dfrac) is correct at once. Anything else goes to math-verify, `parse` then
`verify(gold, pred)`, in worker processes under a hard wall-clock timeout per answer
(`verify_timeout_s`): an answer that takes longer scores 0 and is counted in `verifier_stats`.
So does an answer math-verify fails on; but `max_errors_in_a_row` failures in a row mean a broken
verifier (not a strange answer), and stop the run rather than train on rewards that are all 0.
With several boxes, math-verify's rule decides: the last one counts, but boxes it reads as a list
("\\boxed{3}, \\boxed{5}") become one set answer, which a single gold answer never equals.
"""

from __future__ import annotations

import hashlib
import logging
import re
from functools import lru_cache
from pathlib import Path

from prefixrl.files import InputError, iter_records
from prefixrl.tasks import Problem, Verdict

logger = logging.getLogger(__name__)

DEFAULT_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."
# the options naming the columns: the errors tell a user which one to set
COLUMN_OPTIONS = {"question": "question_column", "answer": "answer_column", "id": "id_column",
                  "source": "source_column", "difficulty": "difficulty_column", "solution": "solution_column"}


# --- answers ---------------------------------------------------------------------------------
def last_boxed(text: str) -> str | None:
    """The content of the last \\boxed{...} (braces balanced), or None."""
    start = text.rfind("\\boxed")
    brace = text.find("{", start)
    if start < 0 or brace < 0 or text[start + len("\\boxed"):brace].strip():
        return None
    depth = 0
    for end in range(brace, len(text)):
        depth += {"{": 1, "}": -1}.get(text[end], 0)
        if depth == 0:
            return text[brace + 1:end]
    return None


_NOISE = re.compile(r"\s|\$|\\[,;:! ]|\\left(?![a-zA-Z])|\\right(?![a-zA-Z])")


def normalize(answer: str) -> str:
    """Only rewrites that cannot change a value: for the exact-match fast path."""
    return _NOISE.sub("", answer).replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac").rstrip(".")


def gold_answer(value) -> str:
    """The gold answer of a row: a bare answer, or a full solution whose last \\boxed{} holds it."""
    text = str(value).strip()
    if "\\boxed" in text:
        text = last_boxed(text) or text
    return text.strip().strip("$").strip()


@lru_cache(maxsize=4096)
def _parse_gold(gold: str):
    from math_verify import parse

    return parse(f"\\boxed{{{gold}}}", parsing_timeout=None)


def check_answer(gold: str, solution: str) -> tuple[bool, str | None]:
    """math-verify's verdict (runs in a worker). Its own timeouts are off: they use signals, and
    the worker is killed from outside instead. Returns (correct, the answer it extracted)."""
    from math_verify import parse, verify

    logging.getLogger("math_verify").setLevel(logging.ERROR)  # "timeout is disabled": we know
    pred = parse(solution, parsing_timeout=None)
    if not pred:
        return False, None
    answer = next((p for p in pred if isinstance(p, str)), None)  # parse returns [value, its text]
    return bool(verify(_parse_gold(gold), pred, timeout_seconds=None)), answer


# --- problems --------------------------------------------------------------------------------
_MISSING = object()


def _lookup(record: dict, column: str):
    """record[column], where a dotted column names a nested field (`reward_model.ground_truth`), and
    a number in it an item of a list (`prompt.0.content`: the first chat message's text)."""
    if column in record:
        return record[column]
    value = record
    for key in column.split("."):
        if isinstance(value, list) and key.isdigit() and int(key) < len(value):
            value = value[int(key)]
        elif isinstance(value, dict) and key in value:
            value = value[key]
        else:
            return _MISSING
    return value


def _column(record: dict, role: str, column: str, where: str, text: bool = False):
    """The row's value in `column` for `role` (question, answer, id, ...); text=True: as text (_text)."""
    value = _lookup(record, column)
    option = COLUMN_OPTIONS[role]
    if value is _MISSING:
        raise InputError(f"{where}: no column {column!r} for the {role}; the columns are {sorted(record)}. "
                         f"Name it with --task-arg {option}=COLUMN (in a config: task_args: {{{option}: COLUMN}}; "
                         "a nested field: COLUMN.FIELD)")
    if value is None or (isinstance(value, str) and not value.strip()):
        raise InputError(f"{where}: column {column!r} ({role}) is empty; fill it or remove that row")
    return _text(value, role, column, where) if text else value


def _text(value, role: str, column: str, where: str) -> str:
    """A question or answer as text; anything else (DAPO-Math-17k's `prompt` is a list of chat
    messages) is an error that says what to name instead, never str() of a list."""
    if isinstance(value, str) or (role == "answer" and isinstance(value, (int, float)) and not isinstance(value, bool)):
        return str(value)
    option, shown = COLUMN_OPTIONS[role], repr(value)
    if len(shown) > 80:
        shown = shown[:77] + "..."
    if isinstance(value, dict):
        fix = (f"name one of its fields with a dotted path, e.g. --task-arg {option}={column}."
               f"{next(iter(value), 'FIELD')} (its fields are {sorted(value)})")
    elif isinstance(value, list) and value and isinstance(value[0], dict) and "content" in value[0]:
        fix = f"name a message's text with a dotted path, e.g. --task-arg {option}={column}.0.content"
    else:
        fix = f"name a text column with --task-arg {option}=COLUMN (a nested one: COLUMN.FIELD)"
    raise InputError(f"{where}: column {column!r} ({role}) holds a {type(value).__name__}, not text: {shown}; {fix}")


def _difficulty(value, where: str) -> int:
    match = re.search(r"-?\d+", str(value))  # also reads MATH's "Level 5"
    if match is None:
        raise InputError(f"{where}: difficulty {value!r} holds no integer; fix it or drop difficulty_column")
    return int(match.group())


def read_problems(path: str | Path, split: str, columns: dict[str, str | None], instruction: str) -> list[Problem]:
    """The problems of one file; `columns` maps role (question, answer, id, ...) to column name."""
    path = Path(path)
    unit = "line" if path.is_file() and path.suffix != ".parquet" else "row"
    problems, seen, repeats = [], {}, 0
    for n, record in iter_records(path):
        if isinstance(record, InputError):
            raise record
        where = f"{path}, {unit} {n}"
        question = _column(record, "question", columns["question"], where, text=True).strip()
        answer = gold_answer(_column(record, "answer", columns["answer"], where, text=True))
        if columns["id"]:
            pid = str(_column(record, "id", columns["id"], where))
            if pid in seen:
                raise InputError(f"{where}: id {pid!r} repeats {unit} {seen[pid]}; ids must be unique "
                                 "(or leave id_column unset: ids are then made from the question text)")
        else:  # stable under reordering the file; a repeated question is the same problem
            pid = "math-" + hashlib.sha1(question.encode()).hexdigest()[:12]
            if pid in seen:
                repeats += 1
                continue
        seen[pid] = n
        meta = {"source": str(_column(record, "source", columns["source"], where))} if columns["source"] else {}
        if columns.get("solution"):  # a worked solution: `prefixrl reference` makes it a trace
            meta["solution"] = _column(record, "solution", columns["solution"], where, text=True)
        difficulty = _difficulty(_column(record, "difficulty", columns["difficulty"], where), where) \
            if columns["difficulty"] else 0
        prompt = f"{question}\n\n{instruction}" if instruction else question
        problems.append(Problem(id=pid, prompt=prompt, answer=answer, difficulty=difficulty, split=split, meta=meta))
    if not problems:
        raise InputError(f"{path}: holds no problems")
    if repeats:
        logger.warning("%s: %d repeated questions skipped (each problem is kept once)", path, repeats)
    return problems


def _check_overlap(splits: dict[str, list[Problem]], files: dict[str, str]) -> None:
    """Problems are found by id across splits: an id naming two different problems is an error,
    the same question in train and held-out a warning (held-out results would be contaminated)."""
    train = {p.id: p for p in splits["train"]}
    for split in ("heldout", "easy"):
        clash = [p for p in splits[split] if p.id in train]
        different = [p.id for p in clash if p.prompt != train[p.id].prompt]
        if different:
            raise InputError(f"{files[split]}: ids {different[:5]} also name different problems in {files['train']}; "
                             "ids must be unique across the files (or leave id_column unset)")
        if clash:
            logger.warning("%d problems of %s are also in the training file %s", len(clash), files[split],
                           files["train"])


# --- the task --------------------------------------------------------------------------------
class MathTask:
    name = "math"
    strategy_markers: dict[str, str] = {}

    def __init__(self, train: str, heldout: str | None = None, easy: str | None = None,
                 question_column: str = "problem", answer_column: str = "answer", id_column: str | None = None,
                 source_column: str | None = None, difficulty_column: str | None = None,
                 solution_column: str | None = None, instruction: str = DEFAULT_INSTRUCTION, verify_timeout_s: float = 5.0, verify_workers: int = 1,
                 max_errors_in_a_row: int = 100):
        if float(verify_timeout_s) <= 0 or int(verify_workers) < 1:
            raise ValueError(f"math task: verify_timeout_s must be > 0 and verify_workers >= 1, "
                             f"got {verify_timeout_s} and {verify_workers}")
        columns = {"question": question_column, "answer": answer_column, "id": id_column,
                   "source": source_column, "difficulty": difficulty_column, "solution": solution_column}
        files = {"train": str(train), "heldout": heldout and str(heldout), "easy": easy and str(easy)}
        self._splits = {split: read_problems(path, split, columns, instruction) if path else []
                        for split, path in files.items()}
        _check_overlap(self._splits, files)
        self.verify_timeout_s, self.verify_workers = float(verify_timeout_s), int(verify_workers)
        self._pool = None  # worker processes, started at the first answer that needs math-verify
        self._counts = dict(answers=0, fast_path=0, math_verify=0, timeouts=0, errors=0)
        self.max_errors_in_a_row, self._errors_in_a_row = int(max_errors_in_a_row), 0
        self.instruction = instruction

    def question_of(self, problem: Problem) -> str:
        """The question alone (the prompt less the instruction): what a dataset keyed by question holds."""
        suffix = f"\n\n{self.instruction}" if self.instruction else ""
        return problem.prompt.removesuffix(suffix) if suffix else problem.prompt

    def reference_solution(self, problem: Problem) -> str | None:
        """The row's worked solution (solution_column; MATH's `solution`), None without one."""
        return problem.meta.get("solution")

    def problems(self, split: str) -> list[Problem]:
        if split not in self._splits:
            raise ValueError(f"unknown split {split!r}: use 'train', 'heldout' or 'easy'")
        return list(self._splits[split])

    def corpus(self, n: int, seed: int) -> list[tuple[str, str]]:
        raise ValueError("the math task has no pretraining corpus: train a real pretrained model "
                         "(a model folder or Hub name), not one from `prefixrl pretrain`")

    # --- verification ---------------------------------------------------------------------
    @property
    def verifier_stats(self) -> dict[str, int]:
        """Answers scored, by path: fast_path, math_verify (timeouts and errors included)."""
        return {**self._counts, "worker_restarts": self._pool.restarts if self._pool else 0}

    def verify(self, problem: Problem, solution: str) -> Verdict:
        return self.verify_many([(problem, solution)])[0]

    def verify_many(self, items: list[tuple[Problem, str]]) -> list[Verdict]:
        """Verdicts for (problem, solution) pairs; math-verify's share runs on all workers at once.
        An answer that cannot be checked scores 0 and is counted; raises only when the verifier
        itself looks broken (`max_errors_in_a_row`)."""
        self._counts["answers"] += len(items)
        verdicts: list[Verdict | None] = [None] * len(items)
        try:
            verdicts = [self._fast_path(problem, solution) for problem, solution in items]
            slow = [i for i, verdict in enumerate(verdicts) if verdict is None]
            self._counts["fast_path"] += len(items) - len(slow)
            self._counts["math_verify"] += len(slow)
            if slow:
                outcomes = self._workers().map([(items[i][0].answer, items[i][1]) for i in slow])
                for i, outcome in zip(slow, outcomes):
                    verdicts[i] = self._score(items[i][0], *outcome)
        except Exception as err:  # a verifier failure must never stop a run: score 0, count, warn
            unscored = sum(v is None for v in verdicts)
            self._counts["errors"] += unscored
            self._errors_in_a_row += unscored
            logger.warning("math verifier failed (%s: %s); %d answers scored 0", type(err).__name__, err, unscored)
        if self._errors_in_a_row >= self.max_errors_in_a_row:
            raise RuntimeError(f"math-verify failed on {self._errors_in_a_row} answers in a row (see the warnings "
                               f"above): the verifier is broken, not the answers. Check that "
                               f"`python -c 'import math_verify'` works in this environment")
        return [v or Verdict(0.0, None) for v in verdicts]

    def _fast_path(self, problem: Problem, solution: str) -> Verdict | None:
        """Exactly one box holding the gold answer verbatim: correct without math-verify. Several
        boxes go to math-verify, whose rule for them (see the module docstring) is the one that counts."""
        if not isinstance(solution, str):
            return Verdict(0.0, None)
        if solution.count("\\boxed") != 1:
            return None
        boxed = last_boxed(solution)
        return Verdict(1.0, boxed) if boxed is not None and normalize(boxed) == normalize(problem.answer) else None

    def _score(self, problem: Problem, status: str, value) -> Verdict:
        self._errors_in_a_row = self._errors_in_a_row + 1 if status == "error" else 0
        if status == "ok":
            correct, answer = value
            return Verdict(float(correct), answer)
        key = "timeouts" if status == "timeout" else "errors"
        self._counts[key] += 1
        what = f"no verdict within {self.verify_timeout_s:g} s" if status == "timeout" else f"error {value}"
        logger.warning("math verifier: %s for problem %s; scored 0 (%d %s so far)", what, problem.id,
                       self._counts[key], key)
        return Verdict(0.0, None)

    def _workers(self):
        if self._pool is None:
            from prefixrl.timeout_pool import TimeoutPool

            self._pool = TimeoutPool(check_answer, workers=self.verify_workers, timeout_s=self.verify_timeout_s,
                                     warmup=("1", "\\boxed{1}"))
        return self._pool

    def close(self) -> None:
        """Stop the verifier's worker processes (they also stop when this process exits)."""
        if self._pool is not None:
            self._pool.close()
            self._pool = None

    def __getstate__(self) -> dict:
        # processes do not pickle: a copy sent to another process starts its own workers
        return {**self.__dict__, "_pool": None}
