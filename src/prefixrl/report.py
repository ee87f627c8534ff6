"""Stage 6: figures and a markdown report a person can open offline.

Figures are PNGs drawn with matplotlib (Agg backend: no display needed).
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from prefixrl.analysis import BOTH_AT_ZERO, ratio_text  # noqa: E402
from prefixrl.files import atomic_write_text  # noqa: E402
from prefixrl.methods import METHODS  # noqa: E402


def plot_reward_vs_flops(curves: dict[str, list[dict]], path: str | Path, marker_flops: float | None = None,
                         title: str = "Unprefixed pass@1 vs compute") -> Path:
    """One line per (run, metric) from eval.jsonl rows: x = the run's cumulative FLOPs (which include
    the collection FLOPs charged to it, marked at `marker_flops`), y = unprefixed pass@1."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for run, rows in curves.items():
        metrics = sorted({k for row in rows for k in row if k.startswith("eval/") and k.endswith("/pass@1")})
        for metric in metrics:
            points = [(row["flops"], row[metric]) for row in rows if metric in row]
            label = f"{run}: {metric.removeprefix('eval/').replace('/pass@1', '')}"
            ax.plot(*zip(*points), marker="o", markersize=3, label=label)
    if marker_flops:
        ax.axvline(marker_flops, color="grey", linestyle=":", linewidth=1, label="traces collected")
    ax.set_xlabel("FLOPs (2·N·D inference + 6·N·D training)")
    ax.set_ylabel("unprefixed pass@1")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _save(fig, path)


def plot_success_vs_prefix(curves: dict[str, dict[float, float]], path: str | Path) -> Path:
    """Success rate conditioned on a prefix of a correct trace, by prefix fraction (one line per model)."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, curve in curves.items():
        ax.plot(list(curve), list(curve.values()), marker="o", label=name)
    ax.set_xlabel("prefix fraction of a correct trace")
    ax.set_ylabel("success rate of the continuation")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title("Success vs prefix fraction")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def markdown_table(header: list[str], rows: list[list]) -> str:
    def fmt(value) -> str:
        return f"{value:.3g}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


# -- the experiment's report -------------------------------------------------------------------

SPLITS = {"hard": "hard training problems (the paper's measure)", "heldout": "held-out hard problems"}


def load_runs(run_dirs: dict[str, list[Path]]) -> dict[str, list[dict]]:
    """Per method, per seed: the run's evaluations and step metrics."""
    from prefixrl.files import read_jsonl

    from prefixrl.analysis import read_metrics

    return {method: [{"eval": read_jsonl(d / "eval.jsonl"), "metrics": [r for r in read_metrics(d / "metrics.jsonl")
                                                                        if "flops/total" in r]} for d in dirs]
            for method, dirs in run_dirs.items()}


def eval_curves(runs: list[dict], key: str) -> list[list[tuple[float, float]]]:
    return [[(r["flops"], r[key]) for r in run["eval"] if key in r] for run in runs]


def metric_curves(runs: list[dict], key: str) -> list[list[tuple[float, float]]]:
    return [[(r["flops/total"], r[key]) for r in run["metrics"] if key in r] for run in runs]


def headline(runs: dict[str, list[dict]], method: str, grid) -> dict:
    """Per split: each method's final value, and the method's speedup and final-reward ratio against
    every other method, with 90% intervals over seeds."""
    from prefixrl import analysis

    result = {}
    for split in SPLITS:
        curves = {m: eval_curves(r, f"eval/{split}/pass@1") for m, r in runs.items()}
        finals = {m: analysis.final_values(c) for m, c in curves.items()}
        rows = {}
        for baseline in (m for m in runs if m != method):
            rows[baseline] = {
                "speedup": analysis.speedup(curves[method], curves[baseline], grid),
                "speedup_ci": analysis.bootstrap(lambda a, b: analysis.speedup(a, b, grid), curves[method],
                                                 curves[baseline]),
                "final_ratio": analysis.final_ratio(curves[method], curves[baseline]),
                "final_ratio_ci": analysis.bootstrap(analysis.final_ratio, curves[method], curves[baseline]),
            }
        result[split] = {"final": {m: {"mean": float(v.mean()), "std": float(v.std())} for m, v in finals.items()},
                         "against": rows}
    return result


def plot_seed_bands(series: dict[str, list[list[tuple[float, float]]]], path: str | Path, ylabel: str, title: str,
                    marker_flops: float | None = None, log_y: bool = False, ax=None) -> Path | None:
    """Per method: the seed mean against FLOPs (a line) and the seeds' range (a band)."""
    import numpy as np

    from prefixrl.analysis import on_grid

    own = ax is None
    if own:
        fig, ax = plt.subplots(figsize=(6, 4))
    end = max((run[-1][0] for runs in series.values() for run in runs if run), default=1.0)
    grid = np.linspace(0, end, 300)
    for method, runs in series.items():
        runs = [run for run in runs if run]
        if not runs:
            continue
        values = np.stack([on_grid(run, grid) for run in runs])
        line, = ax.plot(grid, values.mean(0), label=f"{method} (n={len(runs)})")
        ax.fill_between(grid, values.min(0), values.max(0), color=line.get_color(), alpha=0.15, linewidth=0)
    if marker_flops:
        ax.axvline(marker_flops, color="grey", linestyle=":", linewidth=1, label="traces collected")
    ax.set_xlabel("FLOPs (2·N·D inference + 6·N·D training)")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    if log_y:
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _save(fig, path) if own else None


def plot_curves(runs: dict[str, list[dict]], path: Path, marker_flops: float) -> Path:
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, (split, title) in zip(axes, SPLITS.items()):
        plot_seed_bands({m: eval_curves(r, f"eval/{split}/pass@1") for m, r in runs.items()}, path,
                        "unprefixed pass@1", title, marker_flops, ax=ax)
    return _save(fig, path)


def trace_strategy_shares(task, traces: list[dict]) -> dict[str, float]:
    """Each strategy marker's share among the traces (the prefixes' strategies)."""
    from prefixrl.tasks import strategy_of

    return {s: sum(strategy_of(task, t["completion"]) == s for t in traces) / max(len(traces), 1)
            for s in task.strategy_markers}


def plot_back_generalization(runs: dict[str, list[dict]], markers: list[str], trace_shares: dict[str, float],
                             path: Path) -> Path:
    """Left: each strategy marker's share in unprefixed answers over training, with its share in
    the traces (dotted). Right: the policy's NLL of the training prefixes."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    series = {f"{m}: {s}": eval_curves(r, f"eval/hard/strategy/{s}") for m, r in runs.items()
              if m.startswith("prefixrl") for s in markers}
    plot_seed_bands(series, path, "share of unprefixed answers", "strategy markers (hard problems)", ax=axes[0])
    for strategy, share in trace_shares.items():
        axes[0].axhline(share, linestyle=":", linewidth=1, color="black", label=f"traces: {strategy}")
    axes[0].legend(fontsize=7)
    plot_seed_bands({m: eval_curves(r, "eval/prefix_nll") for m, r in runs.items()}, path,
                    "NLL per prefix token", "the policy's NLL of the prefixes", ax=axes[1])
    return _save(fig, path)


def plot_prefix_reliance(runs: dict[str, list[dict]], path: Path) -> Path | None:
    """HiLL's prefix reliance (reliance.py). Left: mean success over the training problems with their
    prefixes (solid) and without (dashed), over training (seed mean). Right: each problem at the last
    evaluation, every seed; above the diagonal, it leans on its prefixes. None: nothing measured."""
    key = "eval/reliance/prefixed_pass@1"
    measured = {m: rs for m, rs in runs.items() if any(key in r for run in rs for r in run["eval"])}
    if not measured:
        return None
    fig, (curves, final) = plt.subplots(1, 2, figsize=(11, 4))
    for color, (method, rs) in zip(plt.rcParams["axes.prop_cycle"].by_key()["color"] * 4, measured.items()):
        for part, style in (("prefixed", "-"), ("unprefixed", "--")):
            by_step: dict[int, list[float]] = {}
            for run in rs:
                for r in run["eval"]:
                    if f"eval/reliance/{part}_pass@1" in r:
                        by_step.setdefault(r["step"], []).append(r[f"eval/reliance/{part}_pass@1"])
            steps = sorted(by_step)
            curves.plot(steps, [sum(by_step[s]) / len(by_step[s]) for s in steps], style, color=color,
                        label=f"{method}: {'with its prefixes' if part == 'prefixed' else 'unprefixed'}")
        last = [p for run in rs for r in run["eval"][-1:] for p in r.get("reliance", {}).values()]
        final.scatter([p["unprefixed"] for p in last], [p["prefixed"] for p in last], color=color, s=14, label=method)
    curves.set_xlabel("training step")
    curves.set_ylabel("pass@1 on the training problems")
    curves.set_title("prefix reliance over training (seed mean)", fontsize=9)
    final.plot([0, 1], [0, 1], ":", color="grey", linewidth=1)
    final.set_xlabel("pass@1 without its prefixes")
    final.set_ylabel("pass@1 with its prefixes")
    final.set_title("each training problem at the last evaluation", fontsize=9)
    for ax in (curves, final):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return _save(fig, path)


def write_experiment_report(out: Path, cfg, data, calibration: dict[str, dict[float, float]],
                            run_dirs: dict[str, list[Path]]) -> dict:
    import numpy as np

    from prefixrl.claims import judge_claims
    from prefixrl.regime import regime_row

    out, folder = Path(out), Path(out) / "report"
    runs = load_runs(run_dirs)
    method = "prefixrl" if "prefixrl" in runs else next((m for m in runs if m.startswith("prefixrl")), None)
    # every evaluation's FLOPs: the seed-mean curves change only there, so the speedup is exact
    grid = np.array(sorted({r["flops"] for rs in runs.values() for run in rs for r in run["eval"]}))
    numbers = headline(runs, method, grid) if method else {}
    collect_flops = data.collect_flops.total
    plot_curves(runs, folder / "curves.png", collect_flops)
    plot_seed_bands({m: metric_curves(r, "entropy") for m, r in runs.items()}, folder / "entropy.png",
                    "token entropy (nats)", "token entropy of the policy's samples", collect_flops)
    plot_seed_bands({m: metric_curves(r, "grad_norm") for m, r in runs.items()}, folder / "grad_norm.png",
                    "gradient norm (before clipping)", "gradient norm", collect_flops, log_y=True)
    plot_success_vs_prefix(calibration, folder / "success_vs_prefix.png")
    markers = list(data.task.strategy_markers)
    trace_shares = trace_strategy_shares(data.task, data.traces)
    if markers:
        plot_back_generalization(runs, markers, trace_shares, folder / "back_generalization.png")
    reliance = plot_prefix_reliance(runs, folder / "prefix_reliance.png") is not None
    claims = judge_claims(runs, numbers, calibration, method)
    summary = {"method": method, "headline": numbers, "claims": claims, "calibration": calibration,
               "regime": regime_row(data.task.name, data, calibration, runs, numbers),
               "sft_tuning": sft_tuning(run_dirs.get("sft-rl", [])),
               "trace_strategy_shares": trace_shares, "collect_flops": collect_flops,
               "total_flops": _total_flops(out, runs, collect_flops),
               "runs": {m: [{"final_flops": run["eval"][-1]["flops"], "steps": run["eval"][-1]["step"]} for run in r]
                        for m, r in runs.items()}}
    atomic_write_text(folder / "summary.json", json.dumps(summary, indent=2))
    atomic_write_text(folder / "README.md", _experiment_markdown(cfg, data, summary, bool(markers), reliance))
    return summary


def sft_tuning(run_dirs: list[Path]) -> list[dict]:
    """Per sft-rl seed that tuned its SFT on validation problems: the candidates and the choice."""
    tuned = []
    for run in run_dirs:
        manifest = Path(run) / "sft" / "manifest.json"
        sft = json.loads(manifest.read_text()) if manifest.exists() else {}
        if "chosen" in sft:
            tuned.append({"seed": sft["seed"], "chosen": sft["chosen"], "sweep": sft["sweep"], "flops": sft["flops"]})
    return tuned


def _total_flops(out: Path, runs: dict[str, list[dict]], collect_flops: float) -> float:
    """The data stages and training: screening and collection once, then each run's own FLOPs (its
    ledger minus the collection FLOPs it was charged). Evaluation and calibration are measurement,
    charged to no method, and not counted."""
    from prefixrl.flops import FlopsLedger

    screen = FlopsLedger(out / "screen" / "flops.json").total
    runs_own = sum(run["eval"][-1]["flops"] - (collect_flops if METHODS[m].charged_collection else 0)
                   for m, rs in runs.items() for run in rs)
    return float(screen + collect_flops + runs_own)


def _interval(ci) -> str:
    return f"[{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "n/a"


def _experiment_markdown(cfg, data, summary: dict, has_markers: bool, has_reliance: bool = False) -> str:
    from prefixrl.regime import regime_markdown

    method, numbers = summary["method"], summary["headline"]
    n_params = data.sampler.n_params
    traces = (f"their reference solutions gave verified traces for {len(data.solved)} (no collection FLOPs)."
              if getattr(cfg, "traces", "collect") == "reference" else
              f"rejection sampling (cap {cfg.collect.max_attempts}) found traces for {len(data.solved)}, spending "
              f"{summary['collect_flops']:.3g} FLOPs (charged to every method that uses the traces).")
    parts = [
        f"# prefixrl experiment: {data.task.name}",
        "## Setup",
        f"Base model `{cfg.model}` ({n_params / 1e6:.2f} M parameters). Screened {len(data.screened)} problems "
        f"(n = {cfg.screen.n}); {len(data.hard)} had pass@{cfg.screen.k} = 0; {traces} Methods "
        f"{', '.join(cfg.methods)}; seeds {cfg.seeds}; every "
        f"run stopped at {cfg.budget_flops:.3g} FLOPs. RL: {cfg.train.problems_per_step} problems x "
        f"{cfg.train.num_generations} samples per step, lr {cfg.train.lr}, loss {cfg.train.loss_type}; unprefixed "
        f"evaluation every {cfg.train.eval_every} steps, {cfg.train.eval_n} samples per problem at temperature "
        f"{cfg.train.eval_temperature}. Compute: {summary['total_flops']:.3g} FLOPs for the data stages and "
        f"training (evaluations not counted).",
    ]
    if method:
        parts.append(f"## Headline: `{method}` against each baseline")
        for split, title in SPLITS.items():
            rows = [[b, f"{numbers[split]['final'][b]['mean']:.3f} ± {numbers[split]['final'][b]['std']:.3f}",
                     ratio_text(r["speedup"]), _interval(r["speedup_ci"]),
                     ratio_text(r["final_ratio"], none=BOTH_AT_ZERO), _interval(r["final_ratio_ci"])]
                    for b, r in numbers[split]["against"].items()]
            ours = numbers[split]["final"][method]
            parts += [f"**{title}** ({method} final pass@1 {ours['mean']:.3f} ± {ours['std']:.3f}):",
                      markdown_table(["baseline", "its final pass@1", "speedup", "90% interval", "final ratio",
                                      "90% interval"], rows)]
        parts.append("Speedup: FLOPs the baseline needs to reach its final pass@1 / FLOPs the method needs to reach "
                     "it (seed means). Final ratio: the method's final pass@1 / the baseline's. Intervals resample "
                     "seeds. Held-out problems were never prefixed, so memorising traces cannot help there.")
    if summary["sft_tuning"]:
        parts += ["## The SFT baseline, tuned", _sft_tuning_markdown(summary["sft_tuning"])]
    parts += ["## The task's regime", "What this experiment measured about its task, beside who won (`python "
              "benchmarks/regime_table.py FOLDER...` puts several experiments' rows side by side):",
              regime_markdown([summary["regime"]])]
    parts += ["## Claims of the paper", markdown_table(["claim", "status", "evidence"],
                                                         [[c["claim"], c["status"], c["evidence"]]
                                                          for c in summary["claims"]])]
    parts += ["## Curves", "![pass@1 vs FLOPs](curves.png)", "## Diagnostics",
              "![token entropy](entropy.png)", "![gradient norm](grad_norm.png)",
              "![success vs prefix fraction](success_vs_prefix.png)"]
    if has_markers:
        parts.append("![back-generalization](back_generalization.png)")
    if has_reliance:
        parts.append("![prefix reliance: success with the prefixes vs without](prefix_reliance.png)")
    return "\n\n".join(parts) + "\n"


def _sft_tuning_markdown(tuned: list[dict]) -> str:
    lrs = sorted({row["lr"] for t in tuned for row in t["sweep"]})
    epochs = sorted({row["epochs"] for t in tuned for row in t["sweep"]})
    grid = [[f"{lr:g}"] + [" / ".join(f"{row['validation_pass@1']:.3f}" for t in tuned for row in t["sweep"]
                                      if row["lr"] == lr and row["epochs"] == e) for e in epochs] for lr in lrs]
    chosen = ", ".join(f"seed {t['seed']}: lr {t['chosen']['lr']:g}, {t['chosen']['epochs']} epochs "
                       f"({t['chosen']['validation_pass@1']:.3f})" for t in tuned)
    return "\n\n".join([
        "sft-rl's SFT learning rate and epochs were chosen by unprefixed pass@1 on validation problems (hard "
        "problems neither trained on nor held out); every candidate's training and validation sampling is charged "
        f"to sft-rl. Validation pass@1 by lr (rows) and epochs (columns), one value per seed. Chosen: {chosen}.",
        markdown_table(["lr"] + [f"{e} epochs" for e in epochs], grid)])
