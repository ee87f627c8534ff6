"""Seconds per PrefixRL training step: today's defaults against the earlier path and against stock
TRL `GRPOTrainer`, same model, batch, lengths and prompts, in one process; and the update of one
batch with and without the split backward (the per-part gradient norms).

    python benchmarks/train_step.py [--model builtin:chain] [--task chain] [--steps 6] [--rounds 2]

Every trainer gets the same prefixed rows, reward function and GRPOConfig:
- stock GRPOTrainer (transformers' generate for the rollouts, one backward pass);
- PrefixRL, the earlier path: transformers' generate for the rollouts (sampler="hf") and every row
  through the update (skip_zero_advantage off), plus its split metrics, split backward and FLOPs
  ledger: its overhead over stock on the same work (target 10% or less);
- PrefixRL with the defaults: rollouts by generate_fast's decode loop (each prompt prefilled once
  for its 8 samples), rows whose advantage is 0 left out of the update (target >= 1.5x the earlier path).
On `chain` the rows are the demo's 13 traces' prefixes (tests/data), so the groups' rewards, and the
share of rows with advantage 0, are those of a run's first steps.
Prints seconds per step (first step excluded as warm-up), the share spent generating (and scoring)
versus updating, and the ratios. The trainers run one after another, --rounds times, in reversed
order every other round (a load that drifts over the run then weighs on all alike), and each
trainer's times are averaged over its rounds: on a shared machine only ratios from one run mean
anything. Then one mixed batch (prefixed and unprefixed rows) is updated --repeats times with and
without split_grad_norms, alternately, and the median times printed.

--smoke: each trainer for 2 steps (the first is the warm-up) of 4 problems x 4 samples of at most 64
tokens, one round, one timed update: tests/test_benchmarks.py; explicit flags still win.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from datasets import Dataset
from transformers import TrainerCallback
from trl import GRPOTrainer

from prefixrl.flops import FlopsLedger
from prefixrl.models import load_model, resolve_model
from prefixrl.prefixes import PrefixConfig, prefixed_problems
from prefixrl.tasks import load_task
from prefixrl.traces import load_traces
from prefixrl.train import PrefixRLTrainer, TrainConfig, grpo_config, reward_function

DEMO_TRACES = Path(__file__).resolve().parents[1] / "tests" / "data" / "chain_demo_traces.jsonl"


class StepTimer(TrainerCallback):
    def __init__(self):
        self.starts, self.durations = {}, []

    def on_step_begin(self, args, state, control, **kwargs):
        self.starts[state.global_step] = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.durations.append(time.perf_counter() - self.starts[state.global_step - 1])


def timed_generation(trainer) -> list[float]:
    """Wrap the trainer's generate-and-score phase to record its duration per step."""
    durations, inner = [], trainer._generate_and_score_completions

    def wrapper(inputs):
        start = time.perf_counter()
        out = inner(inputs)
        durations.append(time.perf_counter() - start)
        return out

    trainer._generate_and_score_completions = wrapper
    return durations


def run(trainer_cls, model_path, rows, task, problems, cfg, out: Path, **extra) -> tuple[float, float]:
    model, tokenizer = load_model(model_path, device="cpu")
    torch.manual_seed(cfg.seed)
    trainer = trainer_cls(model=model, reward_funcs=reward_function(task, problems), args=grpo_config(cfg, out),
                          train_dataset=Dataset.from_list(rows), processing_class=tokenizer, **extra)
    timer = StepTimer()
    trainer.add_callback(timer)
    generation = timed_generation(trainer)
    trainer.train()
    steps, gen = timer.durations[1:], generation[1:]
    return sum(steps) / len(steps), sum(gen) / len(gen)


def update_times(model_path, rows, task, problems, cfg, repeats: int) -> tuple[float, float]:
    """Median seconds of compute_loss + backward on one batch, with and without split_grad_norms."""
    model, tokenizer = load_model(model_path, device="cpu")
    with tempfile.TemporaryDirectory() as tmp:
        trainer = PrefixRLTrainer(model=model, reward_funcs=reward_function(task, problems), flops_ledger=FlopsLedger(),
                                  args=grpo_config(cfg, Path(tmp)), train_dataset=Dataset.from_list(rows),
                                  processing_class=tokenizer)
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = 1  # set by the training loop, which this skips
    quarter = cfg.problems_per_step // 4
    mixed = [r for r in rows if r["prefixed"]][:cfg.problems_per_step - quarter] + \
        [r for r in rows if not r["prefixed"]][:quarter]
    torch.manual_seed(0)
    batch = trainer._generate_and_score_completions([dict(r) for r in mixed for _ in range(cfg.num_generations)])
    batch["advantages"] = torch.randn(len(batch["advantages"]))  # every row trained
    times = {True: [], False: []}
    for _ in range(repeats):
        for split in times:
            trainer.split_grad_norms = split
            model.zero_grad(set_to_none=True)
            start = time.perf_counter()
            trainer.compute_loss(model, batch).backward()
            times[split].append(time.perf_counter() - start)
    return tuple(sorted(times[split])[repeats // 2] for split in (True, False))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="builtin:chain")
    parser.add_argument("--task", default="chain")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--problems-per-step", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7, help="updates timed with and without the split")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: the test of this script")
    args = parser.parse_args()
    if args.smoke:
        parser.set_defaults(steps=2, problems_per_step=4, rounds=1, repeats=1)
        args = parser.parse_args()

    task = load_task(args.task)
    model_path = resolve_model(args.model)
    _, tokenizer = load_model(model_path, device="cpu")
    problems = {p.id: p for p in task.problems("train")}
    if args.task == "chain":  # the demo's 13 traces: real prefixes, so groups get the rewards a run sees
        traces = load_traces(DEMO_TRACES)
    else:  # prefixes of corpus samples stand in for traces: right lengths, but rewards mostly 0
        traces = [{"problem_id": p.id, "completion": c} for p, (_, c) in zip(task.problems("train"), task.corpus(64, seed=1))]
    rows = prefixed_problems(tokenizer, traces, problems, PrefixConfig())
    cfg = TrainConfig(steps=args.steps, problems_per_step=args.problems_per_step, eval_every=0, save_every=10**6,
                      **(dict(num_generations=4, max_completion_length=64) if args.smoke else {}))
    trainers = {"GRPOTrainer (stock)": (GRPOTrainer, {}),
                "PrefixRL, earlier path": (PrefixRLTrainer, dict(sampler="hf", skip_zero_advantage=False)),
                "PrefixRL, defaults": (PrefixRLTrainer, {})}
    runs = {name: [] for name in trainers}
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(args.rounds):
            for name in list(trainers)[::-1 if round_ % 2 else 1]:
                cls, extra = trainers[name]
                if cls is PrefixRLTrainer:
                    extra = {**extra, "flops_ledger": FlopsLedger()}
                out = Path(tmp) / f"round-{round_}-trainer-{list(trainers).index(name)}"
                runs[name].append(run(cls, model_path, rows, task, problems, cfg, out, **extra))
    times = {name: tuple(sum(x) / len(x) for x in zip(*r)) for name, r in runs.items()}
    print(f"\n{args.steps} steps of {args.problems_per_step} problems x {cfg.num_generations} samples, {args.rounds} rounds, "
          f"{torch.get_num_threads()} threads, model {args.model}\n")
    print(f"| {'trainer':24} | {'s/step':>7} | {'generate+score':>14} | {'update':>7} |")
    print(f"|{'-' * 26}|{'-' * 9}|{'-' * 16}|{'-' * 9}|")
    for name, (step, gen) in times.items():
        print(f"| {name:24} | {step:7.3f} | {gen / step:14.0%} | {1 - gen / step:7.0%} |")
    step = {name: t[0] for name, t in times.items()}
    print(f"\nearlier path / defaults: {step['PrefixRL, earlier path'] / step['PrefixRL, defaults']:.2f}  (target >= 1.5)")
    print(f"PrefixRL (earlier path) / stock: {step['PrefixRL, earlier path'] / step['GRPOTrainer (stock)']:.3f}  "
          "(target <= 1.10)")
    print(f"PrefixRL (defaults) / stock: {step['PrefixRL, defaults'] / step['GRPOTrainer (stock)']:.3f}")
    split, single = update_times(model_path, rows, task, problems, cfg, args.repeats)
    print(f"\none update of {args.problems_per_step} problems x {cfg.num_generations} samples, a quarter of them "
          f"unprefixed (median of {args.repeats}): split backward {split:.2f} s, single pass {single:.2f} s, "
          f"split / single {split / single:.2f}")


if __name__ == "__main__":
    main()
