"""Prefix reliance per training problem (HiLL's measure): in training's evaluations, each training
problem's success with its prefixes next to its success without them.

A policy that has learned only to finish prefixed problems scores high with its prefixes and near
0 without; one whose learning has moved back to the unprefixed problem (back-generalization) scores
alike on both. Evaluated at the evaluation temperature on the training rows' own prefixed prompts
(`TrainConfig.reliance_n` samples each), recorded per problem in eval.jsonl:

    "reliance": {problem_id: {"prefixed": 0.81, "unprefixed": 0.12}, ...}
    "eval/reliance/prefixed_pass@1", "eval/reliance/unprefixed_pass@1", "eval/reliance/gap"
"""

from __future__ import annotations

from prefixrl.generate import Sampler, stable_seed
from prefixrl.tasks import Problem, Task, verify_all


def prefix_reliance(task: Task, sampler: Sampler, rows: list[dict], problems: dict[str, Problem],
                    unprefixed: dict[str, float], n: int, seed: int) -> dict:
    """Per problem that has prefixed rows and an unprefixed score: success from its prefixes (mean
    over its rows, n samples each; the reward scores prefix + continuation, as in training) and
    without (`unprefixed`: problem id -> pass@1 from the same evaluation). Returns the eval.jsonl
    fields above ({} when no problem has both)."""
    rows = list({(r["problem_id"], r["prefix"]): r for r in rows  # a small set is repeated to fill a batch
                 if r["prefixed"] and r["problem_id"] in unprefixed}.values())
    if not rows or n < 1:
        return {}
    batch = max(1, sampler.params.batch_size // n)
    successes: dict[str, list[float]] = {}
    for start in range(0, len(rows), batch):
        group = rows[start:start + batch]
        samples = sampler.generate([r["prompt"] for r in group], n, seed=stable_seed(seed, f"reliance:{start}"))
        for row, row_samples in zip(group, samples):
            problem = problems[row["problem_id"]]
            verdicts = verify_all(task, [(problem, row["prefix"] + s.text) for s in row_samples])
            successes.setdefault(row["problem_id"], []).append(sum(v.reward > 0 for v in verdicts) / n)
    per_problem = {pid: {"prefixed": sum(values) / len(values), "unprefixed": unprefixed[pid]}
                   for pid, values in successes.items()}
    mean = {part: sum(p[part] for p in per_problem.values()) / len(per_problem) for part in ("prefixed", "unprefixed")}
    return {"reliance": per_problem, "eval/reliance/prefixed_pass@1": mean["prefixed"],
            "eval/reliance/unprefixed_pass@1": mean["unprefixed"],
            "eval/reliance/gap": mean["prefixed"] - mean["unprefixed"]}
