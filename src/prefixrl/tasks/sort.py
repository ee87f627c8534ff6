"""`sort`: sort distinct digits with the fewest adjacent swaps, writing every swap.

    prompt     "418236 8:"                      digits, then the swap budget (= their inversions)
    solution   " 1:148236/7 4:142836/6 ... =123468."
               each step: the swap position (1-5), the new digits, the swaps left

Every step is local (exchange two neighbours, count down), and the only way to finish sorted
within the budget is to swap a descending neighbour pair at *every* step: a decision the base
model is never shown, because its pretraining corpus holds swaps at random positions. A random
policy succeeds with the product over steps of (#descents / 5): about 4e-4 at 7 inversions and
2e-4 at 8, so the hard split (7-8 inversions) has pass@512 near 0 while 2,500 attempts often find
a trace. Any order of fixing descents is correct, so there are many correct traces per problem.
"""

from __future__ import annotations

import itertools
import random
import re
from functools import lru_cache

from prefixrl.tasks import Problem, Verdict, check_sizes

_SOLUTION = re.compile(r"((?: [1-9]:\d+/\d+)*) =(\d+)\.", re.ASCII)  # ASCII: int() reads other scripts' digits
_STEP = re.compile(r" ([1-9]):(\d+)/(\d+)", re.ASCII)
_PARTIAL = re.compile(r"((?: [1-9]:\d+/\d+)*) ", re.ASCII)  # the steps a space ends (or none)


def inversions(digits: str) -> int:
    return sum(a > b for a, b in itertools.combinations(digits, 2))


def swap(digits: str, pos: int) -> str:
    """Exchange the digits at 1-based positions pos and pos+1."""
    i = pos - 1
    return digits[:i] + digits[i + 1] + digits[i] + digits[i + 2:]


def _follow(problem: Problem, steps: str) -> tuple[bool, str, int]:
    """Do the written swaps from the problem's digits: (False, ...) at the first that is out of range,
    past the budget or wrongly written; else (True, the digits, swaps left)."""
    digits, budget = problem.prompt.rstrip(":").split()
    state, left = digits, int(budget)
    for pos, written, written_left in _STEP.findall(steps):
        pos = int(pos)
        if pos >= len(state) or left == 0:
            return False, state, left
        state, left = swap(state, pos), left - 1
        if written != state or int(written_left) != left:
            return False, state, left
    return True, state, left


@lru_cache(maxsize=None)
def chance(digits: str) -> float:
    """Success probability of a policy that executes every swap right but picks positions at random."""
    if inversions(digits) == 0:
        return 1.0
    n = len(digits) - 1
    return sum(chance(swap(digits, p)) for p in range(1, n + 1) if digits[p - 1] > digits[p]) / n


class SortTask:
    name = "sort"
    strategy_markers: dict[str, str] = {}

    def __init__(self, n_digits: int = 6, hard: tuple[int, ...] = (7, 8), easy: tuple[int, ...] = (1, 2, 3, 4),
                 n_train: int = 128, n_heldout: int = 64, n_easy: int = 64, n_validation: int = 32, seed: int = 0):
        self.n_digits, self.hard, self.easy = n_digits, tuple(hard), tuple(easy)
        self.sizes = {"train": n_train, "heldout": n_heldout, "easy": n_easy, "validation": n_validation}
        self.seed = seed
        check_sizes(self.name, self.sizes)
        self._by_inversions: dict[int, list[tuple[int, ...]]] = {}
        for ranks in itertools.permutations(range(n_digits)):
            self._by_inversions.setdefault(inversions(ranks), []).append(ranks)

    # --- problems -------------------------------------------------------------------------
    def _random_digits(self, rng: random.Random, n_inv: int) -> str:
        ranks = rng.choice(self._by_inversions[n_inv])
        values = sorted(rng.sample("0123456789", self.n_digits))
        return "".join(values[r] for r in ranks)

    def problems(self, split: str) -> list[Problem]:
        if split not in self.sizes:
            raise ValueError(f"unknown split {split!r}: use 'train', 'heldout', 'easy' or 'validation'")
        rng = random.Random(self.seed)
        seen: set[str] = set()
        out: dict[str, list[Problem]] = {s: [] for s in self.sizes}
        for s in ("train", "heldout", "easy", "validation"):  # fixed order: splits never share a problem
            levels = self.easy if s == "easy" else self.hard
            while len(out[s]) < self.sizes[s]:
                digits = self._random_digits(rng, rng.choice(levels))
                if digits in seen:
                    continue
                seen.add(digits)
                n_inv = inversions(digits)
                out[s].append(Problem(id=f"sort-{digits}", prompt=f"{digits} {n_inv}:",
                                      answer="".join(sorted(digits)), difficulty=n_inv, split=s))
        return out[split]

    def chance(self, problem: Problem) -> float:
        return chance(problem.prompt.split()[0])

    # --- verification ---------------------------------------------------------------------
    def verify(self, problem: Problem, solution: str) -> Verdict:
        match = _SOLUTION.fullmatch(solution.rstrip())
        if match is None:
            return Verdict(0.0, None)
        answer = match.group(2)
        ok, state, left = _follow(problem, match.group(1))
        correct = ok and left == 0 and answer == state and state == "".join(sorted(state))
        return Verdict(float(correct), answer)

    def dead_end(self, problem: Problem, partial: str) -> bool:
        """True when no continuation of `partial` can be correct: a complete step (one a space follows)
        is already wrongly written, or the digits hold more inversions than swaps are left (a swap
        removes at most one). Lets screening and collection stop such a sample early (generate_fast)."""
        match = _PARTIAL.match(partial)
        if match is None:
            return False
        ok, state, left = _follow(problem, match.group(1))
        return not ok or inversions(state) > left

    # --- pretraining corpus -----------------------------------------------------------------
    def corpus(self, n: int, seed: int) -> list[tuple[str, str]]:
        rng = random.Random(seed)
        max_inv = max(self._by_inversions)
        pairs = []
        for _ in range(n):
            digits = self._random_digits(rng, rng.randint(1, max_inv - 3))
            budget = inversions(digits)
            steps, state = [], digits
            for left in range(budget - 1, -1, -1):
                pos = rng.randint(1, self.n_digits - 1)
                state = swap(state, pos)
                steps.append(f" {pos}:{state}/{left}")
            pairs.append((f"{digits} {budget}:", "".join(steps) + f" ={state}."))
        return pairs
