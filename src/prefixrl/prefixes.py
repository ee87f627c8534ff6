"""Stage 3: prefixed problems, cut from correct traces in the policy's own tokens.

A prefixed problem is the problem followed by the first h tokens of a correct trace (h: prefix
length in policy tokens); the policy continues it, and the reward is scored on prefix +
continuation. `calibrate` measures the policy's success rate conditioned on prefixes at a grid
of fractions of each trace: the "success vs prefix fraction" curve.
"""

from __future__ import annotations

from pathlib import Path

from prefixrl.files import AppendLog, progress_bar
from prefixrl.generate import Sampler, stable_seed
from prefixrl.tasks import Problem, Task


def cut(tokenizer, completion: str, fraction: float) -> tuple[str, int]:
    """(prefix text, h): the first h = round(fraction * len) policy tokens of a trace."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"prefix fraction must be in [0, 1], got {fraction}")
    ids = tokenizer(completion, add_special_tokens=False)["input_ids"]
    h = round(fraction * len(ids))
    return tokenizer.decode(ids[:h]), h


def calibrate(task: Task, sampler: Sampler, tokenizer, traces: list[dict], problems: dict[str, Problem],
              out_dir: str | Path, fractions: tuple[float, ...] = tuple(i / 10 for i in range(11)),
              n: int = 64, seed: int = 0, quiet: bool = False) -> list[dict]:
    """Success rate of n samples conditioned on each prefix fraction of each trace (resumable:
    one line of `calibration.jsonl` per trace)."""
    log = AppendLog(Path(out_dir) / "calibration.jsonl")
    done = {row["trace"] for row in log.rows}
    with progress_bar(disable=quiet) as bar:
        bar_id = bar.add_task("calibrate", total=len(traces), completed=len(done), rate="")
        for index, trace in enumerate(traces):
            if index in done:
                continue
            problem = problems[trace["problem_id"]]
            cuts = [cut(tokenizer, trace["completion"], f) for f in fractions]
            samples = sampler.generate([problem.prompt + prefix for prefix, _ in cuts], n,
                                       seed=stable_seed(seed, f"{trace['problem_id']}:{index}"))
            rows = []
            for fraction, (prefix, h), group in zip(fractions, cuts, samples):
                correct = sum(task.verify(problem, prefix + s.text).reward > 0 for s in group)
                rows.append({"fraction": fraction, "prefix_tokens": h, "n": n, "correct": correct})
            log.append({"trace": index, "problem_id": problem.id, "points": rows})
            bar.update(bar_id, advance=1)
    return log.rows


def success_curve(rows: list[dict]) -> dict[float, float]:
    """Mean success rate over traces at each prefix fraction."""
    by_fraction: dict[float, list[float]] = {}
    for row in rows:
        for point in row["points"]:
            by_fraction.setdefault(point["fraction"], []).append(point["correct"] / point["n"])
    return {f: sum(v) / len(v) for f, v in sorted(by_fraction.items())}

