"""Stage 6: figures and a markdown report a person can open offline.

Figures are PNGs drawn with matplotlib (Agg backend: no display needed).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot_reward_vs_flops(curves: dict[str, list[dict]], path: str | Path, marker_flops: float | None = None,
                         title: str = "Unprefixed pass@1 vs compute") -> Path:
    """One line per (run, metric) from eval.jsonl rows: x = the run's cumulative FLOPs (which include
    the collection FLOPs charged to it, marked at `marker_flops`), y = unprefixed pass@1."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for run, rows in curves.items():
        metrics = sorted({k for row in rows for k in row if k.startswith("eval/")})
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
