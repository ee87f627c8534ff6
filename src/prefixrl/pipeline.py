"""The data stages in one go, shared by the demo and experiments: screen -> collect -> prefixes.

Each stage writes its own folder under the run folder and resumes from it, so a killed run
continues where it stopped. Configs are YAML files read into nested dataclasses.
"""

from __future__ import annotations

import time
from dataclasses import MISSING, asdict, dataclass, field, fields, replace
from pathlib import Path

import yaml
from rich.console import Console

from prefixrl.files import InputError, write_jsonl
from prefixrl.flops import FlopsLedger
from prefixrl.generate import Sampler, SamplingParams, make_sampler
from prefixrl.models import resolve_model
from prefixrl.prefixes import PrefixConfig, prefixed_problems, with_context_limit
from prefixrl.screen import screen
from prefixrl.tasks import Problem, Task, load_problems, load_task
from prefixrl.traces import CollectConfig, collect, reference_traces
from prefixrl.typecheck import hints_of, type_problem


@dataclass
class ScreenConfig:
    problems: str = "train"  # split name or JSONL of problems
    n: int = 128  # samples per problem
    k: int = 128  # hard = pass@k == 0
    limit: int | None = None  # screen only the first `limit` problems


@dataclass
class PipelineConfig:
    task: str = "chain"
    task_args: dict = field(default_factory=dict)  # the task's options, e.g. {train: data/train.jsonl} for math
    model: str = "builtin:chain"  # a model folder, or builtin:TASK for the shipped base model
    seed: int = 0  # of the data stages (screening, collection, cut points)
    trace_model: str | None = None  # collect the traces with another model (cross-family); default: `model`
    traces: str = "collect"  # "collect" (rejection sampling) or "reference" (the task's reference solutions)
    sampling: SamplingParams = field(default_factory=SamplingParams)
    screen: ScreenConfig = field(default_factory=ScreenConfig)
    collect: CollectConfig = field(default_factory=CollectConfig)
    prefixes: PrefixConfig = field(default_factory=PrefixConfig)

    @classmethod
    def from_yaml(cls, path: str | Path):
        path = resolve_config(path)
        return build_config(cls, yaml.safe_load(path.read_text()) or {}, str(path))


SHIPPED_CONFIGS = Path(__file__).parent / "configs"  # the repository's configs/, installed with the package


def resolve_config(path: str | Path) -> Path:
    """A config file: `path` if it exists, else the shipped config of that name (`demo`,
    `benchmark.yaml`, `configs/benchmark.yaml`), so `prefixrl demo` and the README's
    `configs/...` paths work from any folder and from an installed package."""
    path = Path(path)
    if path.exists():
        return path
    shipped = SHIPPED_CONFIGS / (path.name if path.suffix in (".yaml", ".yml") else f"{path.name}.yaml")
    if shipped.is_file() and (len(path.parts) == 1 or path.parent.name == "configs"):
        return shipped
    names = sorted(p.stem for p in SHIPPED_CONFIGS.glob("*.yaml"))
    raise InputError(f"{path}: no such config file; the shipped configs are {names} (give one by name)")


def build_config(cls, raw: dict, where: str, default=None):
    """A dataclass from a dict, nested dataclasses included, over `default` (an instance; default:
    the class's defaults): a section that sets some keys keeps the defaults of the others, also
    those a default_factory sets (an experiment's `train:` keeps its `steps` cap unless it sets
    one). Unknown keys are errors; a number YAML reads as text (it reads 1e-4 so) becomes a float."""
    if not isinstance(raw, dict):
        raise InputError(f"{where}: expected a mapping, got {type(raw).__name__}")
    known, hints = {f.name: f for f in fields(cls)}, hints_of(cls)
    unknown = sorted(set(raw) - set(known))
    if unknown:
        raise InputError(f"{where}: unknown keys {unknown}; known keys are {sorted(known)}")
    kwargs = {}
    for name, value in raw.items():
        current = getattr(default, name) if default is not None else _default_of(known[name])
        if hasattr(current, "__dataclass_fields__"):
            value = build_config(type(current), value, f"{where}: {name}", current)
        elif isinstance(current, float) and isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                raise InputError(f"{where}: {name} must be a number, got {value!r}") from None
        elif name in hints and (wanted := type_problem(value, hints[name])):  # before any stage runs
            raise InputError(f"{where}: {name} must be {wanted}, got {value!r}")
        kwargs[name] = value
    return replace(default, **kwargs) if default is not None else cls(**kwargs)


def _default_of(f):
    if f.default is not MISSING:
        return f.default
    return f.default_factory() if f.default_factory is not MISSING else None


@dataclass
class PreparedData:
    """What the data stages hand to training and the report."""

    task: Task
    model_path: str  # the base policy's folder
    sampler: Sampler  # the base policy's (it screened, and collected unless trace_model is set)
    screened: list[Problem]
    hard: list[Problem]  # pass@k = 0 among the screened
    traces: list[dict]  # correct traces of hard problems
    solved: list[Problem]  # the hard problems that have a trace
    rows: list[dict]  # the training rows (prefixes/train.jsonl)
    collect_flops: FlopsLedger  # the collection's, charged to the methods that see a trace


def prepare_data(cfg: PipelineConfig, out: Path, console: Console, quiet: bool = False,
                 max_completion_length: int | None = None) -> PreparedData:
    """Screen for hard problems, collect a trace for each, cut prefixes.
    max_completion_length: the tokens training will generate after a prompt (default: the sampling's
    max_new_tokens); the policy's context window less it bounds a prefixed prompt."""
    if not isinstance(cfg.task_args, dict):
        raise InputError(f"task_args must be a mapping of option: value, got {cfg.task_args!r}")
    task = load_task(cfg.task, **cfg.task_args)
    model_path = resolve_model(cfg.model)
    sampler = make_sampler(None, model_path, cfg.sampling)
    console.print(f"task {task.name}, model {cfg.model} ({sampler.n_params / 1e6:.2f} M parameters), "
                  f"run folder {out}")

    console.rule("screen: which problems are hard for the base model?")
    screened = load_problems(task, cfg.screen.problems)[:cfg.screen.limit]
    hard = screen(task, sampler, screened, out / "screen", n=cfg.screen.n, k=cfg.screen.k, seed=cfg.seed, quiet=quiet)
    console.print(f"{len(hard)} of {len(screened)} problems have pass@{cfg.screen.k} = 0")

    if cfg.traces not in ("collect", "reference"):
        raise InputError(f"traces: {cfg.traces!r} is neither 'collect' (rejection sampling) nor 'reference'")
    if cfg.traces == "reference":  # POPE-style: the problems' own solutions, nothing sampled
        console.rule("reference: the hard problems' reference solutions as traces")
        traces = reference_traces(task, hard, out / "traces")
    else:
        console.rule("collect: rejection-sample a correct trace for each hard problem")
        collector = make_sampler(None, resolve_model(cfg.trace_model), cfg.sampling) if cfg.trace_model else sampler
        traces = collect(task, collector, hard, out / "traces", cfg.collect, source=cfg.trace_model or cfg.model,
                         quiet=quiet)
    if not traces:
        raise ValueError("rejection sampling found no correct trace: raise collect.max_attempts or screen more problems")
    solved = [p for p in hard if p.id in {t["problem_id"] for t in traces}]
    console.print(f"traces for {len(solved)} of {len(hard)} hard problems")

    console.rule("prefixes: cut correct traces, mix with unprefixed problems")
    # the policy's context window, from the model the sampler already holds (as `prefixrl prefixes` does)
    prefix_cfg = with_context_limit(cfg.prefixes, sampler.model, max_completion_length or cfg.sampling.max_new_tokens)
    rows = prefixed_problems(sampler.tokenizer, traces, {p.id: p for p in hard}, prefix_cfg)
    write_jsonl(out / "prefixes" / "train.jsonl", rows)
    return PreparedData(task=task, model_path=model_path, sampler=sampler, screened=screened, hard=hard,
                        traces=traces, solved=solved, rows=rows, collect_flops=FlopsLedger(out / "traces" / "flops.json"))


def prefixes_stage(task: Task, model: str, traces: Path, out: Path, cfg: PrefixConfig, max_completion_length: int,
                   calibrate_n: int = 0, quiet: bool = False) -> tuple[list[dict], list[dict], dict, PrefixConfig]:
    """`prefixrl prefixes`: cut `traces` (a traces.jsonl) in `model`'s tokens, held to its context window
    less max_completion_length; with calibrate_n, first measure success vs prefix fraction (needed by the
    adaptive cut policy; plotted, and charged to the stage's ledger). Writes train.jsonl, flops.json and
    the manifest; returns (rows, shortened prefixes, success curve or {}, the config as applied)."""
    from prefixrl.models import load_model, n_params
    from prefixrl.prefixes import calibrate, success_curve
    from prefixrl.runinfo import write_manifest
    from prefixrl.tasks import problems_by_id
    from prefixrl.traces import load_traces

    start = time.time()
    model_obj, tokenizer = load_model(resolve_model(model))
    cfg = with_context_limit(cfg, model_obj, max_completion_length)
    all_traces, problems = load_traces(traces), problems_by_id(task)
    calibration, curve = None, {}
    if calibrate_n:
        from prefixrl.generate import sampler_for  # (at call time: tests record its sampling settings)
        from prefixrl.report import plot_success_vs_prefix

        sampler = sampler_for(model_obj, tokenizer, SamplingParams(max_new_tokens=max_completion_length))
        calibration = calibrate(task, sampler, tokenizer, all_traces, problems, out, n=calibrate_n, seed=cfg.seed,
                                quiet=quiet, cfg=cfg)
        curve = success_curve(calibration)
        plot_success_vs_prefix({model: curve}, out / "success_vs_prefix.png")
    shortened = []
    rows = prefixed_problems(tokenizer, all_traces, problems, cfg, calibration=calibration, shortened=shortened)
    write_jsonl(out / "train.jsonl", rows)
    ledger = FlopsLedger(out / "flops.json", fresh=True)  # calibration's sampling, chargeable (--prior-flops)
    ledger.add("calibration", n_params=n_params(model_obj),
               inference_tokens=sum(p["tokens"] for row in calibration or [] for p in row["points"]))
    write_manifest(out, stage="prefixes", config={"model": model, "traces": str(traces), **asdict(cfg)},
                   seed=cfg.seed, flops=ledger.total, wall_time_s=time.time() - start, task=task,
                   extra={"shortened_prefixes": shortened})
    return rows, shortened, curve, cfg
