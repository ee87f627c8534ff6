"""Seconds per PrefixRL training step against stock TRL `GRPOTrainer`, same model, batch, lengths
and prompts, in one process.

    python benchmarks/train_step.py [--model builtin:sort] [--task sort] [--steps 12]

Both trainers get the same prefixed rows, reward function and GRPOConfig; PrefixRLTrainer adds its
split metrics and FLOPs ledger. Prints seconds per step (first step excluded as warm-up), the
ratio (target: overhead 10% or less) and the share of step time spent generating (and scoring)
versus updating.
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
from prefixrl.train import PrefixRLTrainer, TrainConfig, grpo_config, reward_function


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


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="builtin:sort")
    parser.add_argument("--task", default="sort")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--problems-per-step", type=int, default=16)
    args = parser.parse_args()

    task = load_task(args.task)
    model_path = resolve_model(args.model)
    _, tokenizer = load_model(model_path, device="cpu")
    problems = {p.id: p for p in task.problems("train")}
    # prefixes of the base model's own samples stand in for traces: timing needs lengths, not correctness
    traces = [{"problem_id": p.id, "completion": c} for p, (_, c) in zip(task.problems("train"), task.corpus(64, seed=1))]
    rows = prefixed_problems(tokenizer, traces, problems, PrefixConfig())
    cfg = TrainConfig(steps=args.steps, problems_per_step=args.problems_per_step, eval_every=0, save_every=10**6)
    with tempfile.TemporaryDirectory() as tmp:
        stock = run(GRPOTrainer, model_path, rows, task, problems, cfg, Path(tmp) / "stock")
        ours = run(PrefixRLTrainer, model_path, rows, task, problems, cfg, Path(tmp) / "prefixrl",
                   flops_ledger=FlopsLedger())
    print(f"\n{args.steps} steps of {args.problems_per_step} problems x {cfg.num_generations} samples, "
          f"{torch.get_num_threads()} threads, model {args.model}\n")
    print(f"| {'trainer':16} | {'s/step':>7} | {'generate+score':>14} | {'update':>7} |")
    print(f"|{'-' * 18}|{'-' * 9}|{'-' * 16}|{'-' * 9}|")
    for name, (step, gen) in (("GRPOTrainer", stock), ("PrefixRLTrainer", ours)):
        print(f"| {name:16} | {step:7.3f} | {gen / step:14.0%} | {1 - gen / step:7.0%} |")
    print(f"\nPrefixRL / stock seconds per step: {ours[0] / stock[0]:.3f}  (target <= 1.10)")


if __name__ == "__main__":
    main()
