"""Tasks: problems, an exact verifier, and a pretraining corpus for the task's own base model.

A task is anything with the attributes of `Task` below. Built-in tasks are found by name
(`load_task("sort")`); a user's own task plugs in by a `module:Class` path
(`load_task("my_pkg.tasks:MyTask")`) without editing this package.
"""

from __future__ import annotations

import importlib
import inspect
from dataclasses import asdict, dataclass, field
from typing import Protocol, runtime_checkable


@dataclass(frozen=True)
class Problem:
    id: str
    prompt: str  # what the policy is conditioned on (a prefix, if any, is appended after it)
    answer: str  # the gold answer, as the verifier extracts it from a correct solution
    difficulty: int  # the task's difficulty knob (number of decisions)
    split: str  # "train" (hard problems to train on), "heldout" (never trained on) or "easy"
    meta: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, row: dict) -> "Problem":
        return cls(**{k: row[k] for k in ("id", "prompt", "answer", "difficulty", "split")},
                   meta=dict(row.get("meta") or {}))


@dataclass(frozen=True)
class Verdict:
    reward: float  # 1.0 if the solution is correct, else 0.0
    answer: str | None  # the answer extracted from the solution (None when there is none)


@runtime_checkable
class Task(Protocol):
    name: str
    # Strings whose presence in a solution identifies the strategy it used, by strategy name.
    strategy_markers: dict[str, str]

    def problems(self, split: str) -> list[Problem]:
        """The task's problems of one split ("train", "heldout" or "easy"; optionally "validation": hard
        problems neither trained on nor held out, on which the sft-rl baseline is tuned)."""

    def verify(self, problem: Problem, solution: str) -> Verdict:
        """Score a solution (the text after the prompt). Must never raise on arbitrary text."""

    def corpus(self, n: int, seed: int) -> list[tuple[str, str]]:
        """n (prompt, completion) pairs of worked attempts for pretraining the base model."""


def strategy_of(task: Task, solution: str) -> str | None:
    """The first strategy whose marker appears in the solution (None: no marker found)."""
    for name, marker in task.strategy_markers.items():
        if marker in solution:
            return name
    return None


def verify_all(task: Task, items: list[tuple[Problem, str]]) -> list[Verdict]:
    """Verdicts for (problem, solution) pairs: through the task's `verify_many` when it has one
    (the math task spreads them over its verifier processes), else one `verify` at a time."""
    batch = getattr(task, "verify_many", None)
    return batch(items) if batch is not None else [task.verify(problem, text) for problem, text in items]


def dead_end_of(task: Task, problems: list[Problem]):
    """A sampler's early-rejection check for prompts of these problems (unprefixed), or None when
    the task has no `dead_end(problem, partial) -> bool` (optional: True only if no continuation
    of the partial solution can be correct; the built-in synthetic tasks have one)."""
    check = getattr(task, "dead_end", None)
    return None if check is None else (lambda i, text: check(problems[i], text))


def builtin_tasks() -> dict[str, type]:
    from prefixrl.tasks.chain import ChainTask
    from prefixrl.tasks.gambles import GamblesTask
    from prefixrl.tasks.math import MathTask
    from prefixrl.tasks.minefield import MinefieldTask
    from prefixrl.tasks.mines import MinesTask
    from prefixrl.tasks.sort import SortTask

    return {"sort": SortTask, "chain": ChainTask, "mines": MinesTask, "gambles": GamblesTask,
            "minefield": MinefieldTask, "math": MathTask}


def load_task(name: str, **kwargs) -> Task:
    """A built-in task by name, reasoning-gym's by `rg:NAME`, or a user's task class by `module:Class`."""
    if name.startswith("rg:"):
        from prefixrl.tasks.rg import ReasoningGymTask

        task = ReasoningGymTask(name.removeprefix("rg:"), **kwargs)
        task.task_args = dict(kwargs)
        return task
    if ":" in name:
        module_name, _, class_name = name.partition(":")
        try:
            cls = getattr(importlib.import_module(module_name), class_name)
        except (ImportError, AttributeError) as err:
            raise ValueError(f"cannot load task {name!r}: {err}. "
                             "Give an importable `module:Class` path.") from err
    else:
        tasks = builtin_tasks()
        if name not in tasks:
            raise ValueError(f"unknown task {name!r}: built-in tasks are {sorted(tasks)}; reasoning-gym's are "
                             "`rg:NAME`; a task of your own is given as `module:Class`.")
        cls = tasks[name]
    _check_options(name, cls, kwargs)
    try:
        task = cls(**kwargs)
    except TypeError as err:  # an option of a type the task cannot use, in a task without annotations
        raise ValueError(f"task {name!r} cannot use the options {kwargs}: {err}. Fix the --task-arg values "
                         "(in a config: task_args)") from err
    missing = [a for a in ("name", "strategy_markers", "problems", "verify", "corpus")
               if not hasattr(task, a)]
    if missing:
        raise ValueError(f"task {name!r} lacks {missing}: see prefixrl.tasks.Task")
    try:
        task.task_args = dict(kwargs)  # recorded in run manifests: the run can be repeated
    except AttributeError:  # a task class with __slots__ or read-only attributes
        pass
    return task


def check_sizes(name: str, sizes: dict[str, int]) -> None:
    """A generated task's split sizes (n_train, n_heldout, n_easy) are counts: a negative one would
    silently shift the held-out problems (a slice with a negative end)."""
    for split, size in sizes.items():
        if size < 0:
            raise ValueError(f"task {name!r}: n_{split} must be >= 0, got {size}: fix --task-arg n_{split}=N")


def task_args(task: Task) -> dict:
    """The options a task was loaded with ({} if unknown)."""
    return dict(getattr(task, "task_args", None) or {})


def parse_task_args(pairs: list[str]) -> dict:
    """`--task-arg KEY=VALUE` pairs as keyword arguments. A VALUE that YAML reads as a number, a
    bool or a `[...]` list becomes one (`3`, `true`, `[7, 8]`), an empty one None; anything else is
    kept verbatim (YAML would turn `Answer: \\boxed{}` into a mapping)."""
    import yaml

    kwargs = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key.strip().isidentifier():
            raise ValueError(f"--task-arg {pair!r}: expected KEY=VALUE, e.g. --task-arg train=data/train.jsonl")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError:
            value = text
        typed = value is None or isinstance(value, (bool, int, float)) or \
            (isinstance(value, list) and text.lstrip().startswith("["))
        kwargs[key.strip()] = value if typed else text
    return kwargs


def _check_options(name: str, cls: type, kwargs: dict) -> None:
    """Unknown or missing task options, named with the options the task has."""
    try:
        params = inspect.signature(cls).parameters
    except (TypeError, ValueError):  # no signature to check against: let the call itself fail
        return
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return
    unknown = sorted(set(kwargs) - set(params))
    missing = [k for k, p in params.items() if p.default is p.empty and k not in kwargs
               and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    if unknown or missing:
        problem = f"has no option {unknown}" if unknown else f"needs the option {missing}"
        raise ValueError(f"task {name!r} {problem}: its options are {list(params)}. Set one with "
                         "--task-arg KEY=VALUE (in a config: task_args: {KEY: VALUE})")
    from prefixrl.typecheck import hints_of, type_problem

    hints = hints_of(cls.__init__)
    for key, value in kwargs.items():
        if key in hints and (wanted := type_problem(value, hints[key])):  # a TypeError deep in the task otherwise
            raise ValueError(f"task {name!r}: option {key} must be {wanted}, got {value!r}: fix --task-arg "
                             f"{key}=VALUE (in a config: task_args: {{{key}: VALUE}})")


SPLITS = ("train", "heldout", "easy")
# A task may also offer hard problems neither trained on nor held out, for tuning a baseline (the
# built-in ones do: sft-rl's SFT epochs and learning rate are chosen on them, methods.validation_problems).
OPTIONAL_SPLITS = ("validation",)


def task_splits(task: Task) -> tuple[str, ...]:
    """The splits this task offers: SPLITS, plus each optional one its `problems` accepts."""
    offered = []
    for split in OPTIONAL_SPLITS:
        try:
            task.problems(split)
        except ValueError:
            continue
        offered.append(split)
    return SPLITS + tuple(offered)


def problems_by_id(task: Task) -> dict[str, Problem]:
    """Every problem of the task, all splits, by id (traces and training rows name problems by id)."""
    return {p.id: p for split in task_splits(task) for p in task.problems(split)}


def load_problems(task: Task, source: str) -> list[Problem]:
    """Problems from a split name ("train", "heldout", "easy", or "validation" where the task has
    one) or a JSONL file of problems (such as the `hard.jsonl` that `screen` writes)."""
    if source in SPLITS or source in task_splits(task):
        return task.problems(source)
    from prefixrl.files import read_jsonl

    rows = read_jsonl(source, required=("id", "prompt", "answer", "difficulty", "split"))
    return [Problem.from_dict(row) for row in rows]
