"""Unbiased pass@k on unprefixed problems, for any saved model.

    prefixrl evaluate MODEL --task sort --problems heldout --n 256

pass@k is the Chen et al. (2021) estimator, 1 - C(n-c, k) / C(n, k), from n samples of which c
are correct. Scoring is resumable: each finished problem is one line of `scores.jsonl`.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from prefixrl.files import AppendLog, atomic_write_text, progress_bar
from prefixrl.flops import FlopsLedger
from prefixrl.generate import Sampler, stable_seed
from prefixrl.prefixes import render_prompt
from prefixrl.runinfo import run_folder, sampling_identity, write_manifest
from prefixrl.tasks import Problem, Task, dead_end_of, strategy_of, task_args, verify_all


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples with c correct (numerically stable product form)."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"need 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def default_ks(n: int) -> list[int]:
    """1, 2, 4, ... up to n (and n itself)."""
    ks = [2**i for i in range(n.bit_length()) if 2**i <= n]
    return ks if ks[-1] == n else ks + [n]


def score_problems(task: Task, sampler: Sampler, problems: list[Problem], n: int, out_dir: str | Path,
                   seed: int = 0, stage: str = "evaluate", quiet: bool = False) -> list[dict]:
    """Sample n completions per problem and count the correct ones; resumes from scores.jsonl."""
    out_dir = Path(out_dir)
    log = AppendLog(out_dir / "scores.jsonl")
    done = {row["id"] for row in log.rows}
    todo = [p for p in problems if p.id not in done]
    # several problems per generate call keep the batch full when n is small
    per_call = max(1, sampler.params.batch_size // n)
    with progress_bar(disable=quiet) as bar:
        task_id = bar.add_task(stage, total=len(problems), completed=len(problems) - len(todo), rate="")
        for start in range(0, len(todo), per_call):
            t0 = time.time()
            group = todo[start:start + per_call]
            prompts = [render_prompt(sampler.tokenizer, p.prompt) for p in group]
            # a sample that can no longer be correct stops early: the same counts, less compute
            samples = sampler.generate(prompts, n, seed=stable_seed(seed, group[0].id), dead_end=dead_end_of(task, group))
            for problem, problem_samples in zip(group, samples):
                log.append(_score_row(task, problem, problem_samples, n))
            rate = len(group) * n / max(time.time() - t0, 1e-9)
            bar.update(task_id, advance=len(group), rate=f"{rate:,.0f} samples/s")
    ledger = FlopsLedger(out_dir / "flops.json", fresh=True)  # derived from the log, so a resumed run counts right
    ledger.add(stage, n_params=sampler.n_params, inference_tokens=sum(row["tokens"] for row in log.rows))
    by_id = {row["id"]: row for row in log.rows}
    return [by_id[p.id] for p in problems]


def _score_row(task: Task, problem: Problem, samples, n: int) -> dict:
    verdicts = verify_all(task, [(problem, s.text) for s in samples])
    correct = [s for s, v in zip(samples, verdicts) if v.reward > 0]
    strategies: dict[str, int] = {}
    for s in samples:
        name = strategy_of(task, s.text) or "none"
        strategies[name] = strategies.get(name, 0) + 1
    return {"id": problem.id, "split": problem.split, "difficulty": problem.difficulty, "n": n,
            "correct": len(correct), "tokens": sum(s.tokens for s in samples), "strategies": strategies,
            "example_correct": correct[0].text if correct else None}


def summarize(rows: list[dict], ks: list[int]) -> dict:
    """Mean pass@k over problems, for each k."""
    return {f"pass@{k}": float(np.mean([pass_at_k(r["n"], r["correct"], k) for r in rows])) for k in ks}


def evaluate(task: Task, sampler: Sampler, problems: list[Problem], n: int, out_dir: str | Path,
             seed: int = 0, quiet: bool = False) -> dict:
    """Score problems and write `eval.json` with mean pass@k for k = 1, 2, 4, ..., n."""
    start = time.time()
    with run_folder(out_dir, "evaluate", sampling_identity(task, sampler, n=n, seed=seed)):  # scores of this model
        rows = score_problems(task, sampler, problems, n, out_dir, seed=seed, quiet=quiet)
        result = {"n": n, "problems": len(rows), **summarize(rows, default_ks(n))}
        atomic_write_text(Path(out_dir) / "eval.json", json.dumps(result, indent=2))
        write_manifest(out_dir, stage="evaluate", config={"task": task.name, "task_args": task_args(task), "n": n,
                                                          "problems": [p.id for p in problems],
                                                          "sampling": asdict(sampler.params)},
                       seed=seed, flops=FlopsLedger(Path(out_dir) / "flops.json").total,
                       wall_time_s=time.time() - start, task=task)
    return result
