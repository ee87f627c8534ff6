"""The demo: the pipeline end to end on a built-in task, on a laptop CPU.

    prefixrl demo --config configs/demo.yaml --out runs/demo

base model -> screen (hard = pass@k 0) -> collect (rejection sampling) -> summary table.
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

from prefixrl.files import InputError, atomic_write_text
from prefixrl.flops import FlopsLedger
from prefixrl.generate import SamplingParams, make_sampler
from prefixrl.models import resolve_model
from prefixrl.runinfo import write_manifest
from prefixrl.screen import screen
from prefixrl.tasks import load_problems, load_task
from prefixrl.traces import CollectConfig, collect


@dataclass
class ScreenConfig:
    problems: str = "train"  # split name or JSONL of problems
    n: int = 128  # samples per problem
    k: int = 128  # hard = pass@k == 0
    limit: int | None = None  # screen only the first `limit` problems


@dataclass
class DemoConfig:
    task: str = "sort"
    model: str = "builtin:sort"  # a model folder, or builtin:TASK for the shipped base model
    seed: int = 0
    sampling: SamplingParams = field(default_factory=SamplingParams)
    screen: ScreenConfig = field(default_factory=ScreenConfig)
    collect: CollectConfig = field(default_factory=CollectConfig)

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
    sampler = make_sampler("hf", resolve_model(cfg.model), cfg.sampling)
    console.print(f"[bold]prefixrl demo[/bold]: task {task.name}, model {cfg.model} "
                  f"({sampler.n_params / 1e6:.2f} M parameters), run folder {out}")

    problems = load_problems(task, cfg.screen.problems)[:cfg.screen.limit]
    hard = screen(task, sampler, problems, out / "screen", n=cfg.screen.n, k=cfg.screen.k, seed=cfg.seed, quiet=quiet)
    screened = json.loads((out / "screen" / "screen.json").read_text())
    traces = collect(task, sampler, hard, out / "traces", cfg.collect, source=cfg.model, quiet=quiet)
    collected = json.loads((out / "traces" / "collect.json").read_text())

    ledger = FlopsLedger(out / "flops.json")
    ledger.stages = {}
    for stage in ("screen", "traces"):
        ledger.merge(FlopsLedger(out / stage / "flops.json"))
    summary = {"problems_screened": len(problems), f"pass@1 (n={cfg.screen.n})": screened["pass@1"],
               f"hard (pass@{cfg.screen.k} = 0)": len(hard), "hard with a trace": collected["solved"],
               "mean attempts per trace": collected["mean_attempts_solved"], "traces": len(traces),
               "flops screen": ledger.stages.get("screen", {}).get("flops", 0.0),
               "flops collect": ledger.stages.get("collect", {}).get("flops", 0.0)}
    _print_summary(console, summary, traces[:3])
    write_manifest(out, stage="demo", config=asdict(cfg), seed=cfg.seed, flops=ledger.total,
                   wall_time_s=time.time() - start, extra={"summary": summary})
    return summary


def _print_summary(console: Console, summary: dict, examples: list[dict]) -> None:
    table = Table(title="demo summary", show_header=False)
    for key, value in summary.items():
        table.add_row(key, f"{value:.3g}" if isinstance(value, float) else str(value))
    console.print(table)
    for trace in examples:
        console.print(f"  {trace['problem_id']} (attempt {trace['attempt']}): {trace['prompt']}{trace['completion']}")
