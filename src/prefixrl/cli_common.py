"""What every `prefixrl` command shares: the console, the common options (their defaults from
config.py), the task rule, and the wrappers that derive options from a config and turn a library's
error into the tool's own.
"""

from __future__ import annotations

import errno
import functools
import inspect
import typing
from dataclasses import fields
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from prefixrl.config import SamplingParams, TrainConfig, default  # torch-free: `prefixrl --help` stays fast
from prefixrl.files import InputError

# soft wrap: a message is never broken into lines by the tool (the terminal wraps it), so a path or a
# config key in an error copies and greps whole, at any width (also where COLUMNS is 80, as in pytest-xdist)
console = Console(soft_wrap=True)

TASK = typer.Option(None, "--task", "-t", help="Built-in task name, or `module:Class` of your own task (default: "
                    "the task of a `builtin:TASK` model; otherwise required).")
TASK_ARGS = typer.Option([], "--task-arg", help="A task option KEY=VALUE (repeatable): numbers, true/false and "
                         "[lists] are typed, other values are text. E.g. --task-arg train=data/train.jsonl.")
BACKEND = typer.Option(default(SamplingParams, "backend"), help="Generation backend: 'auto' (on CPU, a fast decode "
                       "loop for small Llama / Qwen models, else transformers), 'fast', 'hf' (transformers' generate) "
                       "or 'vllm'.")
TEMPERATURE = typer.Option(default(SamplingParams, "temperature"), help="Sampling temperature.")
MAX_NEW = typer.Option(default(SamplingParams, "max_new_tokens"), help="Max tokens generated per sample.")
MAX_COMPLETION = typer.Option(default(TrainConfig, "max_completion_length"),
                              help=TrainConfig.__dataclass_fields__["max_completion_length"].metadata["help"])
BATCH = typer.Option(default(SamplingParams, "batch_size"), help="Sequences per generation batch.")
SEED = typer.Option(0, help="Random seed.")
QUIET = typer.Option(False, "--quiet", help="No progress bar.")
REPORT_TO = typer.Option(None, "--report-to", help="Also log training to trackio, wandb or tensorboard "
                         "(comma-separated; metrics.jsonl is always written). Default: none (or the config's).")


def fail(err: Exception) -> None:
    console.print(f"[red]error:[/red] {escape(str(err))}")  # escaped: `prefixrl[vllm]` is not markup
    raise typer.Exit(2)


def load_task_for(name: str | None, pairs: list[str], model: str | None = None):
    """The task: `--task`, else the one a `builtin:TASK` model was made for. Never a guess: another
    model without --task is an error (its samples would be scored against another task's problems)."""
    from prefixrl.models import builtin_task
    from prefixrl.tasks import load_task, parse_task_args

    name = name or (builtin_task(model) if model else None)
    if name is None:
        raise InputError(f"which task? pass --task (e.g. --task sort){f' for model {model}' if model else ''}; "
                         "only a builtin:TASK model implies its task")
    return load_task(name, **parse_task_args(pairs))


def sampler_of(model: str, backend: str, temperature: float, max_new_tokens: int, batch_size: int):
    from prefixrl.generate import make_sampler
    from prefixrl.models import resolve_model

    params = SamplingParams(temperature=temperature, batch_size=batch_size, backend=backend,
                            max_new_tokens=max_new_tokens)
    return make_sampler(backend, resolve_model(model), params)


def print_dict(title: str, values: dict) -> None:
    table = Table(title=title, show_header=False)
    for key, value in values.items():
        table.add_row(key, f"{value:.4g}" if isinstance(value, float) else str(value))
    console.print(table)


def config_options(cls):
    """Give a command one option per field of dataclass `cls` (named, typed, defaulted and explained
    by the field), and hand it `cfg`, the instance they make."""
    hints, helps = typing.get_type_hints(cls), {f.name: f.metadata["help"] for f in fields(cls)}
    names = list(helps)

    def option(name: str) -> inspect.Parameter:
        kind = hints[name]
        args = [a for a in typing.get_args(kind) if a is not type(None)]
        if len(args) == 1:  # `float | None` as click reads it
            kind = Optional[args[0]]
        return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=kind,
                                 default=typer.Option(default(cls, name), help=helps[name]))

    def decorate(command):
        own = [p for p in inspect.signature(command).parameters.values() if p.name != "cfg"]

        @functools.wraps(command)
        def run(**kwargs):
            return command(cfg=cls(**{name: kwargs.pop(name) for name in names}), **kwargs)

        run.__signature__ = inspect.Signature(own + [option(name) for name in names])
        return run

    return decorate


def guard(command):
    """A command's errors as the tool's own: a library's refusal (ValueError, InputError, a missing
    extra's ImportError, e.g. --backend vllm without vLLM) and a folder or file that cannot be read or
    written (missing, read-only, disk full) end with `error: ...` naming the fix, and exit status 2."""
    @functools.wraps(command)
    def guarded(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except OSError as err:
            fix = {errno.ENOSPC: "free some space and rerun the same command (it resumes)",
                   errno.ENOENT: "check the path"}.get(err.errno, "pass a folder you can write to (--out), "
                                                                "or fix its permissions")
            where = f"{err.filename}: " if err.filename else ""
            fail(InputError(f"{where}{err.strerror or err}: {fix}"))
        except (ValueError, InputError, ImportError) as err:
            fail(err)
    return guarded


def guard_all(app: typer.Typer) -> None:
    """`guard` every command of `app` and of its groups, however added."""
    for info in app.registered_commands:
        info.callback = guard(info.callback)
    for group in app.registered_groups:
        guard_all(group.typer_instance)
