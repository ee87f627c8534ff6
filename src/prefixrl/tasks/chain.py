"""`chain`: a walk on digit pairs where every move must obey the declared strategy's rule.

    prompt     "37 17:"                         start pair (a, b) = (3, 7), then the number of moves
    solution   " P R79/16 R93/15 ... =07."      a strategy marker, then moves; each move writes the
                                                new pair and the moves left
    moves      L: (a, b) -> (b, (a + 1) % 10)      R: (a, b) -> (b, (a + 6) % 10)
    strategies P ("order"): L if a >= b else R
               Q ("carry"): L if a + b >= 10 else R

A solution is correct when every move follows the rule of the strategy it declared and the
arithmetic is right. Each step is local, so a tiny model learns to *execute* moves reliably (each
new digit is a fixed function of one digit; a first version that added two digits was executed
right only 82% of the time after 4,000 pretraining steps). Which move is right it knows only
faintly: its pretraining corpus follows the declared rule at a fifth of the moves (`rule_bias`)
and flips a coin at the others (90% of walks declare P, 10% Q), so the base model follows the
rule at about 3/5 of its moves and succeeds with about (3/5)^moves: pass@512 is near 0 at 16-18
moves, and rejection sampling still finds traces.

Why a faint rule rather than none: RL sharpens what a model can already compute and builds a new
skill slowly. With a corpus of coin flips (rule_bias 0), neither PrefixRL nor RL learned either
rule in 90-120 steps (prefixed reward flat at 0.06-0.11, at lr 1e-4 and 3e-4); every gain measured
on that design was a shortcut. With the rule faintly there, a continuation from a prefix is a few
right decisions in a row, which happen often enough for RL to sharpen them, while an unprefixed
problem needs 16-18 in a row. Both rules depend only on the current pair, so what RL learns about
late moves (from a prefix) applies to early moves too: the mechanism back-generalization needs.

The rules must stay rules along a walk: no state-independent shortcut. A first Q, "L if a + b is
even", was one: R keeps a + b's parity and L flips it, so every Q walk was "L once if a + b is
even, then R forever", and RL learned that one decision instead of a rule (`shortcuts` measures
this; tests/test_tasks.py checks it). The two rules agree on half the pairs.
"""

from __future__ import annotations

import random
import re

from prefixrl.tasks import Problem, Verdict, check_sizes

_SOLUTION = re.compile(r" ([PQ])((?: [LR]\d\d/\d+)*) =(\d\d)\.", re.ASCII)  # ASCII: int() reads other scripts' digits
_MOVE = re.compile(r" ([LR])(\d)(\d)/(\d+)", re.ASCII)
_PARTIAL = re.compile(r" ([PQ])((?: [LR]\d\d/\d+)*) ", re.ASCII)  # the marker and the moves a space ends

RULES = {
    "P": lambda a, b: "L" if a >= b else "R",
    "Q": lambda a, b: "L" if a + b >= 10 else "R",
}


def move(a: int, b: int, op: str) -> tuple[int, int]:
    return b, (a + (6 if op == "R" else 1)) % 10


def walk_splits(seed: int, hard: tuple[int, ...], easy: tuple[int, ...], sizes: dict[str, int]
                ) -> dict[str, list[tuple[int, int]]]:
    """(start pair, moves) of each split of a walk task (`chain`, `mines`): 100 starts x the hard
    lengths, shuffled once by the seed and cut in a fixed order, training, held-out, then validation
    (tunes the SFT baseline), so no two splits share a problem; the easy ones from their own list."""
    rng = random.Random(seed)
    hard_walks = [(s, n) for s in range(100) for n in hard]
    easy_walks = [(s, n) for s in range(100) for n in easy]
    rng.shuffle(hard_walks)
    rng.shuffle(easy_walks)
    splits, start = {"easy": easy_walks[:sizes["easy"]]}, 0
    for name in ("train", "heldout", "validation"):
        splits[name], start = hard_walks[start:start + sizes[name]], start + sizes[name]
    return splits


def rule_walk(start: int, n_moves: int, strategy: str) -> tuple[str, str]:
    """The moves (e.g. "LRRL...") and the final pair of the walk that follows `strategy`'s rule."""
    (a, b), moves = divmod(start, 10), ""
    for _ in range(n_moves):
        moves += RULES[strategy](a, b)
        a, b = move(a, b, moves[-1])
    return moves, f"{a}{b}"


def _follow(problem: Problem, strategy: str, moves: str) -> tuple[bool, tuple[int, int], int]:
    """Walk the written moves from the problem's start: (False, ...) at the first that breaks the
    declared strategy's rule, writes a wrong pair or count, or goes past the move budget; else
    (True, final pair, moves left)."""
    start, n_moves = problem.prompt.rstrip(":").split()
    (a, b), left = divmod(int(start), 10), int(n_moves)
    for op, x, y, written_left in _MOVE.findall(moves):
        if left == 0 or op != RULES[strategy](a, b):
            return False, (a, b), left
        (a, b), left = move(a, b, op), left - 1
        if (int(x), int(y)) != (a, b) or int(written_left) != left:
            return False, (a, b), left
    return True, (a, b), left


class ChainTask:
    name = "chain"
    strategy_markers = {"order": " P ", "carry": " Q "}

    def __init__(self, hard: tuple[int, ...] = (16, 17, 18), easy: tuple[int, ...] = (2, 3, 4, 5),
                 max_moves: int = 18, share_q: float = 0.1, rule_bias: float = 0.2,
                 n_train: int = 128, n_heldout: int = 64, n_easy: int = 64, n_validation: int = 32, seed: int = 0):
        self.hard, self.easy, self.max_moves, self.share_q = tuple(hard), tuple(easy), max_moves, share_q
        self.rule_bias = rule_bias
        self.sizes = {"train": n_train, "heldout": n_heldout, "easy": n_easy, "validation": n_validation}
        self.seed = seed
        check_sizes(self.name, self.sizes)
        if n_train + n_heldout + n_validation > 100 * len(self.hard):
            raise ValueError(f"chain has only {100 * len(self.hard)} hard problems: lower n_train/n_heldout/n_validation")

    def problems(self, split: str) -> list[Problem]:
        if split not in self.sizes:
            raise ValueError(f"unknown split {split!r}: use 'train', 'heldout', 'easy' or 'validation'")
        chosen = walk_splits(self.seed, self.hard, self.easy, self.sizes)[split]
        return [self._problem(start, n, split) for start, n in chosen]

    def _problem(self, start: int, n_moves: int, split: str) -> Problem:
        _, answer = rule_walk(start, n_moves, "P")  # the gold answer under strategy P (Q ends elsewhere, also correct)
        return Problem(id=f"chain-{start:02d}-{n_moves}", prompt=f"{start:02d} {n_moves}:",
                       answer=answer, difficulty=n_moves, split=split)

    def chance(self, problem: Problem) -> float:
        """Success probability of a policy that executes every move right and decides as its corpus
        does: by the declared rule at rule_bias of the moves, by a coin flip at the others."""
        return (0.5 + self.rule_bias / 2) ** problem.difficulty

    def verify(self, problem: Problem, solution: str) -> Verdict:
        match = _SOLUTION.fullmatch(solution.rstrip())
        if match is None:
            return Verdict(0.0, None)
        strategy, moves, answer = match.groups()
        ok, (a, b), left = _follow(problem, strategy, moves)
        return Verdict(float(ok and left == 0 and answer == f"{a}{b}"), answer)

    def dead_end(self, problem: Problem, partial: str) -> bool:
        """True when no continuation of `partial` can be correct: one of its complete moves (those a
        space follows) already breaks the rule, the arithmetic or the count. Lets screening and
        collection stop such a sample early (generate_fast); verify's own walk, so never wrong."""
        match = _PARTIAL.match(partial)
        return match is not None and not _follow(problem, *match.groups())[0]

    def rule_share(self, problem: Problem, solution: str) -> float | None:
        """The share of a solution's moves that follow its declared strategy's rule, each judged at the
        pair the moves so far lead to (the digits it writes are not read): the per-decision skill that
        pass@1 amplifies to the power of the moves. None without a strategy marker or a move."""
        declared = re.match(r" ([PQ]) ", solution)
        ops = [op for op, *_ in _MOVE.findall(solution)][:problem.difficulty]
        if declared is None or not ops:
            return None
        (a, b), follows = divmod(int(problem.prompt.split()[0]), 10), 0
        for op in ops:
            follows += op == RULES[declared.group(1)](a, b)
            a, b = move(a, b, op)
        return follows / len(ops)

    def shortcuts(self, problems: list[Problem]) -> dict[str, dict[str, float]]:
        """Per strategy, how close its rule comes to a fixed pattern on these problems: share of
        distinct move strings, and share of problems whose moves after the first are constant or
        repeat with period 2 or 3 (a policy could learn such a pattern without reading the pairs)."""
        result = {}
        for strategy in RULES:
            walks = [rule_walk(*map(int, p.prompt.rstrip(":").split()), strategy)[0] for p in problems]
            tails = [w[1:] for w in walks]
            result[strategy] = {
                "distinct": len(set(walks)) / len(walks),
                "constant": sum(len(set(t)) == 1 for t in tails) / len(tails),
                "periodic": sum(any(t == (t[:p] * len(t))[:len(t)] for p in (1, 2, 3)) for t in tails) / len(tails),
            }
        return result

    def corpus(self, n: int, seed: int) -> list[tuple[str, str]]:
        """Worked attempts: the format and the arithmetic always, the rules faintly (a move follows the
        declared rule with probability rule_bias, else is a coin flip)."""
        rng = random.Random(seed)
        pairs = []
        for _ in range(n):
            start, n_moves = rng.randrange(100), rng.randint(1, self.max_moves)
            strategy = "Q" if rng.random() < self.share_q else "P"
            (a, b), steps = divmod(start, 10), []
            for left in range(n_moves - 1, -1, -1):
                follow = self.rule_bias > 0 and rng.random() < self.rule_bias  # no draw at 0: the coin-flip corpus, seed for seed
                op = RULES[strategy](a, b) if follow else rng.choice("LR")
                a, b = move(a, b, op)
                steps.append(f" {op}{a}{b}/{left}")
            pairs.append((f"{start:02d} {n_moves}:", f" {strategy}" + "".join(steps) + f" ={a}{b}."))
        return pairs
