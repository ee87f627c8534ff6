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
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import yaml
from rich.console import Console
from rich.table import Table

from prefixrl.evaluate import evaluate
from prefixrl.files import InputError, atomic_write_text, read_jsonl, write_jsonl
from prefixrl.flops import FlopsLedger
from prefixrl.generate import SamplingParams, make_sampler
from prefixrl.models import resolve_model
from prefixrl.prefixes import PrefixConfig, calibrate, prefixed_problems, success_curve
from prefixrl.report import markdown_table, plot_reward_vs_flops, plot_success_vs_prefix
from prefixrl.runinfo import write_manifest
from prefixrl.screen import screen
from prefixrl.tasks import load_problems, load_task
from prefixrl.traces import CollectConfig, collect
from prefixrl.train import TrainConfig, select_rows, train

@dataclass
class ScreenConfig:
    problems: str = "train"  # split name or JSONL of problems
    n: int = 128  # samples per problem
    k: int = 128  # hard = pass@k == 0
    limit: int | None = None  # screen only the first `limit` problems


@dataclass
class EvalConfig:
    n: int = 32  # samples per problem (unprefixed)
    temperature: float = 0.7  # the paper's
    calibration_n: int = 32  # samples per prefix fraction for the success-vs-prefix curve
    calibration_traces: int = 8


@dataclass
class DemoConfig:
    task: str = "chain"
    model: str = "builtin:chain"  # a model folder, or builtin:TASK for the shipped base model
    seed: int = 0
    sampling: SamplingParams = field(default_factory=SamplingParams)
    screen: ScreenConfig = field(default_factory=ScreenConfig)
    collect: CollectConfig = field(default_factory=CollectConfig)
    prefixes: PrefixConfig = field(default_factory=PrefixConfig)
    method: str = "prefixrl"
    train: TrainConfig = field(default_factory=TrainConfig)
    evaluate: EvalConfig = field(default_factory=EvalConfig)

    @classmethod
    def from_yaml(cls, path: str | Path) -> "DemoConfig":
        path = Path(path)
        if not path.exists():
            raise InputError(f"{path}: no such config file")
        raw = yaml.safe_load(path.read_text()) or {}
        return _build(cls, raw, str(path))


def _build(cls, raw: dict, where: str):
    """A dataclass from a dict, nested dataclasses included; unknown keys are errors."""
    if not isinstance(raw, dict):
        raise InputError(f"{where}: expected a mapping, got {type(raw).__name__}")
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(raw) - set(known))
    if unknown:
        raise InputError(f"{where}: unknown keys {unknown}; known keys are {sorted(known)}")
    kwargs = {}
    for name, value in raw.items():
        default = known[name].default_factory() if callable(known[name].default_factory) else None
        kwargs[name] = _build(type(default), value, f"{where}: {name}") if hasattr(default, "__dataclass_fields__") else value
    return cls(**kwargs)


def run_demo(config_path: str | Path, out: str | Path, quiet: bool = False, console: Console | None = None) -> dict:
    console = console or Console()
    cfg = DemoConfig.from_yaml(config_path)
    out = Path(out)
    start = time.time()
    atomic_write_text(out / "config.json", json.dumps(asdict(cfg), indent=2))
    task = load_task(cfg.task)
    model_path = resolve_model(cfg.model)
    sampler = make_sampler("hf", model_path, cfg.sampling)
    console.print(f"[bold]prefixrl demo[/bold]: task {task.name}, model {cfg.model} "
                  f"({sampler.n_params / 1e6:.2f} M parameters), run folder {out}")

    console.rule("1. screen: which problems are hard for the base model?")
    problems = load_problems(task, cfg.screen.problems)[:cfg.screen.limit]
    hard = screen(task, sampler, problems, out / "screen", n=cfg.screen.n, k=cfg.screen.k, seed=cfg.seed, quiet=quiet)
    console.print(f"{len(hard)} of {len(problems)} problems have pass@{cfg.screen.k} = 0")

    console.rule("2. collect: rejection-sample a correct trace for each hard problem")
    traces = collect(task, sampler, hard, out / "traces", cfg.collect, source=cfg.model, quiet=quiet)
    if not traces:
        raise ValueError("rejection sampling found no correct trace: raise collect.max_attempts or screen more problems")
    solved = [p for p in hard if p.id in {t["problem_id"] for t in traces}]
    console.print(f"traces for {len(solved)} of {len(hard)} hard problems")

    console.rule("3. prefixes: cut correct traces, mix with unprefixed problems")
    tokenizer = sampler.tokenizer
    by_id = {p.id: p for p in hard}
    rows = select_rows(prefixed_problems(tokenizer, traces, by_id, cfg.prefixes), cfg.method)
    write_jsonl(out / "prefixes" / "train.jsonl", rows)
    calibration_traces = traces[:cfg.evaluate.calibration_traces]
    base_curve = success_curve(calibrate(task, sampler, tokenizer, calibration_traces, by_id, out / "prefixes" / "base",
                                         n=cfg.evaluate.calibration_n, seed=cfg.seed, quiet=quiet))

    console.rule(f"4. train: {cfg.method} on {len(rows)} rows")
    heldout = task.problems("heldout")[:len(solved)]
    evals = {"hard": solved, "heldout": heldout}
    collect_flops = FlopsLedger(out / "traces" / "flops.json")
    trained = train(task, model_path, rows, out / "train", cfg.train, eval_problems=evals, prior_flops=collect_flops)

    console.rule("5. evaluate: unprefixed pass@k, base vs trained")
    results = {}
    for name, path in (("base", model_path), ("trained", str(trained))):
        eval_sampler = make_sampler("hf", path, SamplingParams(temperature=cfg.evaluate.temperature,
                                    max_new_tokens=cfg.sampling.max_new_tokens, batch_size=cfg.sampling.batch_size))
        for split, split_problems in evals.items():
            results[(name, split)] = evaluate(task, eval_sampler, split_problems, cfg.evaluate.n,
                                              out / "evaluate" / f"{name}-{split}", seed=cfg.seed, quiet=quiet)
        if name == "trained":
            trained_curve = success_curve(calibrate(task, eval_sampler, tokenizer, calibration_traces, by_id,
                                                    out / "prefixes" / "trained", n=cfg.evaluate.calibration_n,
                                                    seed=cfg.seed, quiet=quiet))

    ledger = FlopsLedger(out / "flops.json", fresh=True)
    for stage in ("screen", "traces", "train"):
        ledger.merge(FlopsLedger(out / stage / "flops.json") if stage != "train" else _training_only(out))
    summary = _write_report(out, cfg, task.name, len(problems), hard, solved, results, ledger,
                            {"base": base_curve, "trained": trained_curve}, collect_flops.total)
    _print_summary(console, summary, out)
    write_manifest(out, stage="demo", config=asdict(cfg), seed=cfg.seed, flops=ledger.total,
                   wall_time_s=time.time() - start, extra={"summary": summary})
    return summary


def _training_only(out: Path) -> FlopsLedger:
    """The training run's ledger without the collection FLOPs it was charged (counted once, above)."""
    ledger = FlopsLedger()
    ledger.stages = {k: v for k, v in FlopsLedger(out / "train" / "flops.json").stages.items() if k != "collect"}
    return ledger


def _write_report(out: Path, cfg: DemoConfig, task: str, n_screened: int, hard, solved, results, ledger,
                  curves, collect_flops: float) -> dict:
    eval_rows = read_jsonl(out / "train" / "eval.jsonl")
    plot_reward_vs_flops({cfg.method: eval_rows}, out / "report" / "reward_vs_flops.png", marker_flops=collect_flops)
    plot_success_vs_prefix(curves, out / "report" / "success_vs_prefix.png")
    table = [[f"{split} ({results[('base', split)]['problems']})",
              results[("base", split)]["pass@1"], results[("trained", split)]["pass@1"],
              results[("base", split)].get("pass@8", float("nan")), results[("trained", split)].get("pass@8", float("nan"))]
             for split in ("hard", "heldout")]
    flops_rows = [[stage, entry["flops"]] for stage, entry in ledger.stages.items()]
    text = "\n\n".join([
        f"# prefixrl demo: {task}",
        f"Screened {n_screened} problems; {len(hard)} had pass@{cfg.screen.k} = 0; rejection sampling "
        f"(cap {cfg.collect.max_attempts}) found traces for {len(solved)}. Method: `{cfg.method}`, "
        f"{cfg.train.steps} steps. Evaluation: unprefixed, n = {cfg.evaluate.n}, temperature {cfg.evaluate.temperature}.",
        markdown_table(["problems", "base pass@1", "trained pass@1", "base pass@8", "trained pass@8"], table),
        markdown_table(["stage", "FLOPs"], flops_rows),
        "![unprefixed pass@1 vs FLOPs](reward_vs_flops.png)",
        "![success vs prefix fraction](success_vs_prefix.png)",
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
