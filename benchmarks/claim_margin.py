"""The demo's claim at a test's budget, over seeds and thread counts: does unprefixed pass@1 rise?

    python benchmarks/claim_margin.py [--seeds 0 1 2 3 4] [--threads 1 2] [--steps 80] [--lr 2e-4]

An RL run's trajectory depends on float order (CPU, BLAS kernels, thread count), so an outcome is
measured here over seeds and thread counts, which stand in for other machines: each (seed, threads)
trains tests/test_demo_claim.py's setting in its own process (the demo's 13 traces, 3 cuts + 1
unprefixed copy each, 16 problems x 8 samples per step), and the last checkpoints are scored on
the 13 unprefixed problems (32 samples at temperature 0.7): pass@1, and the share of moves that
follow the declared rule (`ChainTask.rule_share`, the per-decision skill that pass@1 raises to the
power of 16-18 moves). Prints one table per measure: rows are runs, columns checkpoints. Measured
(README, issue 17): at 80 steps, 0.418-0.683 in 9 trajectories, so the unprefixed claim is left to
this script and the test asserts the prefixed reward's rise, which held in all of them.

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
TRACES = ROOT / "tests" / "data" / "chain_demo_traces.jsonl"


def train_one(out: Path, seed: int, threads: int, steps: int, lr: float, eval_n: int, smoke: bool = False) -> dict:
    """In this process (started with OMP_NUM_THREADS=threads): train, then score every checkpoint."""
    import torch

    from prefixrl.generate import HFSampler, SamplingParams
    from prefixrl.models import load_model, resolve_model
    from prefixrl.prefixes import PrefixConfig, prefixed_problems, render_prompt
    from prefixrl.tasks import load_task, problems_by_id
    from prefixrl.traces import load_traces
    from prefixrl.train import TrainConfig, train

    torch.set_num_threads(threads)
    task = load_task("chain")
    traces = load_traces(TRACES)
    by_id = problems_by_id(task)
    problems = [by_id[t["problem_id"]] for t in traces]
    path = resolve_model("builtin:chain")
    _, tokenizer = load_model(path, device="cpu")
    rows = prefixed_problems(tokenizer, traces, {p.id: p for p in problems}, PrefixConfig())
    cfg = TrainConfig(steps=steps, problems_per_step=4 if smoke else 16, num_generations=4 if smoke else 8, lr=lr,
                      max_completion_length=128,
                      eval_every=0, save_every=10, seed=seed, progress_bar=False)
    train(task, path, rows, out, cfg)
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
        run = args.out / f"lr{args.lr:g}-steps{args.steps}-seed{seed}-threads{threads}"
        if not (run / "scores.json").exists():
            scores = train_one(run, seed, threads, args.steps, args.lr, args.eval_n, args.smoke)
            (run / "scores.json").write_text(json.dumps(scores))
        return
    results = {}
    for seed in args.seeds:
        for threads in args.threads:  # a fresh process: the thread count is fixed before torch starts
            env = {**os.environ, "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1"}
            subprocess.run([sys.executable, __file__, "--one", str(seed), str(threads), "--steps", str(args.steps),
                            "--lr", str(args.lr), "--eval-n", str(args.eval_n), "--out", str(args.out)]
                           + ["--smoke"] * args.smoke,
                           env=env, check=True, stdout=subprocess.DEVNULL)
            run = args.out / f"lr{args.lr:g}-steps{args.steps}-seed{seed}-threads{threads}"
            results[(seed, threads)] = json.loads((run / "scores.json").read_text())
    steps = sorted({int(s) for r in results.values() for s in r})
    for measure in ("pass@1", "rule_share"):
        print(f"\nunprefixed {measure} on the 13 trained problems ({args.eval_n} samples each), lr {args.lr:g}")
        print("| seed | threads | " + " | ".join(f"step {s}" for s in steps) + " |")
        print("|---|---|" + "---|" * len(steps))
        for (seed, threads), scores in results.items():
            print(f"| {seed} | {threads} | " + " | ".join(f"{scores[str(s)][measure]:.3f}" for s in steps) + " |")


if __name__ == "__main__":
    main()
