"""The headline experiment on the CPU: PrefixRL against its baselines at equal FLOPs, 3 seeds.

    python benchmarks/headline.py [--config configs/benchmark.yaml] [--out runs/benchmark] [--seeds 0]

Runs `prefixrl experiment` (resumable: a killed run continues) and prints the headline table:
per split, each method's final unprefixed pass@1 (mean ± std over seeds), and PrefixRL's speedup
and final-reward ratio against each baseline with 90% intervals over seeds. The paper's targets:
speedup over sft-rl >= 2x, final training reward >= 3x rl's and >= 1.45x sft-rl's.

--smoke: the config at a test's size (written to OUT/smoke.yaml): 4 easy problems screened at n = 4,
prefixrl and rl, one seed, 2 steps of 4 problems x 4 samples: tests/test_benchmarks.py.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import yaml

from prefixrl.analysis import BOTH_AT_ZERO, ratio_text
from prefixrl.experiment import run_experiment

SMOKE = {"screen": {"problems": "easy", "limit": 4, "n": 4, "k": 4}, "methods": ["prefixrl", "rl"], "seeds": [0],
         "collect": {"max_attempts": 64, "attempts_per_round": 64}, "workers": 1, "heldout": 2,
         "budget_flops": 1e15, "train": {"steps": 2, "problems_per_step": 4, "num_generations": 4,
                                         "max_completion_length": 96, "eval_every": 2, "eval_n": 2},
         "calibration_traces": 1, "calibration_n": 2}


def config_with(config: str, out: str, overrides: dict, name: str) -> str:
    """The config with `overrides` over its own (dicts merged one level), written into out/name."""
    cfg = yaml.safe_load(Path(config).read_text())
    cfg.update({k: {**cfg.get(k, {}), **v} if isinstance(v, dict) else v for k, v in overrides.items()})
    Path(out).mkdir(parents=True, exist_ok=True)
    (Path(out) / name).write_text(yaml.safe_dump(cfg))
    return str(Path(out) / name)


def _x(value, interval, none: str = "not reached") -> str:
    ci = f" [{interval[0]:.2f}, {interval[1]:.2f}]" if interval and value not in (None, float("inf")) else ""
    return ratio_text(value, none) + ci


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", default="configs/benchmark.yaml")
    parser.add_argument("--out", default="runs/benchmark")
    parser.add_argument("--seeds", type=int, nargs="+", help="only these of the config's seeds, every method "
                        "(a seed's runs finish together; a later run without --seeds resumes and adds the rest)")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: the test of this script")
    args = parser.parse_args()
    start = time.time()
    config = config_with(args.config, args.out, SMOKE, "smoke.yaml") if args.smoke else args.config
    if args.seeds:
        config = config_with(config, args.out, {"seeds": args.seeds}, "seeds.yaml")
    summary = run_experiment(config, args.out)
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
