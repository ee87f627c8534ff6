"""`gambles`: the `mines` walk where one move at every state is *sure* and the other three are
gambles, each surviving or not by the problem's luck. A weak model's correct walks are mostly lucky.

    prompt     "37 16:"                          as `mines`: start pair, then the number of moves
    solution   " D71/15 D15/14 ... C23/0 =23."  as `mines`: moves, each with its pair and moves left
    sure       one move per pair, a fixed table of the task (`SURE`): it never fails
    gambles    the other three: whether one survives is a coin of the problem (its prompt), the move's
               index, the pair and the move (`survives`); the same walk always gets the same verdict

Why this design (README, Tasks: `gambles`): the paper's traces are rejection-sampled from a base
with pass@512 = 0, so they are correct by luck far more than by skill. `chain` and `mines` cannot
show that: every step of a correct walk there is a lesson (the unique rule's move; a safe move of a
shared table), so SFT on the traces teaches what reward pays for (measured: SFT on 32 `mines`
traces took held-out pass@1 from 3e-4 to 0.23). Here the base picks the sure move with about 0.2,
so a correct walk's moves are about 1/3 sure and 2/3 lucky gambles, and the gambles' luck is the
problem's own: imitating a trace teaches its lucky moves, which help on that problem only. On-policy
RL from a trace's prefix sees its own sure and gamble moves at the states of the tail, and the
reward pays the sure ones twice as often: the rule it learns (the sure table) is not the one the
prefix shows (mostly gambles), and it applies at every state of every problem (back-generalization,
with a learned strategy that differs from the prefix's, as the paper reports).

The base is `builtin:mines`'s model, unchanged (same format; the walk is the same, only the
verdict differs): its moves follow the `mines` window faintly, and the sure move is a move outside
the window, so the base's prior on it is what its corpus gave those moves (about 0.2).
"""

from __future__ import annotations

import zlib

from prefixrl.tasks import Problem
from prefixrl.tasks.mines import MOVES, MinesTask, move, safe


def _sure(a: int, b: int) -> str:
    """Outside the `mines` window (the base prefers window moves), alternating between the two
    such moves by the parity of a so that no letter is sure much more often than another."""
    outside = [op for op in MOVES if not safe(a, b, op)]
    return outside[a % 2]


SURE = {(a, b): _sure(a, b) for a in range(10) for b in range(10)}


def survives(prompt: str, index: int, a: int, b: int, op: str) -> bool:
    """The sure move always; a gamble by a coin fixed by the problem, the move's index and pair."""
    if op == SURE[a, b]:
        return True
    return zlib.crc32(f"{prompt}|{index}|{a}{b}|{op}".encode()) & 1 == 1


class GamblesTask(MinesTask):
    name = "gambles"

    def _problem(self, start: int, n_moves: int, split: str) -> Problem:
        ops, (a, b) = "", divmod(start, 10)
        for _ in range(n_moves):  # the reference walk: the sure move at every pair
            ops += SURE[a, b]
            a, b = move(a, b, ops[-1])
        return Problem(id=f"gambles-{start:02d}-{n_moves}", prompt=f"{start:02d} {n_moves}:",
                       answer=f"{a}{b}", difficulty=n_moves, split=split, meta={"reference": ops})

    def chance(self, problem: Problem, sure: float = 0.2) -> float:
        """Success probability of a policy that executes every move right and picks the sure move
        with probability `sure` (a gamble otherwise, which survives half the time)."""
        return (sure + (1 - sure) / 2) ** problem.difficulty

    def survives(self, prompt: str, index: int, a: int, b: int, op: str, before: int | None = None) -> bool:
        """mines' verdict with this rule: every move must survive (the sure one, or a lucky gamble)."""
        return survives(prompt, index, a, b, op)

    def shortcuts(self, problems: list[Problem]) -> dict[str, dict[str, float]]:
        """Share of the sure moves that each letter is: a letter sure far more often than 1/4 would
        be a shortcut (always play it)."""
        counts = {op: sum(s == op for s in SURE.values()) / len(SURE) for op in MOVES}
        return {"sure move": counts}
