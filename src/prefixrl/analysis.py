"""Compute-matched comparisons of runs: curves on a common FLOPs grid, speedup, final-reward
ratio, and bootstrap confidence intervals over seeds.

A run's curve is its evaluations as (FLOPs, value) points; between evaluations the value is the
last one measured (a step function), and before the first it is unknown (NaN): a method charged
the collection FLOPs has no curve before them.

    speedup = FLOPs the baseline needs to reach its final value / FLOPs the method needs to reach it
    final-reward ratio = the method's final value / the baseline's final value

Both from the seed-mean curves; the intervals resample each method's seeds with replacement.
"""

from __future__ import annotations

import numpy as np

Curve = list[tuple[float, float]]  # (FLOPs, value) of one run, in order


def on_grid(curve: Curve, grid: np.ndarray) -> np.ndarray:
    """The run's value at each grid point: the last evaluation at or before it (NaN before any)."""
    flops = np.array([f for f, _ in curve])
    values = np.array([v for _, v in curve], dtype=float)
    index = np.searchsorted(flops, grid, side="right") - 1
    return np.where(index >= 0, values[np.clip(index, 0, None)], np.nan)


def mean_curve(runs: list[Curve], grid: np.ndarray) -> np.ndarray:
    """Seed-mean on the grid, defined where every seed has a value."""
    return np.stack([on_grid(run, grid) for run in runs]).mean(0)


def final_values(runs: list[Curve]) -> np.ndarray:
    return np.array([run[-1][1] for run in runs])


def flops_to_reach(grid: np.ndarray, curve: np.ndarray, target: float) -> float | None:
    reached = np.flatnonzero(curve >= target)  # NaN compares False: no value yet, not reached
    return float(grid[reached[0]]) if reached.size else None


def speedup(method: list[Curve], baseline: list[Curve], grid: np.ndarray) -> float | None:
    """How many times fewer FLOPs the method needs to reach the baseline's final value: inf when
    the baseline ends at 0 and the method does not (as final_ratio), None when the method never
    reaches it (or both end at 0)."""
    target = final_values(baseline).mean()
    if target <= 0:
        return float("inf") if final_values(method).mean() > 0 else None
    spent_baseline = flops_to_reach(grid, mean_curve(baseline, grid), target)
    spent_method = flops_to_reach(grid, mean_curve(method, grid), target)
    if spent_method is None or spent_baseline is None:
        return None
    return spent_baseline / max(spent_method, 1e-30)


def final_ratio(method: list[Curve], baseline: list[Curve]) -> float | None:
    base, ours = final_values(baseline).mean(), final_values(method).mean()
    if base > 0:
        return float(ours / base)
    return float("inf") if ours > 0 else None  # 0 / 0: both learned nothing


def bootstrap(statistic, method: list[Curve], baseline: list[Curve], n: int = 1000, seed: int = 0,
              level: float = 0.9) -> tuple[float, float] | None:
    """Percentile interval of statistic(method runs, baseline runs) over resampled seeds; None when
    the statistic is undefined in most resamples."""
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(n):
        a = [method[i] for i in rng.integers(len(method), size=len(method))]
        b = [baseline[i] for i in rng.integers(len(baseline), size=len(baseline))]
        value = statistic(a, b)
        if value is not None and np.isfinite(value):
            values.append(value)
    if len(values) < n / 2:
        return None
    tail = (1 - level) / 2 * 100
    return float(np.percentile(values, tail)), float(np.percentile(values, 100 - tail))


BOTH_AT_ZERO = "n/a (both at 0)"  # how a final ratio of 0 / 0 is printed


def ratio_text(value: float | None, none: str = "not reached") -> str:
    """A speedup or final-reward ratio as the report and the benchmark print it; `none`: what an
    undefined one means (a speedup: the method never reaches the baseline; a ratio: both at 0)."""
    if value is None:
        return none
    return "inf (baseline at 0)" if value == float("inf") else f"{value:.2f}x"


def mean_metric(rows: list[dict], key: str) -> float:
    """Mean of `key` over the logged rows that have it (NaN if none do)."""
    values = [row[key] for row in rows if key in row]
    return float(np.mean(values)) if values else float("nan")


# metrics.jsonl before the names were namespaced the way TRL / verl users read them (prefixed/reward)
OLD_METRIC_NAMES = {f"{old}_{part}": f"{part}/{old}" for old in ("reward", "zero_advantage", "grad_norm", "entropy")
                    for part in ("prefixed", "unprefixed")}


def read_metrics(path) -> list[dict]:
    """The rows of a run's metrics.jsonl, an older run's metric names read as today's."""
    from prefixrl.files import read_jsonl

    return [{OLD_METRIC_NAMES.get(key, key): value for key, value in row.items()} for row in read_jsonl(path)]
