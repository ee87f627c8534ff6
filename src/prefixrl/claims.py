"""Each claim of the paper, judged from an experiment's own numbers: reproduced, partly, not
reproduced, or not run (the methods it needs were not in the experiment). The thresholds are the
paper's where it states one; the others are written next to each claim."""

from __future__ import annotations

import numpy as np

from prefixrl.analysis import mean_metric, ratio_text

NEVER = "not reached (prefixrl never gets to sft-rl's final)"
REPRODUCED, PARTLY, NOT, NOT_RUN = "reproduced", "partly reproduced", "not reproduced", "not run"


def judge_claims(runs: dict[str, list[dict]], numbers: dict, calibration: dict[str, dict[float, float]],
                 method: str | None) -> list[dict]:
    return [claim(runs, numbers, calibration, method) for claim in
            (_faster, _higher_final, _back_generalization, _prefix_jump, _entropy, _gradient)]


def _verdict(name: str, status: str, evidence: str) -> dict:
    return {"claim": name, "status": status, "evidence": evidence}


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def _faster(runs, numbers, calibration, method):
    name = "PrefixRL reaches the strongest baseline's (sft-rl) final training reward 2x faster in FLOPs"
    row = numbers.get("hard", {}).get("against", {}).get("sft-rl")
    if row is None:
        return _verdict(name, NOT_RUN, "needs prefixrl and sft-rl")
    speedup = row["speedup"]
    status = NOT if speedup is None or speedup <= 1 else REPRODUCED if speedup >= 2 else PARTLY
    ci = row["speedup_ci"]
    interval = f"[{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "n/a"
    held_out = numbers["heldout"]["against"]["sft-rl"]["speedup"]
    return _verdict(name, status, f"speedup {ratio_text(speedup, NEVER)} (90% interval {interval}); "
                                  f"held-out: {ratio_text(held_out, NEVER)}")


def _higher_final(runs, numbers, calibration, method):
    name = "PrefixRL's final training reward is >= 3x rl's and >= 1.45x sft-rl's"
    against = numbers.get("hard", {}).get("against", {})
    targets = {"rl": 3.0, "sft-rl": 1.45}
    present = {b: against[b]["final_ratio"] for b in targets if b in against}
    if not present:
        return _verdict(name, NOT_RUN, "needs prefixrl and rl or sft-rl")
    met = [ratio is not None and ratio >= targets[b] for b, ratio in present.items()]  # None: both at 0
    above = all(r is not None and r > 1 for r in present.values())
    status = REPRODUCED if all(met) and len(met) == 2 else PARTLY if any(met) or above else NOT
    return _verdict(name, status, "; ".join(f"vs {b}: {_fmt(r)} (target {targets[b]})" for b, r in present.items()))


def _back_generalization(runs, numbers, calibration, method):
    name = "Training on prefixed problems only raises unprefixed accuracy (back-generalization)"
    if "prefixrl-only" not in runs:
        return _verdict(name, NOT_RUN, "needs prefixrl-only")
    changes = {}  # split -> (start, end): the hard training problems and held-out ones, both unprefixed
    for split in ("hard", "heldout"):
        key = f"eval/{split}/pass@1"
        if all(key in run["eval"][0] for run in runs["prefixrl-only"]):
            changes[split] = tuple(float(np.mean([run["eval"][i][key] for run in runs["prefixrl-only"]]))
                                   for i in (0, -1))
    doubled = [end >= max(2 * start, start + 0.02) for start, end in changes.values()]
    rose = [end > start for start, end in changes.values()]
    status = REPRODUCED if all(doubled) else PARTLY if any(doubled) or any(rose) else NOT
    return _verdict(name, status, "prefixrl-only unprefixed pass@1: " + "; ".join(
        f"{split} {start:.3f} -> {end:.3f}" for split, (start, end) in changes.items()))


def _prefix_jump(runs, numbers, calibration, method):
    name = "Success vs prefix length stays near zero, then jumps (largest rise between neighbouring fractions >= 0.3)"
    base = calibration.get("base")
    if not base:
        return _verdict(name, NOT_RUN, "no calibration")
    values = list(base.values())
    rise = max(b - a for a, b in zip(values, values[1:]))
    status = REPRODUCED if rise >= 0.3 else PARTLY if values[-1] - values[0] >= 0.3 else NOT
    curve = ", ".join(f"{f:.1f}: {v:.2f}" for f, v in base.items())
    return _verdict(name, status, f"base policy: {curve}; largest single rise {rise:.2f}")


def _entropy(runs, numbers, calibration, method):
    name = "SFT collapses token entropy; PrefixRL keeps it near plain RL's (within 30%)"
    if not method or "sft-rl" not in runs or "rl" not in runs:
        return _verdict(name, NOT_RUN, "needs prefixrl, sft-rl and rl")
    sft, ours, rl = (mean_metric([r for run in runs[m] for r in run["metrics"][:10]], "entropy")
                     for m in ("sft-rl", method, "rl"))
    collapsed, near = sft < 0.7 * rl, abs(ours - rl) <= 0.3 * rl
    status = REPRODUCED if collapsed and near else PARTLY if collapsed or near else NOT
    return _verdict(name, status, f"mean entropy over the first 10 RL steps: sft-rl {sft:.3f}, {method} {ours:.3f}, "
                                  f"rl {rl:.3f}")


def _gradient(runs, numbers, calibration, method):
    name = "Importance-weighted off-policy RL's gradient norm spikes (max >= 3x median); PrefixRL's is steadier"
    if not method or "offpolicy-is" not in runs:
        return _verdict(name, NOT_RUN, "needs prefixrl and offpolicy-is")

    def spread(m):
        norms = np.array([r["grad_norm"] for run in runs[m] for r in run["metrics"] if "grad_norm" in r])
        return float(norms.max() / np.median(norms)), float(norms.std() / norms.mean())

    (is_peak, is_cv), (our_peak, our_cv) = spread("offpolicy-is"), spread(method)
    spike, steadier = is_peak >= 3, our_cv < is_cv
    status = REPRODUCED if spike and steadier else PARTLY if spike or steadier else NOT
    return _verdict(name, status, f"max/median: offpolicy-is {is_peak:.1f}, {method} {our_peak:.1f}; "
                                  f"std/mean: {is_cv:.2f} vs {our_cv:.2f}")
