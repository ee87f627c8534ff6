"""`rg:NAME`: any of reasoning-gym's procedural tasks (`pip install "prefixrl[rg]"`).

    prefixrl screen Qwen/Qwen3-4B --task rg:countdown --task-arg level=3 --task-arg n_train=512

Problems come from `reasoning_gym.create_dataset(NAME, size, seed, **options)`. The training split
("train", the problems screened for hard ones), the held-out split of hard problems ("heldout",
never trained on) and "easy" are drawn from disjoint seed ranges (reasoning-gym draws item i of a
dataset from seed + i), and a question that came up in an earlier split is dropped from a later
one, so no held-out question is ever trained on. Difficulty: `level=L` sets every attribute of the
task's curriculum to level L for train and held-out; `easy_level` (default 0) does the same for
"easy" (without a curriculum, easy uses the dataset's defaults). Any other option (`min_terms=5`) is
a field of the dataset's config and applies to train and held-out, after `level`.

The prompt is the question (which states the answer's format) and an instruction to give only the
final answer between <answer> tags; reasoning-gym's `extract_answer` reads the last such answer.
Reward 1 only when the task's `score_answer` is exactly 1.0: its partial credit (0.01 for a
well-formed wrong answer, 0.05 ...) is never a success. Scorers run in prefixrl's timeout pool
(countdown and puzzle24 parse expressions, n_queens calls eval on model text): a scorer that hangs
or raises scores 0 and is counted in `verifier_stats`, and the run goes on.
"""

from __future__ import annotations

import hashlib
import json
import logging
from functools import lru_cache

from prefixrl.tasks import Problem, Verdict

logger = logging.getLogger(__name__)

DEFAULT_INSTRUCTION = ("Give only your final answer, in the format the question asks for, between "
                       "<answer> and </answer> tags.")
SPLIT_OFFSET = {"train": 0, "heldout": 1, "easy": 2}  # seed ranges: split s of seed S starts at (3S + s) * 1e6
SEED_RANGE = 1_000_000
MAX_SIZE = 50_000  # every draw of a split (at most 16x its size) stays inside its seed range


def _import():
    try:
        import reasoning_gym.factory as factory
        from reasoning_gym.utils import extract_answer
    except ImportError as err:
        raise ValueError("task rg:NAME needs reasoning-gym: pip install 'prefixrl[rg]' "
                         "(or pip install reasoning-gym==0.1.25)") from err
    return factory, extract_answer


def _json_safe(value):
    """A copy of an entry's metadata that survives a JSONL round trip (hard.jsonl, train.jsonl)."""
    return json.loads(json.dumps(value, default=str))


@lru_cache(maxsize=8)
def _scorer(name: str, options_json: str):
    factory, _ = _import()
    return factory.create_dataset(name, size=1, seed=0, **json.loads(options_json)).score_answer


def score_answer(name: str, options_json: str, answer: str | None, entry: dict | None) -> float:
    """reasoning-gym's score of one answer (runs in a verifier worker); entry None only warms up."""
    scorer = _scorer(name, options_json)
    return 0.0 if entry is None else float(scorer(answer, entry))


class ReasoningGymTask:
    strategy_markers: dict[str, str] = {}

    def __init__(self, dataset: str, n_train: int = 256, n_heldout: int = 64, n_easy: int = 64, seed: int = 0,
                 level: int | None = None, easy_level: int = 0, instruction: str = DEFAULT_INSTRUCTION,
                 verify_timeout_s: float = 5.0, verify_workers: int = 1, **options):
        factory, self._extract = _import()
        if dataset not in factory.DATASETS:
            raise ValueError(f"reasoning-gym has no task {dataset!r}; its tasks are {sorted(factory.DATASETS)}")
        for key, value in dict(n_train=n_train, n_heldout=n_heldout, n_easy=n_easy, seed=seed,
                               verify_workers=verify_workers).items():
            low, high = (1 if key == "verify_workers" else 0), (MAX_SIZE if key.startswith("n_") else 10**9)
            if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
                raise ValueError(f"task rg:{dataset}: {key} must be a whole number in [{low}, {high}], got {value!r} "
                                 f"(--task-arg {key}=N)")
        if not isinstance(verify_timeout_s, (int, float)) or verify_timeout_s <= 0:
            raise ValueError(f"task rg:{dataset}: verify_timeout_s must be > 0, got {verify_timeout_s!r}")
        self.name, self.dataset, self.seed, self.instruction = f"rg:{dataset}", dataset, seed, instruction
        self.sizes = {"train": n_train, "heldout": n_heldout, "easy": n_easy}
        self.configs = {"train": self._config(factory, level, options), "easy": self._config(factory, easy_level, {})}
        self.configs["heldout"] = self.configs["train"]
        self.levels = {"train": level or 0, "heldout": level or 0, "easy": easy_level}
        self.verify_timeout_s, self.verify_workers = float(verify_timeout_s), verify_workers
        self._splits: dict[str, list[Problem]] = {}
        self._entries: dict[str, dict] = {}  # problem id -> reasoning-gym's own entry (what score_answer reads)
        self._pool = None
        self._counts = dict(answers=0, no_answer=0, scored=0, partial_credit=0, timeouts=0, errors=0)

    def _config(self, factory, level: int | None, options: dict) -> dict:
        """The dataset options of one difficulty: the curriculum at `level`, then `options`."""
        config = {}
        if level is not None:
            if not factory.has_curriculum(self.dataset):
                raise ValueError(f"rg:{self.dataset} has no curriculum: drop --task-arg level (and easy_level), "
                                 "set its config fields instead")
            curriculum = factory.create_curriculum(self.dataset)
            top = max(len(attr.levels) for attr in curriculum.attributes.values()) - 1
            if not isinstance(level, int) or isinstance(level, bool) or not 0 <= level <= top:
                raise ValueError(f"rg:{self.dataset}: level must be a whole number 0..{top}, got {level!r}")
            curriculum.set_global_level(level)
            config = {k: v for k, v in vars(curriculum.generate_configuration()).items() if k not in ("seed", "size")}
        config.update(options)
        fields = set(vars(factory.DATASETS[self.dataset][1]())) - {"seed", "size"}
        unknown = sorted(set(options) - fields)
        if unknown:
            raise ValueError(f"task rg:{self.dataset} has no option {unknown}: its dataset options are "
                             f"{sorted(fields)}, "
                             "and n_train, n_heldout, n_easy, seed, level, easy_level, instruction, verify_timeout_s, "
                             "verify_workers. Set one with --task-arg KEY=VALUE")
        try:
            factory.create_dataset(self.dataset, size=1, seed=0, **config)
        except Exception as err:  # the dataset's own validation: an option out of range
            raise ValueError(f"task rg:{self.dataset}: its options {config} are refused: "
                             f"{type(err).__name__}: {err}") from err
        return _json_safe(config)

    # --- problems ---------------------------------------------------------------------------
    def problems(self, split: str) -> list[Problem]:
        if split not in SPLIT_OFFSET:
            raise ValueError(f"unknown split {split!r}: use 'train', 'heldout' or 'easy'")
        for name in SPLIT_OFFSET:  # in order: a later split drops the questions of earlier ones
            if name not in self._splits:
                self._splits[name] = self._make(name)
            if name == split:
                return list(self._splits[split])

    def _make(self, split: str) -> list[Problem]:
        factory, _ = _import()
        taken = {p.id for problems in self._splits.values() for p in problems}
        n, start = self.sizes[split], (self.seed * len(SPLIT_OFFSET) + SPLIT_OFFSET[split]) * SEED_RANGE
        problems = []
        for attempt in range(4):  # a small dataset repeats questions: draw more until n are new
            if len(problems) >= n:
                break
            size = (n - len(problems)) * 2 ** attempt + 4
            dataset = factory.create_dataset(self.dataset, size=size, seed=start, **self.configs[split])
            start += size  # item i is drawn from seed + i: the next draw takes fresh seeds
            for entry in dataset:
                pid = f"{self.dataset}-{hashlib.sha1(entry['question'].encode()).hexdigest()[:12]}"
                if pid in taken or len(problems) >= n:
                    continue
                taken.add(pid)
                self._entries[pid] = entry
                problems.append(self._problem(pid, entry, split))
        if len(problems) < n:
            logger.warning("rg:%s: only %d distinct %s problems (asked for %d)", self.dataset, len(problems), split, n)
        return problems

    def _problem(self, pid: str, entry: dict, split: str) -> Problem:
        question = entry["question"].strip()
        prompt = f"{question}\n\n{self.instruction}" if self.instruction else question
        answer = "" if entry.get("answer") is None else str(entry["answer"])
        return Problem(id=pid, prompt=prompt, answer=answer, difficulty=self.levels[split], split=split,
                       meta={"question": question, "entry": _json_safe(entry)})

    def corpus(self, n: int, seed: int) -> list[tuple[str, str]]:
        raise ValueError("reasoning-gym tasks have no pretraining corpus: train a real pretrained model")

    def question_of(self, problem: Problem) -> str:
        """The question alone (the prompt less the instruction): what a dataset keyed by question holds."""
        return problem.meta.get("question") or problem.prompt

    def reference_solution(self, problem: Problem) -> str | None:
        """The dataset's own answer as a solution (for move-sequence tasks, such as tower_of_hanoi or
        sokoban, the answer is the whole sequence of moves); None where the dataset has none."""
        return f"<answer>{problem.answer}</answer>" if problem.answer.strip() else None

    # --- verification -----------------------------------------------------------------------
    @property
    def verifier_stats(self) -> dict[str, int]:
        return {**self._counts, "worker_restarts": self._pool.restarts if self._pool else 0}

    def verify(self, problem: Problem, solution: str) -> Verdict:
        return self.verify_many([(problem, solution)])[0]

    def verify_many(self, items: list[tuple[Problem, str]]) -> list[Verdict]:
        """1.0 only where score_answer is exactly 1.0; a missing answer, partial credit, a hang or
        an error all score 0 (the last two are counted and logged)."""
        self._counts["answers"] += len(items)
        answers = [self._extract(text) if isinstance(text, str) else None for _, text in items]
        todo = [i for i, answer in enumerate(answers) if answer is not None]
        self._counts["no_answer"] += len(items) - len(todo)
        verdicts = [Verdict(0.0, answer) for answer in answers]
        if not todo:
            return verdicts
        options = json.dumps(self.configs["train"], sort_keys=True)  # the scorer of the hard problems
        outcomes = self._workers().map([(self.dataset, options, answers[i], self._entry(items[i][0])) for i in todo])
        for i, (status, value) in zip(todo, outcomes):
            if status == "ok":
                self._counts["scored"] += 1
                self._counts["partial_credit"] += 0.0 < value < 1.0
                verdicts[i] = Verdict(1.0 if value == 1.0 else 0.0, answers[i])
                continue
            key = "timeouts" if status == "timeout" else "errors"
            self._counts[key] += 1
            what = f"no score within {self.verify_timeout_s:g} s" if status == "timeout" else f"error {value}"
            logger.warning("rg:%s scorer: %s for problem %s; scored 0 (%d %s so far)", self.dataset, what,
                           items[i][0].id, self._counts[key], key)
        return verdicts

    def _entry(self, problem: Problem) -> dict:
        return self._entries.get(problem.id) or problem.meta.get("entry") or {
            "question": problem.prompt, "answer": problem.answer, "metadata": {}}

    def _workers(self):
        if self._pool is None:
            from prefixrl.timeout_pool import TimeoutPool

            warmup = (self.dataset, json.dumps(self.configs["train"], sort_keys=True), None, None)  # imports, builds
            self._pool = TimeoutPool(score_answer, workers=self.verify_workers, timeout_s=self.verify_timeout_s,
                                     warmup=warmup)
        return self._pool

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_pool": None, "_extract": None}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._extract = _import()[1]
