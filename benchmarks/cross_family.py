"""Cross-family traces: PrefixRL on traces another model wrote, with short and with long prefixes.

    python benchmarks/cross_family.py [--own-data runs/benchmark-chain] [--steps 120] [--out runs/cross-family]

The policy is `builtin:chain` (character tokens, 3 layers x 128; 90% of its corpus declares
strategy P). The other family, `builtin:chain-q`, differs in every way a tiny model can: tokenizer
(byte-level BPE), shape (4 x 96), pretraining seed, and style: 90% of its corpus declares strategy Q,
so its traces are mostly Q walks, which the policy rarely writes. (A correct `chain` walk is fixed
by its problem and strategy, so two models differing only in weights write the same correct
traces: style is what makes traces foreign here, as it does between real model families.)

Both models collect traces for the hard problems the policy's screen finds (the data stages of
`configs/benchmark-chain.yaml`; `--own-data` reuses a run folder's). Then PrefixRL trains the policy four
times with the same settings: {own, other} traces x {short (40-60% of the trace), long (60-80%)}
prefixes, each on the problems its traces solve (the two sets overlap little: a quarter of the hard
problems yield a trace within the cap). Held-out problems, never prefixed and the same for every
run, compare them. Prints, per run, unprefixed pass@1 on its training problems and on the held-out
ones, the mean prefixed reward, and the share of held-out answers declaring Q; writes out/README.md
with that table and out/heldout.png (held-out pass@1 over training). The paper: cross-family
traces still help, long cross-family prefixes less.

--smoke: the same stages at a test's size, for tests/test_benchmarks.py: 4 easy problems screened
at n = 4 (traces within 64 attempts), the four runs of 1 step of 4 problems x 4 samples, 2 held-out
problems evaluated with 2 samples at the start and end; the runs one after another in this process
(not two worker processes).
"""

from __future__ import annotations

import argparse
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from multiprocessing import get_context
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from rich.console import Console  # noqa: E402

from prefixrl.analysis import mean_metric, read_metrics  # noqa: E402
from prefixrl.experiment import ExperimentConfig, _init_worker  # noqa: E402
from prefixrl.files import atomic_write_text, read_jsonl  # noqa: E402
from prefixrl.engine import run_method  # noqa: E402
from prefixrl.pipeline import prepare_data  # noqa: E402
from prefixrl.prefixes import prefixed_problems, with_context_limit  # noqa: E402
from prefixrl.tasks import strategy_of  # noqa: E402

RANGES = {"short": (0.4, 0.6), "long": (0.6, 0.8)}


def train_one(name: str, task, model_path: str, rows: list[dict], traces: list[dict], evals: dict, cfg, out: Path):
    run_method("prefixrl", task, model_path, rows, out / name, cfg, traces=traces, eval_problems=evals)
    return name


def summarize(run: Path) -> dict:
    curve, metrics = read_jsonl(run / "eval.jsonl"), read_metrics(run / "metrics.jsonl")
    last = curve[-1]
    return {"steps": [row["step"] for row in curve], "heldout_curve": [row["eval/heldout/pass@1"] for row in curve],
            "hard": (curve[0]["eval/hard/pass@1"], last["eval/hard/pass@1"]),
            "heldout": (curve[0]["eval/heldout/pass@1"], last["eval/heldout/pass@1"]),
            "prefixed_reward": mean_metric(metrics, "prefixed/reward"),
            "q_share": (curve[0]["eval/heldout/strategy/carry"], last["eval/heldout/strategy/carry"])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/benchmark-chain.yaml", help="data stages and training settings")
    parser.add_argument("--trace-model", default="builtin:chain-q", help="the other family")
    parser.add_argument("--own-data", default=None, help="a run folder whose data stages to reuse (default: OUT/own)")
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--out", default="runs/cross-family")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: the test of this script")
    args = parser.parse_args()
    out, console = Path(args.out), Console()
    cfg = ExperimentConfig.from_yaml(args.config)
    if args.smoke:
        args.steps = 1
        cfg = replace(cfg, screen=replace(cfg.screen, problems="easy", limit=4, n=4, k=4), heldout=2,
                      collect=replace(cfg.collect, max_attempts=64, attempts_per_round=64),
                      train=replace(cfg.train, problems_per_step=4, num_generations=4, eval_every=1, eval_n=2))

    own = prepare_data(cfg, Path(args.own_data or out / "own"), console)
    other = prepare_data(replace(cfg, trace_model=args.trace_model), out / "other", console)
    # each source trains on the problems it found a trace for (they overlap little: a quarter of the
    # hard problems yield a trace within the cap), so held-out problems, the same for every run, compare them
    heldout = own.task.problems("heldout")[:cfg.heldout or 24]
    prefix_cfg = with_context_limit(cfg.prefixes, own.sampler.model, cfg.train.max_completion_length)
    train_cfg = replace(cfg.train, steps=args.steps, progress_bar=False)
    jobs = {}
    for source, data in (("own", own), ("other", other)):
        for length, (low, high) in RANGES.items():
            rows = prefixed_problems(own.sampler.tokenizer, data.traces, {p.id: p for p in data.hard},
                                     replace(prefix_cfg, low=low, high=high))
            jobs[f"{source}-{length}"] = (rows, data.traces, {"hard": data.solved, "heldout": heldout})
    if args.smoke:  # one after another in this process: starting two workers would triple the smoke's time
        console.rule(f"train: {len(jobs)} PrefixRL runs of {args.steps} steps, in this process")
        for name, (rows, traces, evals) in jobs.items():
            console.print(f"done: {train_one(name, own.task, own.model_path, rows, traces, evals, train_cfg, out)}")
    else:
        console.rule(f"train: {len(jobs)} PrefixRL runs of {args.steps} steps, two at a time")
        with ProcessPoolExecutor(2, mp_context=get_context("spawn"), initializer=_init_worker,
                                 initargs=(1, os.getpid())) as pool:
            for future in [pool.submit(train_one, name, own.task, own.model_path, rows, traces, evals, train_cfg, out)
                           for name, (rows, traces, evals) in jobs.items()]:
                console.print(f"done: {future.result()}")

    results = {name: summarize(out / name) for name in jobs}
    q_share = {source: np.mean([strategy_of(own.task, t["completion"]) == "carry" for t in data.traces])
               for source, data in (("own", own), ("other", other))}
    table = [f"Traces (problems solved of {len(own.hard)} hard; share declaring Q): own {len(own.solved)}, "
             f"{q_share['own']:.2f}; other ({args.trace_model}) {len(other.solved)}, {q_share['other']:.2f}. "
             f"PrefixRL, {args.steps} steps, lr {train_cfg.lr}, {train_cfg.problems_per_step} x "
             f"{train_cfg.num_generations} per step; {len(heldout)} held-out problems, {train_cfg.eval_n} samples each.",
             "", "| traces | prefixes | own training problems: pass@1 | held-out pass@1 | prefixed reward | "
             "unprefixed answers in Q |",
             "|---|---|---|---|---|---|"]
    for name, r in results.items():
        source, length = name.split("-")
        low, high = RANGES[length]
        table.append(f"| {source} | {length} ({low:.0%}-{high:.0%}) | {r['hard'][0]:.3f} -> {r['hard'][1]:.3f} | "
                     f"{r['heldout'][0]:.3f} -> {r['heldout'][1]:.3f} | {r['prefixed_reward']:.3f} | "
                     f"{r['q_share'][0]:.2f} -> {r['q_share'][1]:.2f} |")
    print("\n".join(table))

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, r in results.items():
        ax.plot(r["steps"], r["heldout_curve"], label=name, linestyle="-" if name.startswith("own") else "--")
    ax.set(xlabel="RL step", ylabel="held-out unprefixed pass@1", title="PrefixRL: own vs cross-family traces")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "heldout.png", dpi=120)
    atomic_write_text(out / "README.md", "# Cross-family traces\n\n" + "\n".join(table)
                      + "\n\n![held-out pass@1 over training](heldout.png)\n")
    console.print(f"report: {out / 'README.md'}")


if __name__ == "__main__":
    main()
