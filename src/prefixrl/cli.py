"""The `prefixrl` command: one subcommand per pipeline stage, plus the demo.

Every subcommand is a thin wrapper over a library function of the same stage module.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from prefixrl.files import InputError

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # every model and tokenizer here is local

app = typer.Typer(help="PrefixRL: RL on hard problems, conditioned on prefixes of correct off-policy traces.",
                  no_args_is_help=True, pretty_exceptions_enable=False)
console = Console()

TASK = typer.Option("sort", "--task", "-t", help="Built-in task name, or `module:Class` of your own task.")
BACKEND = typer.Option("hf", help="Generation backend: 'hf' (transformers) or 'vllm'.")
TEMPERATURE = typer.Option(1.0, help="Sampling temperature.")
MAX_NEW = typer.Option(160, help="Max tokens generated per sample.")
BATCH = typer.Option(256, help="Sequences per generation batch.")
SEED = typer.Option(0, help="Random seed.")
QUIET = typer.Option(False, "--quiet", help="No progress bar.")


def _fail(err: Exception) -> None:
    console.print(f"[red]error:[/red] {err}")
    raise typer.Exit(2)


def _sampler(model: str, backend: str, temperature: float, max_new_tokens: int, batch_size: int):
    from prefixrl.generate import SamplingParams, make_sampler
    from prefixrl.models import resolve_model

    params = SamplingParams(temperature=temperature, max_new_tokens=max_new_tokens, batch_size=batch_size)
    return make_sampler(backend, resolve_model(model), params)


@app.command()
def pretrain(task: str = typer.Argument(..., help="Task whose base model to train."),
             out: Path = typer.Option(..., help="Folder for the model (save_pretrained format)."),
             steps: int = typer.Option(4000, help="Optimizer steps."),
             batch_size: int = typer.Option(32, help="Sequences per step."),
             lr: float = typer.Option(3e-3, help="Peak learning rate (cosine schedule)."),
             seed: int = SEED):
    """Train a task's tiny base model from random weights on its corpus of worked attempts."""
    from prefixrl.pretrain import PretrainConfig, pretrain as run
    from prefixrl.tasks import load_task

    try:
        path = run(load_task(task), out, PretrainConfig(steps=steps, batch_size=batch_size, lr=lr, seed=seed))
    except (ValueError, InputError) as err:
        _fail(err)
    console.print(f"saved base model to {path}")


@app.command()
def screen(model: str = typer.Argument(..., help="Model folder, or `builtin:TASK` for a shipped base model."),
           task: str = TASK,
           problems: str = typer.Option("train", help="Split name or a JSONL file of problems."),
           n: int = typer.Option(512, help="Samples per problem."),
           k: Optional[int] = typer.Option(None, help="Hard means pass@k = 0 (default k = n)."),
           out: Path = typer.Option(Path("runs/screen"), help="Output folder (resumes if it exists)."),
           backend: str = BACKEND, temperature: float = TEMPERATURE, max_new_tokens: int = MAX_NEW,
           batch_size: int = BATCH, seed: int = SEED, quiet: bool = QUIET):
    """Sample n completions per problem, report pass@k, write the hard subset (hard.jsonl)."""
    from prefixrl.screen import screen as run
    from prefixrl.tasks import load_problems, load_task

    try:
        the_task = load_task(task)
        hard = run(the_task, _sampler(model, backend, temperature, max_new_tokens, batch_size),
                   load_problems(the_task, problems), out, n=n, k=k, seed=seed, quiet=quiet)
    except (ValueError, InputError) as err:
        _fail(err)
    summary = json.loads((out / "screen.json").read_text())
    _print_dict(f"screen: {len(hard)} of {summary['problems']} problems are hard", summary)


@app.command()
def collect(model: str = typer.Argument(..., help="Model folder, or `builtin:TASK`."),
            task: str = TASK,
            problems: str = typer.Option(..., help="JSONL of problems (e.g. screen's hard.jsonl) or a split."),
            out: Path = typer.Option(Path("runs/traces"), help="Output folder (resumes if it exists)."),
            max_attempts: int = typer.Option(2500, help="Cap on attempts per problem."),
            traces_per_problem: int = typer.Option(1, help="Stop a problem after this many correct traces."),
            attempts_per_round: int = typer.Option(64, help="Samples per problem per round."),
            backend: str = BACKEND, temperature: float = TEMPERATURE, max_new_tokens: int = MAX_NEW,
            batch_size: int = BATCH, seed: int = SEED, quiet: bool = QUIET):
    """Rejection-sample verified-correct traces (resumable: rerun the same command after a kill)."""
    from prefixrl.tasks import load_problems, load_task
    from prefixrl.traces import CollectConfig, collect as run

    try:
        the_task = load_task(task)
        cfg = CollectConfig(max_attempts=max_attempts, traces_per_problem=traces_per_problem,
                            attempts_per_round=attempts_per_round, seed=seed)
        run(the_task, _sampler(model, backend, temperature, max_new_tokens, batch_size),
            load_problems(the_task, problems), out, cfg, source=model, quiet=quiet)
    except (ValueError, InputError) as err:
        _fail(err)
    summary = json.loads((out / "collect.json").read_text())
    summary.pop("per_problem")
    _print_dict(f"collect: traces in {out / 'traces.jsonl'}", summary)


@app.command("import")
def import_(store: Path = typer.Argument(..., help="Trace store folder (its traces.jsonl is extended)."),
            file: Path = typer.Option(..., "--file", "-f", help="JSONL, Parquet, or a saved `datasets` folder."),
            task: str = TASK,
            problem_column: str = typer.Option("problem_id", help="Field that holds the problem id."),
            source: str = typer.Option("import", help="Where the traces came from (recorded per trace).")):
    """Add traces from other runs or model families: verified, deduplicated, rejects reported."""
    from prefixrl.tasks import load_task
    from prefixrl.traces import import_traces

    try:
        report = import_traces(load_task(task), store / "traces.jsonl", file, source=source,
                               problem_column=problem_column)
    except (ValueError, InputError) as err:
        _fail(err)
    for reject in report["rejected"]:
        console.print(f"[yellow]rejected[/yellow] {file}, line {reject['line']}: {reject['reason']}")
    console.print(f"imported {report['added']} traces into {report['store']}; rejected {len(report['rejected'])}")


@app.command()
def evaluate(model: str = typer.Argument(..., help="Model folder, or `builtin:TASK`."),
             task: str = TASK,
             problems: str = typer.Option("heldout", help="Split name or a JSONL file of problems."),
             n: int = typer.Option(256, help="Samples per problem (paper: 256)."),
             out: Path = typer.Option(Path("runs/eval"), help="Output folder (resumes if it exists)."),
             backend: str = BACKEND, temperature: float = typer.Option(0.7, help="Sampling temperature (paper: 0.7)."),
             max_new_tokens: int = MAX_NEW, batch_size: int = BATCH, seed: int = SEED, quiet: bool = QUIET):
    """Unbiased pass@k (k = 1, 2, 4, ..., n) on unprefixed problems."""
    from prefixrl.evaluate import evaluate as run
    from prefixrl.tasks import load_problems, load_task

    try:
        the_task = load_task(task)
        result = run(the_task, _sampler(model, backend, temperature, max_new_tokens, batch_size),
                     load_problems(the_task, problems), n, out, seed=seed, quiet=quiet)
    except (ValueError, InputError) as err:
        _fail(err)
    _print_dict(f"evaluate: {problems}", result)


@app.command()
def demo(config: Path = typer.Option(Path("configs/demo.yaml"), help="Demo configuration."),
         out: Path = typer.Option(Path("runs/demo"), help="Run folder (resumes if it exists)."),
         quiet: bool = QUIET):
    """The whole pipeline on a built-in task, end to end on CPU."""
    from prefixrl.demo import run_demo

    try:
        run_demo(config, out, quiet=quiet, console=console)
    except (ValueError, InputError) as err:
        _fail(err)


def _print_dict(title: str, values: dict) -> None:
    table = Table(title=title, show_header=False)
    for key, value in values.items():
        table.add_row(key, f"{value:.4g}" if isinstance(value, float) else str(value))
    console.print(table)


if __name__ == "__main__":
    app()
