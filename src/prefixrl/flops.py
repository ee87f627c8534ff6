"""The compute ledger every stage adds to, so any run can state what it spent.

The paper's accounting: 2·N·D FLOPs for every token a model reads or generates at inference
(rejection sampling, rollouts, extra forward passes; prompt and prefix tokens included) and
6·N·D for every token trained on, N = parameters, D = tokens.
"""

from __future__ import annotations

import json
from pathlib import Path

from prefixrl.files import atomic_write_text


def inference_flops(n_params: int, tokens: int) -> float:
    return 2.0 * n_params * tokens


def train_flops(n_params: int, tokens: int) -> float:
    return 6.0 * n_params * tokens


class FlopsLedger:
    """Per-stage token and FLOPs totals, kept in a JSON file (atomically rewritten on every add)."""

    def __init__(self, path: str | Path | None = None, fresh: bool = False):
        """fresh: start empty even if the file exists (a ledger re-derived from a stage's own log)."""
        self.path = Path(path) if path else None
        self.stages: dict[str, dict[str, float]] = {}
        if self.path and self.path.exists() and not fresh:
            self.stages = json.loads(self.path.read_text())["stages"]

    def add(self, stage: str, *, n_params: int, inference_tokens: int = 0, train_tokens: int = 0) -> float:
        flops = inference_flops(n_params, inference_tokens) + train_flops(n_params, train_tokens)
        entry = self.stages.setdefault(stage, {"inference_tokens": 0, "train_tokens": 0, "flops": 0.0})
        entry["inference_tokens"] += inference_tokens
        entry["train_tokens"] += train_tokens
        entry["flops"] += flops
        self.save()
        return flops

    def merge(self, other: "FlopsLedger") -> None:
        """Charge another stage's spending to this ledger (e.g. collection FLOPs to a training run)."""
        for stage, entry in other.stages.items():
            mine = self.stages.setdefault(stage, {"inference_tokens": 0, "train_tokens": 0, "flops": 0.0})
            for key, value in entry.items():
                mine[key] += value
        self.save()

    @property
    def total(self) -> float:
        return sum(entry["flops"] for entry in self.stages.values())

    def save(self) -> None:
        if self.path:
            atomic_write_text(self.path, json.dumps({"total": self.total, "stages": self.stages}, indent=2))
