"""Measure the properties that make a task the regime PrefixRL is for (README's task table).

    python benchmarks/task_properties.py --task sort [--model builtin:sort] [--problems 64]

1. hard:        share of hard-split problems with pass@512 = 0 under the base model
2. findable:    share of those for which rejection sampling (cap 2,500) finds a correct trace
3. prefix:      success rate conditioned on a prefix of a correct trace, by prefix fraction
4. solutions:   from a 50% prefix of each calibration trace, n samples: share correct and the
                number of distinct correct continuations (1 when a correct walk is unique, as
                in `chain`; many when a trace's choices are one of many correct ones, as in `mines`)
5. strategies:  strategy markers in correct traces; success when forced into each strategy;
                for tasks that can say it (chain), how close each rule comes to a fixed pattern
                of moves, a shortcut RL would learn instead of the rule
6. (plain RL stays flat): measured by the training benchmark once training exists
plus execution: easy-split pass@1 against the chance rate of a policy that executes every step
right and decides as its corpus does (sort: at random; chain: by the rule at rule_bias of the
moves, else at random): a ratio of about 1.0 means the base model executes reliably and knows
no more of the rule than its corpus showed.
Every stage resumes from --out, so a killed run continues.

--smoke: every stage at a test's size, for tests/test_benchmarks.py: 4 easy problems x 4 samples,
4 problems screened at n = 4 from the easy split (so that a few fail and have a trace within a cap
of 32), 2 calibration traces x 2 samples, forced strategies on 2 problems x 4; explicit flags still win.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from prefixrl.evaluate import pass_at_k, score_problems
from prefixrl.files import atomic_write_text, read_jsonl
from prefixrl.generate import HFSampler, SamplingParams
from prefixrl.models import load_model, resolve_model
from prefixrl.prefixes import calibrate, success_curve
from prefixrl.screen import screen
from prefixrl.tasks import load_task
from prefixrl.traces import CollectConfig, collect


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="sort")
    parser.add_argument("--model", default=None, help="default: builtin:TASK")
    parser.add_argument("--problems", type=int, default=64, help="hard-split problems screened")
    parser.add_argument("--n", type=int, default=512, help="screening samples (pass@n)")
    parser.add_argument("--cap", type=int, default=2500, help="rejection-sampling cap")
    parser.add_argument("--calibration-traces", type=int, default=16)
    parser.add_argument("--calibration-n", type=int, default=64)
    parser.add_argument("--out", default=None, help="default: runs/task-properties/TASK")
    parser.add_argument("--quiet", action="store_true")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: the test of this script")
    args = parser.parse_args()
    if args.smoke:
        parser.set_defaults(problems=4, n=4, cap=32, calibration_traces=2, calibration_n=2)
        args = parser.parse_args()
    easy_n, split, per_round, forced = (4, "easy", 32, (2, 4)) if args.smoke else (64, "train", 256, (16, 256))

    task = load_task(args.task)
    model_name = args.model or f"builtin:{args.task}"
    out = Path(args.out or f"runs/task-properties/{args.task}")
    model, tokenizer = load_model(resolve_model(model_name))
    sampler = HFSampler(model, tokenizer, SamplingParams(temperature=1.0, max_new_tokens=128, batch_size=512))
    result = {"task": task.name, "model": model_name}

    easy = task.problems("easy")[:4 if args.smoke else None]
    easy_rows = score_problems(task, sampler, easy, easy_n, out / "easy", quiet=args.quiet)
    result["easy_pass@1"] = float(np.mean([r["correct"] / r["n"] for r in easy_rows]))
    result["easy_chance"] = float(np.mean([task.chance(p) for p in easy])) if hasattr(task, "chance") else None

    problems = task.problems(split)[:args.problems]
    hard = screen(task, sampler, problems, out / "screen", n=args.n, seed=1, quiet=args.quiet)
    rows = read_jsonl(out / "screen" / "scores.jsonl")
    result["hard_pass@1"] = float(np.mean([r["correct"] / r["n"] for r in rows]))
    result["hard_chance"] = float(np.mean([task.chance(p) for p in problems])) if hasattr(task, "chance") else None
    result[f"share_pass@{args.n}=0"] = len(hard) / len(problems)
    result[f"mean_pass@{args.n}"] = float(np.mean([pass_at_k(r["n"], r["correct"], r["n"]) for r in rows]))

    traces = collect(task, sampler, hard, out / "collect", CollectConfig(max_attempts=args.cap,
                                                                           attempts_per_round=per_round),
                     source=model_name, quiet=args.quiet)
    summary = json.loads((out / "collect" / "collect.json").read_text())
    result["share_hard_with_trace"] = summary["share_solved"]
    result["mean_attempts_per_trace"] = summary["mean_attempts_solved"]

    by_id = {p.id: p for p in hard}
    calibration = calibrate(task, sampler, tokenizer, traces[:args.calibration_traces], by_id, out / "calibrate",
                            n=args.calibration_n, quiet=args.quiet)
    result["success_vs_prefix_fraction"] = success_curve(calibration)
    result["continuations_from_50%_prefix"] = _distinct_continuations(
        task, sampler, tokenizer, traces[:args.calibration_traces], by_id, args.calibration_n)
    result["strategies_in_traces"] = _strategy_counts(task, traces)
    result["forced_strategy_success"] = _forced_strategy_success(task, sampler, hard[:forced[0]], n=forced[1])
    if hasattr(task, "shortcuts"):
        for strategy, measure in task.shortcuts(problems).items():
            result[f"rule {strategy}: move strings"] = measure
    atomic_write_text(out / "properties.json", json.dumps(result, indent=2))
    _print_table(result, args.n)


def _distinct_continuations(task, sampler, tokenizer, traces, by_id, n: int) -> dict[str, float]:
    """Per trace, n samples from its 50% prefix: share correct, distinct correct continuations
    (mean over traces), and their ratio to the correct ones (1.0: every correct one differs)."""
    from prefixrl.prefixes import prefix_at, render_prompt, token_offsets
    from prefixrl.tasks import verify_all

    correct, distinct = [], []
    for index, trace in enumerate(traces):
        problem, text = by_id[trace["problem_id"]], trace["completion"]
        offsets = token_offsets(tokenizer, text)
        prefix = prefix_at(text, offsets, round(0.5 * len(offsets)))
        group = sampler.generate([render_prompt(tokenizer, problem.prompt, prefix)], n, seed=3 + index)[0]
        verdicts = verify_all(task, [(problem, prefix + s.text) for s in group])
        good = [s.text.rstrip() for s, v in zip(group, verdicts) if v.reward > 0]
        correct.append(len(good) / n)
        distinct.append(len(set(good)))
    n_correct = sum(correct) * n
    return {"share correct": float(np.mean(correct)), "distinct correct per trace": float(np.mean(distinct)),
            "distinct / correct": float(sum(distinct) / n_correct) if n_correct else float("nan")}


def _strategy_counts(task, traces) -> dict[str, int]:
    from prefixrl.tasks import strategy_of

    counts: dict[str, int] = {}
    for trace in traces:
        name = strategy_of(task, trace["completion"]) or "none"
        counts[name] = counts.get(name, 0) + 1
    return counts


def _forced_strategy_success(task, sampler, problems, n: int = 256) -> dict[str, float]:
    """Success rate when the solution is started with a strategy's marker (the strategy forced)."""
    result = {}
    for name, marker in task.strategy_markers.items():
        marker = marker.rstrip()  # the marker as it starts a solution
        samples = sampler.generate([p.prompt + marker for p in problems], n, seed=2)
        scores = [task.verify(p, marker + s.text).reward for p, group in zip(problems, samples) for s in group]
        result[name] = float(np.mean(scores))
    return result


def _print_table(result: dict, n: int) -> None:
    print(f"\n| property | {result['task']} |\n|---|---|")
    for key, value in result.items():
        if key in ("task",):
            continue
        if isinstance(value, float):
            value = f"{value:.3g}"
        elif isinstance(value, dict):
            value = ", ".join(f"{k}: {v:.3g}" if isinstance(v, float) else f"{k}: {v}" for k, v in value.items())
        print(f"| {key} | {value} |")


if __name__ == "__main__":
    main()
