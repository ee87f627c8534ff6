"""Stage 1: find the hard problems, those the base model cannot solve (pass@k = 0).

    prefixrl screen MODEL --task sort --n 512 --out runs/screen

Samples n completions per problem, writes `scores.jsonl` (one line per problem, resumable),
`screen.json` (pass@k over the screened problems) and `hard.jsonl`: the problems with
pass@k = 0, which the next stages read. The paper screens with n = k = 512.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from prefixrl.evaluate import default_ks, pass_at_k, score_problems, summarize
from prefixrl.files import atomic_write_text, write_jsonl
from prefixrl.flops import FlopsLedger
from prefixrl.generate import Sampler
from prefixrl.runinfo import run_folder, sampling_identity, write_manifest
from prefixrl.tasks import Problem, Task, task_args


def screen(task: Task, sampler: Sampler, problems: list[Problem], out_dir: str | Path, n: int = 512,
           k: int | None = None, seed: int = 0, quiet: bool = False) -> list[Problem]:
    """Score every problem with n samples and return (and write) those with pass@k = 0."""
    k = k or n
    if not 1 <= k <= n:
        raise ValueError(f"screen needs 1 <= k <= n, got k={k}, n={n}")
    with run_folder(out_dir, "screen", sampling_identity(task, sampler, n=n, seed=seed)):  # probes --out first
        return _screen(task, sampler, problems, Path(out_dir), n, k, seed, quiet)


def _screen(task: Task, sampler: Sampler, problems: list[Problem], out_dir: Path, n: int, k: int, seed: int,
            quiet: bool) -> list[Problem]:
    start = time.time()
    rows = score_problems(task, sampler, problems, n, out_dir, seed=seed, stage="screen", quiet=quiet)
    hard = [p for p, row in zip(problems, rows) if pass_at_k(n, row["correct"], k) == 0.0]
    write_jsonl(out_dir / "hard.jsonl", [p.to_dict() for p in hard])
    summary = {"n": n, "k": k, "problems": len(problems), "hard": len(hard),
               "share_hard": len(hard) / max(1, len(problems)), **summarize(rows, default_ks(n))}
    atomic_write_text(out_dir / "screen.json", json.dumps(summary, indent=2))
    flops = FlopsLedger(out_dir / "flops.json").total
    write_manifest(out_dir, stage="screen", config={"task": task.name, "task_args": task_args(task), "n": n,
                   "k": k, "sampling": vars(sampler.params)}, seed=seed, flops=flops, wall_time_s=time.time() - start, task=task)
    return hard
