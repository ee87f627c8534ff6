"""`minefield`: the `mines` walk where which two moves are mines depends on the last *three* digits
of the walk, by a random table of 1,100 states: a rule too large to read off a few traces.

    prompt     "37 12:"                          as `mines`: start pair, then the number of moves
    solution   " D71/11 D15/10 ... C23/0 =23."  as `mines`: moves, each with its pair and moves left
    state      (p, a, b): the current pair (a, b) and the digit p before it (the previous pair was
               (p, a)); at the first move p is the start's own slot, 10 (1,100 states in all)
    safe       one move of each antipode pair, (A or C) and (B or D), chosen per state by `FIELD`,
               a fixed random table of the task: every state has two safe moves and two mines, a
               walk of n moves has 2^n correct solutions, and a random walk survives with 2^-n

Why this design (README, Tasks: `minefield`). The `mines` probe measured that SFT on 32 traces
took held-out pass@1 from 3e-4 to 0.23: its rule is a 10-entry window table, and 32 traces x 15
moves label it many times over. `gambles` hid the rule behind luck, which drowned the reward's
signal too. Here the reward's signal is as clean as in `mines` (every move of a correct walk is
safe), but the rule is a table of 1,100 states and 2 bits each: 64 traces of 11-13 moves label
about half of its states once, and SFT cannot know the rest. On-policy RL from a trace's prefix
walks into states the trace never visited and is paid for its safe moves there; the table holds at
every state of every problem, so what is learned near the end of the training problems' walks
applies to their starts and to held-out problems (back-generalization), if enough states are
learned. That is AdaBack's separation (arXiv 2506.18110: SFT fails for sample complexity, RL for
sparse reward), in a form a 0.65 M model can execute: every step is `mines`' step.

The base is `builtin:mines`'s model, unchanged (`builtin:minefield` resolves to it): it executes
the format at 99.95% and knows nothing of this table (its faint `mines` rule is a coin here), so it
decides at about 1/2 a move: hard problems (11-13 moves) succeed with about 2^-12.
"""

from __future__ import annotations

import random

from prefixrl.tasks.mines import MinesTask

START = 10  # p at the first move: the start pair has no digit before it


def _field(seed: int = 2026) -> dict[tuple[int, int, int], str]:
    """Per state (p, a, b), its two safe moves: A or C (new digit a+1 or a+6), and B or D (a+3, a+8)."""
    rng = random.Random(seed)
    return {(p, a, b): rng.choice("AC") + rng.choice("BD") for p in range(11) for a in range(10) for b in range(10)}


FIELD = _field()


def field_safe(p: int, a: int, b: int, op: str) -> bool:
    return op in FIELD[p, a, b]


class MinefieldTask(MinesTask):
    name = "minefield"

    def __init__(self, hard: tuple[int, ...] = (11, 12, 13), easy: tuple[int, ...] = (2, 3, 4, 5),
                 max_moves: int = 16, rule_bias: float = 0.0, n_train: int = 128, n_heldout: int = 64,
                 n_validation: int = 32, n_easy: int = 64, seed: int = 0):
        super().__init__(hard=hard, easy=easy, max_moves=max_moves, rule_bias=rule_bias, n_train=n_train,
                         n_heldout=n_heldout, n_validation=n_validation, n_easy=n_easy, seed=seed)

    def survives(self, prompt: str, index: int, a: int, b: int, op: str, before: int | None = None) -> bool:
        """Safe by the field at (before, a, b); the first move's `before` is the start's slot."""
        return field_safe(START if before is None else before, a, b, op)

    def _safe_ops(self, a: int, b: int, before: int | None) -> str:
        """The field's two safe moves at (before, a, b): the reference walks take the first, the
        corpus (rule_bias, default 0: the `mines` base never saw this table) draws among them."""
        return FIELD[START if before is None else before, a, b]
