"""Is the task in PrefixRL's regime? Plain RL vs PrefixRL on the same hard problems and budget.

    python benchmarks/regime.py --task sort [--steps 60] [--properties runs/task-properties/sort]

Reads the hard problems and traces that `benchmarks/task_properties.py` wrote, then trains the
base model twice with identical settings: `rl` (unprefixed hard problems, n = 8) and `prefixrl`
(3 prefixes per trace at 40-80% + 1 unprefixed copy). Prints, per method, the unprefixed pass@1
on the hard training problems and on held-out problems before and after, the mean reward of
prefixed and unprefixed groups, and the share of groups with zero advantage (no gradient).
Property 5 of the README's task table: plain RL should stay flat while prefixed groups get reward.

--smoke: `chain`, the hard problems and traces of 4 of the demo's traces (tests/data, written into
OUT/properties), 2 steps of 4 problems x 4 samples, evaluations of 2 samples: tests/test_benchmarks.py.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from prefixrl.analysis import mean_metric, read_metrics
from prefixrl.files import read_jsonl, write_jsonl
from prefixrl.models import load_model, resolve_model
from prefixrl.prefixes import PrefixConfig, prefixed_problems
from prefixrl.tasks import load_problems, load_task, problems_by_id
from prefixrl.traces import load_traces
from prefixrl.engine import run_method
from prefixrl.train import TrainConfig

DEMO_TRACES = Path(__file__).resolve().parents[1] / "tests" / "data" / "chain_demo_traces.jsonl"
SMOKE_TRAIN = dict(problems_per_step=4, num_generations=4, max_completion_length=96, progress_bar=False)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="sort")
    parser.add_argument("--model", default=None, help="default: builtin:TASK")
    parser.add_argument("--properties", default=None, help="default: runs/task-properties/TASK")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--eval-every", type=int, default=20)
    parser.add_argument("--eval-n", type=int, default=16)
    parser.add_argument("--methods", nargs="+", default=["rl", "prefixrl"])
    parser.add_argument("--out", default=None, help="default: runs/regime/TASK")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: the test of this script")
    args = parser.parse_args()
    if args.smoke:
        parser.set_defaults(task="chain", steps=2, eval_every=2, eval_n=2)
        args = parser.parse_args()

    task = load_task(args.task)
    model_path = resolve_model(args.model or f"builtin:{args.task}")
    source = Path(args.properties or f"runs/task-properties/{args.task}")
    out = Path(args.out or f"runs/regime/{args.task}")
    if args.smoke and not args.properties:  # the demo's traces stand in for task_properties.py's
        source, demo = out / "properties", load_traces(DEMO_TRACES)[:4]
        by_id = problems_by_id(task)
        write_jsonl(source / "screen" / "hard.jsonl", [by_id[t["problem_id"]].to_dict() for t in demo])
        write_jsonl(source / "collect" / "traces.jsonl", demo)
    traces = load_traces(source / "collect" / "traces.jsonl")
    hard = {p.id: p for p in load_problems(task, str(source / "screen" / "hard.jsonl"))}
    solved = [hard[pid] for pid in dict.fromkeys(t["problem_id"] for t in traces)]
    _, tokenizer = load_model(model_path, device="cpu")
    rows = prefixed_problems(tokenizer, traces, hard, PrefixConfig())
    evals = {"hard": solved, "heldout": task.problems("heldout")[:len(solved)]}
    cfg = TrainConfig(steps=args.steps, lr=args.lr, eval_every=args.eval_every, eval_n=args.eval_n,
                      **(SMOKE_TRAIN if args.smoke else {}))

    results = {}
    for method in args.methods:
        run_dir = out / method
        run_method(method, task, model_path, rows, run_dir, cfg, traces=traces, eval_problems=evals)
        metrics, curve = read_metrics(run_dir / "metrics.jsonl"), read_jsonl(run_dir / "eval.jsonl")
        results[method] = {
            "hard pass@1": (curve[0]["eval/hard/pass@1"], curve[-1]["eval/hard/pass@1"]),
            "heldout pass@1": (curve[0]["eval/heldout/pass@1"], curve[-1]["eval/heldout/pass@1"]),
            "reward prefixed": mean_metric(metrics, "prefixed/reward"),
            "reward unprefixed": mean_metric(metrics, "unprefixed/reward"),
            "zero-adv groups": mean_metric(metrics, "unprefixed/zero_advantage") if method == "rl"
            else mean_metric(metrics, "prefixed/zero_advantage"),
        }
    print(f"\n{args.task}: {len(solved)} hard problems with a trace, {args.steps} steps, "
          f"{cfg.problems_per_step} problems x {cfg.num_generations} samples, lr {args.lr}\n")
    print("| method | hard pass@1 (start -> end) | held-out pass@1 | reward prefixed | reward unprefixed | "
          "zero-advantage groups |\n|---|---|---|---|---|---|")
    for method, r in results.items():
        print(f"| {method} | {r['hard pass@1'][0]:.3f} -> {r['hard pass@1'][1]:.3f} | "
              f"{r['heldout pass@1'][0]:.3f} -> {r['heldout pass@1'][1]:.3f} | {r['reward prefixed']:.3f} | "
              f"{r['reward unprefixed']:.4f} | {r['zero-adv groups']:.2f} |")


if __name__ == "__main__":
    main()
