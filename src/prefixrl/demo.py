"""The demo: the pipeline end to end on a built-in task, on a laptop CPU.

    prefixrl demo --config configs/demo.yaml --out runs/demo

base model -> screen (hard = pass@k 0) -> collect (rejection sampling) -> prefixes (+ calibration)
-> PrefixRL training -> unprefixed evaluation of base and trained policy -> report (table, figures).
Each stage writes its own folder under the run folder and resumes from it, so a killed demo
continues where it stopped.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from rich.console import Console
from rich.table import Table

from prefixrl.evaluate import evaluate
from prefixrl.files import atomic_write_text, read_jsonl
from prefixrl.flops import FlopsLedger
from prefixrl.generate import SamplingParams, make_sampler
from prefixrl.config import CALIBRATION_N
from prefixrl.engine import run_method
from prefixrl.pipeline import PipelineConfig, prepare_data
from prefixrl.prefixes import calibrate, success_curve
from prefixrl.report import (markdown_table, plot_back_generalization, plot_reward_vs_flops, plot_success_vs_prefix,
                             trace_strategy_shares)
from prefixrl.runinfo import write_manifest
from prefixrl.train import TrainConfig


@dataclass
class EvalConfig:
    n: int = 32  # samples per problem (unprefixed)
    temperature: float = 0.7  # the paper's
    calibration_n: int = CALIBRATION_N  # samples per prefix fraction for the success-vs-prefix curve
    calibration_traces: int = 8


@dataclass
class DemoConfig(PipelineConfig):
    method: str = "prefixrl"
    train: TrainConfig = field(default_factory=TrainConfig)
    evaluate: EvalConfig = field(default_factory=EvalConfig)


def run_demo(config_path: str | Path, out: str | Path, quiet: bool = False, console: Console | None = None,
             report_to: str | None = None) -> dict:
    console = console or Console()
    cfg = DemoConfig.from_yaml(config_path)
    if report_to:  # the trackers training also logs to (over the config's train.report_to)
        cfg.train = replace(cfg.train, report_to=report_to)
    out = Path(out)
    start = time.time()
    atomic_write_text(out / "config.json", json.dumps(asdict(cfg), indent=2))
    console.print("[bold]prefixrl demo[/bold]")
    data = prepare_data(cfg, out, console, quiet, max_completion_length=cfg.train.max_completion_length)
    task, model_path, traces, solved = data.task, data.model_path, data.traces, data.solved
    by_id = {p.id: p for p in data.hard}
    calibration_traces = traces[:cfg.evaluate.calibration_traces]
    base_curve = success_curve(calibrate(task, data.sampler, data.sampler.tokenizer, calibration_traces, by_id,
                                         out / "prefixes" / "base", n=cfg.evaluate.calibration_n, seed=cfg.seed,
                                         quiet=quiet))

    console.rule(f"train: {cfg.method}")
    evals = {"hard": solved, "heldout": task.problems("heldout")[:len(solved)]}
    trained = run_method(cfg.method, task, model_path, data.rows, out / "train", cfg.train, traces=traces,
                         eval_problems=evals, prior_flops=data.collect_flops, prefix_cfg=cfg.prefixes)

    console.rule("evaluate: unprefixed pass@k, base vs trained")
    results = {}
    for name, path in (("base", model_path), ("trained", str(trained))):
        eval_sampler = make_sampler(None, path, SamplingParams(
            temperature=cfg.evaluate.temperature, max_new_tokens=cfg.sampling.max_new_tokens,
            batch_size=cfg.sampling.batch_size, backend=cfg.sampling.backend))
        for split, split_problems in evals.items():
            results[(name, split)] = evaluate(task, eval_sampler, split_problems, cfg.evaluate.n,
                                              out / "evaluate" / f"{name}-{split}", seed=cfg.seed, quiet=quiet)
    # success vs prefix at the sampling temperature, as for the base policy above
    trained_curve = success_curve(calibrate(task, make_sampler(None, str(trained), cfg.sampling),
                                            data.sampler.tokenizer, calibration_traces, by_id,
                                            out / "prefixes" / "trained", n=cfg.evaluate.calibration_n,
                                            seed=cfg.seed, quiet=quiet))

    ledger = FlopsLedger(out / "flops.json", fresh=True)
    for stage in ("screen", "traces", "train"):
        ledger.merge(FlopsLedger(out / stage / "flops.json") if stage != "train" else _training_only(out))
    summary = _write_report(out, cfg, data, results, ledger, {"base": base_curve, "trained": trained_curve})
    _print_summary(console, summary, out)
    write_manifest(out, stage="demo", config=asdict(cfg), seed=cfg.seed, flops=ledger.total,
                   wall_time_s=time.time() - start, extra={"summary": summary})
    return summary


def _training_only(out: Path) -> FlopsLedger:
    """The training run's ledger without the collection FLOPs it was charged (counted once, above)."""
    ledger = FlopsLedger()
    ledger.stages = {k: v for k, v in FlopsLedger(out / "train" / "flops.json").stages.items() if k != "collect"}
    return ledger


def _write_report(out: Path, cfg: DemoConfig, data, results, ledger, curves) -> dict:
    eval_rows = read_jsonl(out / "train" / "eval.jsonl")
    figures = {"unprefixed pass@1 vs FLOPs": "reward_vs_flops.png", "success vs prefix fraction": "success_vs_prefix.png"}
    plot_reward_vs_flops({cfg.method: eval_rows}, out / "report" / figures["unprefixed pass@1 vs FLOPs"],
                         marker_flops=data.collect_flops.total)
    plot_success_vs_prefix(curves, out / "report" / figures["success vs prefix fraction"])
    if data.task.strategy_markers:
        figures["back-generalization"] = "back_generalization.png"
        plot_back_generalization({cfg.method: [{"eval": eval_rows, "metrics": []}]}, list(data.task.strategy_markers),
                                 trace_strategy_shares(data.task, data.traces), out / "report" / figures["back-generalization"])
    table = [[f"{split} ({results[('base', split)]['problems']})",
              results[("base", split)]["pass@1"], results[("trained", split)]["pass@1"],
              results[("base", split)].get("pass@8", float("nan")), results[("trained", split)].get("pass@8", float("nan"))]
             for split in ("hard", "heldout")]
    flops_rows = [[stage, entry["flops"]] for stage, entry in ledger.stages.items()]
    text = "\n\n".join([
        f"# prefixrl demo: {data.task.name}",
        f"Screened {len(data.screened)} problems; {len(data.hard)} had pass@{cfg.screen.k} = 0; rejection sampling "
        f"(cap {cfg.collect.max_attempts}) found traces for {len(data.solved)}. Method: `{cfg.method}`, "
        f"{cfg.train.steps} steps. Evaluation: unprefixed, n = {cfg.evaluate.n}, temperature {cfg.evaluate.temperature}.",
        markdown_table(["problems", "base pass@1", "trained pass@1", "base pass@8", "trained pass@8"], table),
        markdown_table(["stage", "FLOPs"], flops_rows),
        *[f"![{title}]({name})" for title, name in figures.items()],
    ])
    atomic_write_text(out / "report" / "README.md", text + "\n")
    return {"table": table, "flops": dict(flops_rows)}


def _print_summary(console: Console, summary: dict, out: Path) -> None:
    table = Table(title="unprefixed accuracy, base vs trained")
    for column in ("problems", "base pass@1", "trained pass@1", "base pass@8", "trained pass@8"):
        table.add_column(column)
    for row in summary["table"]:
        table.add_row(*(f"{v:.3f}" if isinstance(v, float) else str(v) for v in row))
    console.print(table)
    flops = Table(title="FLOPs per stage")
    flops.add_column("stage")
    flops.add_column("FLOPs")
    for stage, value in summary["flops"].items():
        flops.add_row(stage, f"{value:.3g}")
    console.print(flops)
    console.print(f"report: {out / 'report' / 'README.md'}")
