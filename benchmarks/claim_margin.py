"""A claim test's outcome at its budget, over seeds and thread counts.

    python benchmarks/claim_margin.py [--seeds 0 1 2 3 4] [--threads 1 2] [--steps 80] [--lr 2e-4]
    python benchmarks/claim_margin.py --task minefield --steps 60 [--seeds ...] [--threads ...]

An RL run's trajectory depends on float order (CPU, BLAS kernels, thread count), so an outcome is
measured here over seeds and thread counts, which stand in for other machines: each (seed, threads)
trains tests/test_demo_claim.py's setting in its own process (the demo's 13 traces, 3 cuts + 1
unprefixed copy each, 16 problems x 8 samples per step), and the last checkpoints are scored on
the 13 unprefixed problems (32 samples at temperature 0.7): pass@1, and the share of moves that
follow the declared rule (`ChainTask.rule_share`, the per-decision skill that pass@1 raises to the
power of 16-18 moves). Prints one table per measure: rows are runs, columns checkpoints. Measured
(README, issue 17): at 80 steps, 0.418-0.683 in 9 trajectories, so the unprefixed claim is left to
this script and the test asserts the prefixed reward's rise, which held in all of them.

--task minefield: tests/test_minefield_claim.py's setting (its 16 shipped traces, the same cuts and
sizes); per run, the share of unprefixed and of prefixed groups with a gradient over steps 1-10, and
the prefixed reward over the first and the last 10 steps (the test's three margins).

--smoke: one run (seed 0, 1 thread) of 1 step of 4 problems x 4 samples, scored with 2 samples per
problem, into --out: tests/test_benchmarks.py; explicit flags still win.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TRACES = {"chain": ROOT / "tests" / "data" / "chain_demo_traces.jsonl",
          "minefield": ROOT / "tests" / "data" / "minefield_traces.jsonl"}


def train_one(out: Path, task_name: str, seed: int, threads: int, steps: int, lr: float, smoke: bool = False):
    """In this process (started with OMP_NUM_THREADS=threads): the test's training run, checkpoints
    every 10 steps. Returns the task, the base model's path and the trained problems."""
    import torch

    from prefixrl.models import load_model, resolve_model
    from prefixrl.prefixes import PrefixConfig, prefixed_problems
    from prefixrl.tasks import load_task, problems_by_id
    from prefixrl.traces import load_traces
    from prefixrl.train import TrainConfig, train

    torch.set_num_threads(threads)
    task = load_task(task_name)
    traces = load_traces(TRACES[task_name])
    by_id = problems_by_id(task)
    problems = [by_id[t["problem_id"]] for t in traces]
    path = resolve_model(f"builtin:{task_name}")
    _, tokenizer = load_model(path, device="cpu")
    rows = prefixed_problems(tokenizer, traces, {p.id: p for p in problems}, PrefixConfig())
    cfg = TrainConfig(steps=steps, problems_per_step=4 if smoke else 16, num_generations=4 if smoke else 8, lr=lr,
                      max_completion_length=128,
                      eval_every=0, save_every=10, seed=seed, progress_bar=False)
    train(task, path, rows, out, cfg)
    return task, path, problems


def signal_and_gain(out: Path) -> dict:
    """tests/test_minefield_claim.py's measures, from the run's metrics: the share of unprefixed and
    of prefixed groups with a nonzero advantage over steps 1-10, and the prefixed reward over the
    first and the last 10 steps."""
    from prefixrl.files import read_jsonl

    rows = [row for row in read_jsonl(out / "metrics.jsonl") if "prefixed/reward" in row]

    def mean(key, part, signal=False):
        values = [1 - row[key] if signal else row[key] for row in part if key in row]
        return sum(values) / max(len(values), 1)

    return {"unprefixed signal 1-10": mean("unprefixed/zero_advantage", rows[:10], signal=True),
            "prefixed signal 1-10": mean("prefixed/zero_advantage", rows[:10], signal=True),
            "prefixed reward 1-10": mean("prefixed/reward", rows[:10]),
            "prefixed reward last 10": mean("prefixed/reward", rows[-10:])}


def score_checkpoints(out: Path, task, path, problems, steps: int, eval_n: int) -> dict:
    """The chain claim's measures: every checkpoint's unprefixed pass@1 and rule share."""
    from prefixrl.generate import HFSampler, SamplingParams
    from prefixrl.models import load_model
    from prefixrl.prefixes import render_prompt

    checkpoints = {0: path, **{int(c.name.split("-")[1]): c for c in out.glob("checkpoints/checkpoint-*")},
                   steps: out / "model"}
    scores = {}
    for step, folder in sorted(checkpoints.items()):
        model, tok = load_model(str(folder), device="cpu")
        sampler = HFSampler(model, tok, SamplingParams(temperature=0.7, max_new_tokens=128, batch_size=512))
        samples = sampler.generate([render_prompt(tok, p.prompt) for p in problems], eval_n, seed=12345)
        pairs = [(p, s.text) for p, group in zip(problems, samples) for s in group]
        shares = [v for v in (task.rule_share(p, text) for p, text in pairs) if v is not None]
        scores[step] = {"pass@1": sum(task.verify(p, text).reward for p, text in pairs) / len(pairs),
                        "rule_share": sum(shares) / max(len(shares), 1)}
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", choices=sorted(TRACES), default="chain")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--steps", type=int, default=80)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--eval-n", type=int, default=32)
    parser.add_argument("--out", type=Path, default=Path("runs/claim-margin"))
    parser.add_argument("--one", nargs=2, type=int, help=argparse.SUPPRESS)  # seed threads: the worker
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: the test of this script")
    args = parser.parse_args()
    if args.smoke:
        parser.set_defaults(seeds=[0], threads=[1], steps=1, eval_n=2)
        args = parser.parse_args()
    if args.one:
        seed, threads = args.one
        run = args.out / run_name(args, seed, threads)
        if not (run / "scores.json").exists():
            task, path, problems = train_one(run, args.task, seed, threads, args.steps, args.lr, args.smoke)
            scores = (signal_and_gain(run) if args.task == "minefield"
                      else score_checkpoints(run, task, path, problems, args.steps, args.eval_n))
            (run / "scores.json").write_text(json.dumps(scores))
        return
    results = {}
    for seed in args.seeds:
        for threads in args.threads:  # a fresh process: the thread count is fixed before torch starts
            env = {**os.environ, "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1"}
            subprocess.run([sys.executable, __file__, "--one", str(seed), str(threads), "--task", args.task,
                            "--steps", str(args.steps),
                            "--lr", str(args.lr), "--eval-n", str(args.eval_n), "--out", str(args.out)]
                           + ["--smoke"] * args.smoke,
                           env=env, check=True, stdout=subprocess.DEVNULL)
            results[(seed, threads)] = json.loads((args.out / run_name(args, seed, threads) / "scores.json").read_text())
    if args.task == "minefield":
        print_gain_table(results, args)
        return
    steps = sorted({int(s) for r in results.values() for s in r})
    for measure in ("pass@1", "rule_share"):
        print(f"\nunprefixed {measure} on the 13 trained problems ({args.eval_n} samples each), lr {args.lr:g}")
        print("| seed | threads | " + " | ".join(f"step {s}" for s in steps) + " |")
        print("|---|---|" + "---|" * len(steps))
        for (seed, threads), scores in results.items():
            print(f"| {seed} | {threads} | " + " | ".join(f"{scores[str(s)][measure]:.3f}" for s in steps) + " |")


def run_name(args, seed: int, threads: int) -> str:
    task = "" if args.task == "chain" else f"{args.task}-"
    return f"{task}lr{args.lr:g}-steps{args.steps}-seed{seed}-threads{threads}"


def print_gain_table(results: dict, args) -> None:
    measures = next(iter(results.values())).keys()
    print(f"\n{args.task}: {args.steps} steps at lr {args.lr:g}, tests/test_minefield_claim.py's setting")
    print("| seed | threads | " + " | ".join(measures) + " | gain |")
    print("|---|---|" + "---|" * (len(measures) + 1))
    for (seed, threads), scores in results.items():
        gain = scores["prefixed reward last 10"] - scores["prefixed reward 1-10"]
        print(f"| {seed} | {threads} | " + " | ".join(f"{v:.3f}" for v in scores.values()) + f" | {gain:.3f} |")


if __name__ == "__main__":
    main()
