"""Which regime a task is in, measured from one experiment's own folder, beside who won.

PrefixRL's claim is about a regime (README, Tasks; REGIME notes): hard problems that on-policy RL
cannot learn from (its groups get no reward), traces bought by rejection sampling, and a policy that
learns more from continuing the traces than from imitating them. Every property below is read from
what the experiment already did (screening, collection, calibration of the base, sft-rl's first
evaluation right after SFT, rl's step metrics), so the row costs nothing and cannot drift from the
runs it explains. `benchmarks/regime_table.py` puts the rows of several experiments side by side.
"""

from __future__ import annotations

import statistics


def regime_row(task: str, data, calibration: dict[str, dict[float, float]], runs: dict[str, list[dict]],
               numbers: dict) -> dict:
    """One task's measured properties and the result. `data`: the experiment's data stages;
    `calibration`: success vs prefix fraction per model ("base" among them); `runs`: per method, per
    seed, {"eval", "metrics"} (report.load_runs); `numbers`: report.headline's result."""
    base_curve = calibration.get("base", {})
    row = {
        "task": task,
        "hard share (pass@k = 0)": len(data.hard) / max(len(data.screened), 1),
        "trace yield (of hard)": len(data.solved) / max(len(data.hard), 1),
        "traces": len(data.solved),
        "base success from the shortest / longest prefix": (base_curve[min(base_curve)], base_curve[max(base_curve)])
        if base_curve else None,
        "rl zero-advantage groups": _mean_metric(runs.get("rl", []), "unprefixed/zero_advantage"),
    }
    for split in ("hard", "heldout"):
        row[f"sft pass@1 right after SFT ({split})"] = _first_eval(runs.get("sft-rl", []), split)
        finals = {m: v["mean"] for m, v in numbers.get(split, {}).get("final", {}).items()}
        if finals:
            ranked = sorted(finals, key=finals.get, reverse=True)
            winner, second = ranked[0], (ranked[1] if len(ranked) > 1 else None)
            row[f"winner ({split})"] = winner
            row[f"winner's margin ({split})"] = (finals[winner] - finals[second]) if second else None
            row[f"final pass@1 ({split})"] = finals
    return row


def regime_markdown(rows: list[dict]) -> str:
    """Tasks as columns, properties as rows: a reader sees why a method wins on one task and not on another."""
    keys = list(dict.fromkeys(k for row in rows for k in row if k != "task"))
    lines = ["| property | " + " | ".join(f"`{r['task']}`" for r in rows) + " |",
             "|---|" + "---|" * len(rows)]
    lines += [f"| {key} | " + " | ".join(_fmt(r.get(key)) for r in rows) + " |" for key in keys]
    return "\n".join(lines)


def _first_eval(runs: list[dict], split: str) -> float | None:
    """Mean over seeds of a run's first evaluation (sft-rl's step 0: right after SFT, before any RL)."""
    values = [run["eval"][0][f"eval/{split}/pass@1"] for run in runs
              if run["eval"] and f"eval/{split}/pass@1" in run["eval"][0]]
    return statistics.fmean(values) if values else None


def _mean_metric(runs: list[dict], key: str) -> float | None:
    values = [r[key] for run in runs for r in run["metrics"] if r.get(key) is not None]
    return statistics.fmean(values) if values else None


def _fmt(value) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.3g}"
    if isinstance(value, (tuple, list)):
        return " / ".join(_fmt(v) for v in value)
    if isinstance(value, dict):
        return ", ".join(f"{k} {_fmt(v)}" for k, v in sorted(value.items(), key=lambda kv: -kv[1]))
    return str(value)
