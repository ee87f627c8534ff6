"""verl's reward for the data `prefixrl export verl` writes: 1 if prefix + continuation is correct.

    custom_reward_function.path=DIR/reward.py custom_reward_function.name=compute_score

The export copies this file to DIR/reward.py; verl loads it by path, so it imports nothing from
its own folder. A prefixed problem's prompt ends with the prefix, so verl's `solution_str` (the
decoded response) is the policy's continuation only; the final answer may sit in the prefix or
in the continuation, so the prefix (extra_info["prefix"]) is prepended before verifying, exactly
as prefixrl's own reward does (objective.solution).

Verification is the task's own (`prefixrl.tasks`: the built-in tasks' exact checkers, math-verify
for math), so a run on verl and a run on prefixrl score alike. That needs prefixrl installed in
verl's environment; it is imported at the first call, so loading this file never fails.
"""

from __future__ import annotations

import json
from functools import lru_cache


@lru_cache(maxsize=None)
def _task(name: str, args: str = "{}"):
    try:
        from prefixrl.tasks import load_task
    except ImportError as err:
        raise ImportError("this reward verifies with prefixrl's task verifiers: `pip install prefixrl` "
                          "in the environment verl runs in") from err
    return load_task(name, **json.loads(args))


def compute_score(data_source: str, solution_str: str, ground_truth: str, extra_info: dict | None = None,
                  **kwargs) -> float:
    """1.0 if extra_info's prefix + solution_str solves the problem, else 0.0 (verl's signature;
    newer verl versions pass further keyword arguments, which are ignored)."""
    if not extra_info or "problem" not in extra_info:
        raise ValueError(f"a row of data source {data_source!r} has no prefixrl problem in extra_info: "
                         "this reward scores rows written by `prefixrl export verl`")
    task = _task(extra_info["task"], extra_info.get("task_args") or "{}")  # first: its ImportError says how to install prefixrl
    from prefixrl.objective import solution
    from prefixrl.tasks import Problem

    problem = Problem.from_dict(json.loads(extra_info["problem"]))
    return float(task.verify(problem, solution(extra_info.get("prefix") or "", solution_str)).reward)
