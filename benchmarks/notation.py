"""Does a prefix help when the trace is written in a notation the policy never writes?

    python benchmarks/notation.py [--traces runs/benchmark-chain/traces/traces.jsonl] [--n 64]

Takes the policy's own correct `chain` traces (a finished benchmark's) and rewrites each two moves
per written step (" L40/16 L05/15" -> " LL05/15"): the same walk, in a layout the base model never
saw. Prints the base policy's success rate conditioned on prefixes of both versions, by prefix
fraction. A continuation may mix the layouts; it is scored by expanding every two-move step
back into two one-move steps and asking the task's own verifier.

--smoke: the same table from 2 of the demo's traces (tests/data/chain_demo_traces.jsonl), n = 4,
for tests/test_benchmarks.py; explicit flags still win.
"""

from __future__ import annotations

import argparse
import re
import tempfile
from pathlib import Path

import torch

from prefixrl.generate import HFSampler, SamplingParams
from prefixrl.models import load_model, resolve_model
from prefixrl.prefixes import calibrate, success_curve
from prefixrl.tasks import load_task, problems_by_id
from prefixrl.tasks.chain import move
from prefixrl.traces import load_traces

DEMO_TRACES = Path(__file__).resolve().parents[1] / "tests" / "data" / "chain_demo_traces.jsonl"

FRACTIONS = (0.0, 0.2, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
STEP = re.compile(r" ([LR]{1,2})(\d\d)/(\d+)")  # one move, or two ("LR45/14")


def two_moves_per_step(completion: str) -> str:
    """" P L40/16 L05/15 R56/14 =.." -> " P LL05/15 R56/14 =..": each pair of moves writes one state."""
    head, steps, answer = completion.split()[0], STEP.findall(completion), completion.rpartition(" =")[2]
    merged = ["".join(op for op, _, _ in steps[i:i + 2]) + "{}/{}".format(*steps[i:i + 2][-1][1:])
              for i in range(0, len(steps), 2)]
    return f" {head} " + " ".join(merged) + f" ={answer}"


class ExpandingVerifier:
    """The chain task, reading two-move steps too: "LR45/14" becomes the two steps it stands for."""

    def __init__(self, task):
        self.task = task

    def __getattr__(self, name):
        return getattr(self.task, name)

    def verify(self, problem, solution: str):
        (a, b), steps = divmod(int(problem.prompt.split()[0]), 10), []
        for ops, pair, left in STEP.findall(solution):
            if len(ops) == 2:  # the state between the two moves, as a one-move step would write it
                a, b = move(a, b, ops[0])
                steps.append(f" {ops[0]}{a}{b}/{int(left) + 1}")
            steps.append(f" {ops[-1]}{pair}/{left}")
            a, b = int(pair[0]), int(pair[1])
        expanded = re.sub(f"(?:{STEP.pattern})+", "".join(steps), solution, count=1)
        return self.task.verify(problem, expanded)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--traces", default="runs/benchmark-chain/traces/traces.jsonl")
    parser.add_argument("--model", default="builtin:chain")
    parser.add_argument("--n", type=int, default=64)
    parser.add_argument("--limit", type=int, default=None, help="traces used (default: all)")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: the test of this script")
    args = parser.parse_args()
    if args.smoke:
        parser.set_defaults(traces=str(DEMO_TRACES), n=4, limit=2)
        args = parser.parse_args()
    torch.set_num_threads(1)
    task = ExpandingVerifier(load_task("chain"))
    problems = problems_by_id(task.task)
    own = load_traces(args.traces)[:args.limit]
    rewritten = [{**t, "completion": two_moves_per_step(t["completion"])} for t in own]
    for trace in rewritten:  # the rewrite keeps every trace correct
        assert task.verify(problems[trace["problem_id"]], trace["completion"]).reward == 1.0, trace["completion"]
    model, tokenizer = load_model(resolve_model(args.model), device="cpu")
    sampler = HFSampler(model, tokenizer, SamplingParams(temperature=1.0, max_new_tokens=128, batch_size=256))
    curves = {}
    for name, traces in (("own notation", own), ("two moves per step", rewritten)):
        with tempfile.TemporaryDirectory() as out:
            curves[name] = success_curve(calibrate(task, sampler, tokenizer, traces, problems, out,
                                                   fractions=FRACTIONS, n=args.n, quiet=True))
    print(f"\nbase policy's success conditioned on prefixes of {len(own)} traces, n = {args.n}; example:\n"
          f"  own: {own[0]['completion']}\n  two: {rewritten[0]['completion']}\n")
    print("| traces | " + " | ".join(f"{f:.0%}" for f in FRACTIONS) + " |\n|---|" + "---|" * len(FRACTIONS))
    for name, curve in curves.items():
        print(f"| {name} | " + " | ".join(f"{curve[f]:.3f}" for f in FRACTIONS) + " |")


if __name__ == "__main__":
    main()
