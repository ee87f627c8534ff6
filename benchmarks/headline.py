"""The headline experiment on the CPU: PrefixRL against its baselines at equal FLOPs, 3 seeds.

    python benchmarks/headline.py [--config configs/benchmark.yaml] [--out runs/benchmark]

Runs `prefixrl experiment` (resumable: a killed run continues) and prints the headline table:
per split, each method's final unprefixed pass@1 (mean ± std over seeds), and PrefixRL's speedup
and final-reward ratio against each baseline with 90% intervals over seeds. The paper's targets:
speedup over sft-rl >= 2x, final training reward >= 3x rl's and >= 1.45x sft-rl's.
"""

from __future__ import annotations

import argparse
import time

from prefixrl.analysis import BOTH_AT_ZERO, ratio_text
from prefixrl.experiment import run_experiment


def _x(value, interval, none: str = "not reached") -> str:
    ci = f" [{interval[0]:.2f}, {interval[1]:.2f}]" if interval and value not in (None, float("inf")) else ""
    return ratio_text(value, none) + ci


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", default="configs/benchmark.yaml")
    parser.add_argument("--out", default="runs/benchmark")
    args = parser.parse_args()
    start = time.time()
    summary = run_experiment(args.config, args.out)
    method = summary["method"]
    for split, numbers in summary["headline"].items():
        ours = numbers["final"][method]
        print(f"\n{split}: {method} final pass@1 {ours['mean']:.3f} ± {ours['std']:.3f}\n")
        print("| baseline | final pass@1 | speedup [90%] | final ratio [90%] |\n|---|---|---|---|")
        for baseline, row in numbers["against"].items():
            final = numbers["final"][baseline]
            print(f"| {baseline} | {final['mean']:.3f} ± {final['std']:.3f} | {_x(row['speedup'], row['speedup_ci'])} "
                  f"| {_x(row['final_ratio'], row['final_ratio_ci'], BOTH_AT_ZERO)} |")
    print("\nclaims:")
    for claim in summary["claims"]:
        print(f"- {claim['status']}: {claim['claim']} ({claim['evidence']})")
    print(f"\n{summary['total_flops']:.3g} FLOPs (data stages and training) in {(time.time() - start) / 60:.1f} min "
          f"(resumed runs count only this session's time); report: {args.out}/report/README.md")


if __name__ == "__main__":
    main()
