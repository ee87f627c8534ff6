"""`mines`: a walk on digit pairs where half the moves at every state step on a mine, and any
walk that avoids every mine is correct (many correct solutions per problem).

    prompt     "37 16:"                          start pair (a, b) = (3, 7), then the number of moves
    solution   " D71/15 D15/14 ... C23/0 =23."  moves; each writes the new pair and the moves left
    moves      A, B, C, D: (a, b) -> (b, (a + k) % 10) with k = 1, 3, 6, 8
    safe       the new digit c = (a + k) % 10 lies in b's window: the five digits WINDOW[b],
               WINDOW[b] + 1, ..., WINDOW[b] + 4 (mod 10), WINDOW a fixed table of the task

The four new digits pair up as antipodes (a+1, a+6) and (a+3, a+8), and a window of five
consecutive digits holds exactly one of two antipodes, so every state has exactly two safe moves
and two mines: a walk of n moves has 2^n correct solutions, and a policy that picks moves at random
survives with 2^-n.

Why a table of windows: with additive moves, any window that shifts linearly with b (say "within 2
of b") reduces the walk to one on a - b, where a fixed move pattern survives from half the starts
(always A did); `shortcuts` measures this, and this table (the best of 400 random ones) leaves a
move pattern of period <= 4 that survives 15 moves from about 10% of the starts.

Why this design (README, Tasks): on `chain` a correct walk is unique, so every PrefixRL reward is
for reproducing a trace's tail, which SFT on the trace copies directly. Here a trace's choices are
one of 2^n safe walks: imitating its choices is not what is rewarded, avoiding the mines is, and a
trace shows each state's safe move only as one choice among two (never which two moves are mines).
RL from prefixes sees its own safe and unsafe moves at the states of the trace's tail and the
reward tells them apart. Each step is local (a new digit is a fixed function of one digit, as in
`chain`), and the safety rule depends only on the current pair, so what is learned from late
states (a prefix) applies at early ones: the mechanism back-generalization needs.

The corpus shows the rule faintly (a move is drawn among the safe ones with probability
`rule_bias`, else among all four), as `chain`'s does, and the base model must compute the rule
faintly for RL to sharpen it (`chain`'s lesson). Measured on the shipped base (`builtin:mines`,
README): it executes a move right 99.95% of the time and puts 0.59 on the safe moves, so a hard
problem (15-16 moves) succeeds with about 0.59^n: pass@1 3e-4, pass@512 = 0 on about 86%, and a
trace within 2,500 attempts on about 43% of those. Its last 800 pretraining steps drew the corpus
at rule_bias 0.4 (a stronger signal: 1,700 steps at 0.2 had left it at 0.50, no rule); `chance`
at the default 0.2 (0.6 a move) is the rate it follows.
"""

from __future__ import annotations

import itertools
import random
import re

from prefixrl.tasks import Problem, Verdict
from prefixrl.tasks.chain import walk_splits

MOVES = {"A": 1, "B": 3, "C": 6, "D": 8}
# ASCII: int() reads other scripts' digits. A count is written without leading zeros: one spelling.
_SOLUTION = re.compile(r"((?: [ABCD]\d\d/(?:0|[1-9]\d*))*) =(\d\d)\.", re.ASCII)
_MOVE = re.compile(r" ([ABCD])(\d)(\d)/(0|[1-9]\d*)", re.ASCII)
_PARTIAL = re.compile(r"((?: [ABCD]\d\d/(?:0|[1-9]\d*))*) ", re.ASCII)  # the moves a space ends (or none)
SPLITS = ("train", "heldout", "validation", "easy")


def move(a: int, b: int, op: str) -> tuple[int, int]:
    return b, (a + MOVES[op]) % 10


WINDOW = (2, 4, 9, 8, 4, 9, 1, 9, 2, 8)


def safe(a: int, b: int, op: str) -> bool:
    """The move's new digit lies in b's window of five safe digits."""
    return (a + MOVES[op] - WINDOW[b]) % 10 < 5


def safe_moves(a: int, b: int) -> str:
    return "".join(op for op in MOVES if safe(a, b, op))


def walk(start: int, ops: str) -> tuple[list[tuple[int, int]], bool]:
    """The pairs visited by `ops` from `start` and whether every move was safe."""
    (a, b), pairs, ok = divmod(start, 10), [], True
    for op in ops:
        ok = ok and safe(a, b, op)
        a, b = move(a, b, op)
        pairs.append((a, b))
    return pairs, ok


class MinesTask:
    name = "mines"
    strategy_markers: dict[str, str] = {}  # one procedure; the choices between safe moves are free

    def __init__(self, hard: tuple[int, ...] = (15, 16), easy: tuple[int, ...] = (2, 3, 4, 5),
                 max_moves: int = 16, rule_bias: float = 0.2, n_train: int = 64, n_heldout: int = 64,
                 n_validation: int = 32, n_easy: int = 64, seed: int = 0):
        self.hard, self.easy, self.max_moves, self.rule_bias = tuple(hard), tuple(easy), max_moves, rule_bias
        self.sizes = {"train": n_train, "heldout": n_heldout, "validation": n_validation, "easy": n_easy}
        self.seed = seed
        if n_train + n_heldout + n_validation > 100 * len(self.hard):
            raise ValueError(f"mines has only {100 * len(self.hard)} hard problems: "
                             "lower n_train/n_heldout/n_validation")
        if max(self.hard) > max_moves:
            raise ValueError(f"hard problems of {max(self.hard)} moves are longer than the corpus's "
                             f"max_moves={max_moves}: keep hard problems inside the pretraining range")

    def problems(self, split: str) -> list[Problem]:
        """Hard problems are split train / heldout / validation without overlap (validation: hard
        problems neither trained on nor held out, for tuning a baseline such as SFT's epochs)."""
        if split not in self.sizes:
            raise ValueError(f"unknown split {split!r}: use one of {SPLITS}")
        walks = walk_splits(self.seed, self.hard, self.easy, self.sizes)[split]
        return [self._problem(s, n, split) for s, n in walks]

    def _problem(self, start: int, n_moves: int, split: str) -> Problem:
        ops, (a, b), before = "", divmod(start, 10), None
        for _ in range(n_moves):  # a reference walk: the first safe move at every state
            ops += self._safe_ops(a, b, before)[0]
            before, (a, b) = a, move(a, b, ops[-1])
        return Problem(id=f"{self.name}-{start:02d}-{n_moves}", prompt=f"{start:02d} {n_moves}:",
                       answer=f"{a}{b}", difficulty=n_moves, split=split, meta={"reference": ops})

    def chance(self, problem: Problem) -> float:
        """Success probability of a policy that executes every move right and decides as its corpus
        does: among the safe moves with probability rule_bias, among all four otherwise."""
        return (0.5 + self.rule_bias / 2) ** problem.difficulty

    def verify(self, problem: Problem, solution: str) -> Verdict:
        """Correct iff every move is safe, every written pair and count is right, the walk has
        exactly the problem's number of moves, and the stated answer is the final pair. The final
        pair differs between correct walks: any safe walk's own end is its answer."""
        match = _SOLUTION.fullmatch(solution.rstrip())
        if match is None:
            return Verdict(0.0, None)
        moves, answer = match.groups()
        ok, (a, b), left = self._follow(problem, moves)
        return Verdict(float(ok and left == 0 and answer == f"{a}{b}"), answer)

    def dead_end(self, problem: Problem, partial: str) -> bool:
        """True when no continuation of `partial` can be correct: one of its complete moves (those a
        space follows) is already unsafe or wrongly written. Lets screening and collection stop
        such a sample early (generate_fast); verify's own walk, so never wrong."""
        match = _PARTIAL.match(partial)
        return match is not None and not self._follow(problem, match.group(1))[0]

    def _follow(self, problem: Problem, moves: str) -> tuple[bool, tuple[int, int], int]:
        """Walk the written moves: (False, ...) at the first that does not survive, writes a wrong
        pair or count, or goes past the move budget; else (True, final pair, moves left)."""
        try:
            start, n_moves = (int(x) for x in problem.prompt.rstrip(":").split())
        except ValueError:
            return False, (0, 0), -1
        (a, b), left, before = divmod(start, 10), n_moves, None
        for index, (op, x, y, written_left) in enumerate(_MOVE.findall(moves)):
            if left == 0 or not self.survives(problem.prompt, index, a, b, op, before):
                return False, (a, b), left
            before, (a, b), left = a, move(a, b, op), left - 1
            if (int(x), int(y)) != (a, b) or int(written_left) != left:
                return False, (a, b), left
        return True, (a, b), left

    def survives(self, prompt: str, index: int, a: int, b: int, op: str, before: int | None = None) -> bool:
        """Whether move `op`, the walk's move number `index`, from pair (a, b) is safe (the verdict's
        one rule; `gambles` and `minefield` replace it). `before`: the digit before the pair (the
        previous pair was (before, a)); None at the first move."""
        return safe(a, b, op)

    def shortcuts(self, problems: list[Problem]) -> dict[str, dict[str, float]]:
        """Share of problems that a move pattern blind to the pairs would solve: a constant move,
        or a pattern repeating with period 2 to 4 (a policy could learn such a pattern instead of
        the rule). "constant" and "periodic" count a problem if any such pattern, cut to its length,
        is a safe walk; "best pattern" is the share that the single best pattern solves (what one
        learned habit would get: any-of-340 per problem is not something a policy can learn)."""
        patterns = ["".join(pat) for period in (1, 2, 3, 4) for pat in itertools.product(MOVES, repeat=period)]
        solved = {"constant": 0, "periodic": 0}
        per_pattern = [0] * len(patterns)
        for p in problems:
            n = int(p.prompt.rstrip(":").split()[1])
            ok = [self._survives_walk(p.prompt, (pat * n)[:n]) for pat in patterns]
            solved["constant"] += any(ok[:len(MOVES)])
            solved["periodic"] += any(ok)
            per_pattern = [count + hit for count, hit in zip(per_pattern, ok)]
        solved["best pattern"] = max(per_pattern)
        return {"safe walk": {k: v / len(problems) for k, v in solved.items()}}

    def _safe_ops(self, a: int, b: int, before: int | None) -> str:
        """The rule's safe moves at a state (for the reference walks and the corpus; `minefield`
        replaces it, `gambles` keeps `mines`' window: its corpus is the `mines` base's)."""
        return safe_moves(a, b)

    def _survives_walk(self, prompt: str, ops: str) -> bool:
        """Whether every move of `ops` from the prompt's start survives (the verdict's rule alone)."""
        (a, b), before = divmod(int(prompt.split()[0]), 10), None
        for index, op in enumerate(ops):
            if not self.survives(prompt, index, a, b, op, before):
                return False
            before, (a, b) = a, move(a, b, op)
        return True

    def corpus(self, n: int, seed: int) -> list[tuple[str, str]]:
        """Worked attempts: the format and the arithmetic always, the rule faintly (a move is drawn
        among the safe ones with probability rule_bias, else among all four)."""
        rng = random.Random(seed)
        pairs = []
        for _ in range(n):
            start, n_moves = rng.randrange(100), rng.randint(1, self.max_moves)
            (a, b), steps, before = divmod(start, 10), [], None
            for left in range(n_moves - 1, -1, -1):
                op = rng.choice(self._safe_ops(a, b, before) if rng.random() < self.rule_bias else "ABCD")
                before, (a, b) = a, move(a, b, op)
                steps.append(f" {op}{a}{b}/{left}")
            pairs.append((f"{start:02d} {n_moves}:", "".join(steps) + f" ={a}{b}."))
        return pairs
