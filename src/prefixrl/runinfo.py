"""What every run folder records: config, versions, seed, FLOPs, wall time, git commit."""

from __future__ import annotations

import json
import platform
import subprocess
from importlib import metadata
from pathlib import Path

from prefixrl.files import atomic_write_text


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("prefixrl", "torch", "transformers", "trl", "accelerate", "datasets", "math-verify"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def git_commit() -> str | None:
    try:
        result = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                                cwd=Path(__file__).parent)
        return result.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def write_manifest(run_dir: str | Path, *, stage: str, config: dict, seed: int, flops: float,
                   wall_time_s: float, task=None, extra: dict | None = None) -> None:
    """`task`: a task whose verifier keeps counts (math: timeouts, errors) has them recorded."""
    manifest = {"stage": stage, "config": config, "seed": seed, "flops": flops,
                "wall_time_s": round(wall_time_s, 2), "versions": versions(), "git_commit": git_commit(),
                **(extra or {})}
    if getattr(task, "verifier_stats", None) is not None:
        manifest["verifier"] = task.verifier_stats
    atomic_write_text(Path(run_dir) / "manifest.json", json.dumps(manifest, indent=2, default=str))
