"""The `prefixrl` command: one subcommand per pipeline stage, plus the demo.

Every subcommand is a thin wrapper over a library function of the same stage module.
"""

from __future__ import annotations

import errno
import functools
import json
import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from prefixrl.files import InputError

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # every model and tokenizer here is local
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # a bar per (tiny) model load is noise

app = typer.Typer(help="PrefixRL: RL on hard problems, conditioned on prefixes of correct off-policy traces.",
                  no_args_is_help=True, pretty_exceptions_enable=False)
console = Console()

TASK = typer.Option("sort", "--task", "-t", help="Built-in task name, or `module:Class` of your own task.")
TASK_ARGS = typer.Option([], "--task-arg", help="A task option KEY=VALUE (repeatable): numbers, true/false and "
                         "[lists] are typed, other values are text. E.g. --task-arg train=data/train.jsonl.")
BACKEND = typer.Option("auto", help="Generation backend: 'auto' (on CPU, a fast decode loop for small Llama / Qwen "
                       "models, else transformers), 'fast', 'hf' (transformers' generate) or 'vllm'.")
TEMPERATURE = typer.Option(1.0, help="Sampling temperature.")
# defaults from one source: SamplingParams' and TrainConfig's (read when the command runs: importing
# them here would load torch for `prefixrl --help`)
MAX_NEW = typer.Option(None, help="Max tokens generated per sample (default: SamplingParams.max_new_tokens).")
MAX_COMPLETION = typer.Option(None, help="Tokens the policy generates after a prompt: the context window less this "
                              "bounds a prefixed prompt (default: TrainConfig.max_completion_length, which leaves "
                              "room in the shipped models' 256-token window for prefixes of their traces).")
BATCH = typer.Option(256, help="Sequences per generation batch.")
SEED = typer.Option(0, help="Random seed.")
QUIET = typer.Option(False, "--quiet", help="No progress bar.")
REPORT_TO = typer.Option(None, "--report-to", help="Also log training to trackio, wandb or tensorboard "
                         "(comma-separated; metrics.jsonl is always written). Default: none (or the config's).")


def _fail(err: Exception) -> None:
    console.print(f"[red]error:[/red] {escape(str(err))}")  # escaped: `prefixrl[vllm]` is not markup
    raise typer.Exit(2)


def _max_completion_length(value: int | None) -> int:
    from prefixrl.train import TrainConfig

    return TrainConfig.max_completion_length if value is None else value


def _task(name: str, pairs: list[str]):
    from prefixrl.tasks import load_task, parse_task_args

    return load_task(name, **parse_task_args(pairs))


def _sampler(model: str, backend: str, temperature: float, max_new_tokens: int | None, batch_size: int):
    from prefixrl.generate import SamplingParams, make_sampler
    from prefixrl.models import resolve_model

    params = SamplingParams(temperature=temperature, batch_size=batch_size, backend=backend,
                            **({} if max_new_tokens is None else {"max_new_tokens": max_new_tokens}))
    try:
        return make_sampler(backend, resolve_model(model), params)
    except ImportError as err:  # --backend vllm without vLLM: say how to get it, no traceback
        _fail(err)


@app.command()
def pretrain(task: str = typer.Argument(..., help="Task whose base model to train."),
             task_arg: list[str] = TASK_ARGS,
             out: Path = typer.Option(..., help="Folder for the model (save_pretrained format)."),
             steps: int = typer.Option(4000, help="Optimizer steps."),
             batch_size: int = typer.Option(32, help="Sequences per step."),
             lr: float = typer.Option(3e-3, help="Peak learning rate (cosine schedule)."),
             tokenizer: str = typer.Option("char", help="'char', or 'bpe' (a byte-level BPE learned from the corpus)."),
             hidden_size: int = typer.Option(128, help="Model width (the MLP is 3x wider)."),
             layers: int = typer.Option(3, help="Transformer layers."),
             seed: int = SEED):
    """Train a task's tiny base model from random weights on its corpus of worked attempts."""
    from prefixrl.models import TinyModelConfig
    from prefixrl.pretrain import PretrainConfig, pretrain as run

    try:
        shape = TinyModelConfig(hidden_size=hidden_size, num_hidden_layers=layers, intermediate_size=3 * hidden_size)
        path = run(_task(task, task_arg), out, PretrainConfig(steps=steps, batch_size=batch_size, lr=lr, seed=seed,
                                                              model=shape, tokenizer=tokenizer))
    except (ValueError, InputError) as err:
        _fail(err)
    console.print(f"saved base model to {path}")


@app.command()
def screen(model: str = typer.Argument(..., help="Model folder, or `builtin:TASK` for a shipped base model."),
           task: str = TASK, task_arg: list[str] = TASK_ARGS,
           problems: str = typer.Option("train", help="Split name or a JSONL file of problems."),
           n: int = typer.Option(512, help="Samples per problem."),
           k: Optional[int] = typer.Option(None, help="Hard means pass@k = 0 (default k = n)."),
           out: Path = typer.Option(Path("runs/screen"), help="Output folder (resumes if it exists)."),
           backend: str = BACKEND, temperature: float = TEMPERATURE, max_new_tokens: Optional[int] = MAX_NEW,
           batch_size: int = BATCH, seed: int = SEED, quiet: bool = QUIET):
    """Sample n completions per problem, report pass@k, write the hard subset (hard.jsonl)."""
    from prefixrl.screen import screen as run
    from prefixrl.tasks import load_problems

    try:
        the_task = _task(task, task_arg)
        hard = run(the_task, _sampler(model, backend, temperature, max_new_tokens, batch_size),
                   load_problems(the_task, problems), out, n=n, k=k, seed=seed, quiet=quiet)
    except (ValueError, InputError) as err:
        _fail(err)
    summary = json.loads((out / "screen.json").read_text())
    _print_dict(f"screen: {len(hard)} of {summary['problems']} problems are hard", summary)


@app.command()
def collect(model: str = typer.Argument(..., help="Model folder, or `builtin:TASK`."),
            task: str = TASK, task_arg: list[str] = TASK_ARGS,
            problems: str = typer.Option(..., help="JSONL of problems (e.g. screen's hard.jsonl) or a split."),
            out: Path = typer.Option(Path("runs/traces"), help="Output folder (resumes if it exists)."),
            max_attempts: int = typer.Option(2500, help="Cap on attempts per problem."),
            traces_per_problem: int = typer.Option(1, help="Stop a problem after this many correct traces."),
            attempts_per_round: int = typer.Option(64, help="Samples per problem per round."),
            backend: str = BACKEND, temperature: float = TEMPERATURE, max_new_tokens: Optional[int] = MAX_NEW,
            batch_size: int = BATCH, seed: int = SEED, quiet: bool = QUIET):
    """Rejection-sample verified-correct traces (resumable: rerun the same command after a kill)."""
    from prefixrl.tasks import load_problems
    from prefixrl.traces import CollectConfig, collect as run

    try:
        the_task = _task(task, task_arg)
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
            task: str = TASK, task_arg: list[str] = TASK_ARGS,
            problem_column: str = typer.Option("problem_id", help="Field that holds the problem id."),
            question_column: Optional[str] = typer.Option(None, help="Field that holds the question text: match "
                                                          "records to problems by question (a dataset keyed by "
                                                          "question; tried by default: question, problem, prompt)."),
            text_column: Optional[str] = typer.Option(None, help="Field that holds the trace text (default: the "
                                                      "first of completion, solution, text, response, output)."),
            source: str = typer.Option("import", help="Where the traces came from (recorded per trace).")):
    """Add traces from other runs or model families: verified, deduplicated, rejects reported.
    Exits with 2 when no record could be added (other than as a duplicate)."""
    from prefixrl.traces import import_traces

    try:
        report = import_traces(_task(task, task_arg), store / "traces.jsonl", file, source=source,
                               problem_column=problem_column, text_column=text_column, question_column=question_column)
    except (ValueError, InputError) as err:
        _fail(err)
    for reject in report["rejected"]:
        console.print(f"[yellow]rejected[/yellow] {file}, line {reject['line']}: {reject['reason']}")
    console.print(f"imported {report['added']} traces into {report['store']}; rejected {len(report['rejected'])}")
    rerun = bool(report["rejected"]) and all("duplicate" in r["reason"] for r in report["rejected"])  # idempotent
    if report["added"] == 0 and not rerun:
        _fail(InputError(f"{file}: no trace imported (see the reasons above): fix the records, or name their fields "
                         "with --problem-column, --question-column or --text-column"))


@app.command()
def reference(task: str = TASK, task_arg: list[str] = TASK_ARGS,
              problems: str = typer.Option(..., help="JSONL of problems (e.g. screen's hard.jsonl) or a split."),
              out: Path = typer.Option(Path("runs/traces"), help="Output folder (a trace store, as collect writes).")):
    """Traces from the problems' own reference solutions (POPE-style), without rejection sampling:
    each verified by the task, source "reference", no collection FLOPs (math: --task-arg
    solution_column=solution; reasoning-gym: the dataset's answers)."""
    from prefixrl.tasks import load_problems
    from prefixrl.traces import reference_traces

    try:
        the_task = _task(task, task_arg)
        traces = reference_traces(the_task, load_problems(the_task, problems), out)
    except (ValueError, InputError) as err:
        _fail(err)
    summary = json.loads((out / "collect.json").read_text())
    for row in summary["per_problem"]:
        if not row["solved"]:
            console.print(f"[yellow]no trace[/yellow] for {row['id']}: {row['reason']}")
    if not traces:
        _fail(InputError(f"{problems}: no problem has a correct reference solution (see above); collect traces "
                         "by rejection sampling instead"))
    console.print(f"reference: {len(traces)} traces of {summary['problems']} problems in {out / 'traces.jsonl'} "
                  "(0 collection FLOPs)")


@app.command()
def prefixes(model: str = typer.Argument(..., help="The policy (its tokenizer cuts the traces; calibration samples it)."),
             task: str = TASK, task_arg: list[str] = TASK_ARGS,
             traces: Path = typer.Option(..., help="Trace store (traces.jsonl)."),
             out: Path = typer.Option(Path("runs/prefixes"), help="Output folder."),
             policy: str = typer.Option("uniform", help="Cut policy: uniform (paper) | fixed | tokens | adaptive."),
             cuts: int = typer.Option(3, help="uniform: prefixes per trace."),
             low: float = typer.Option(0.4, help="uniform: lowest cut, as a fraction of the trace."),
             high: float = typer.Option(0.8, help="uniform: highest cut, as a fraction of the trace."),
             fraction: list[float] = typer.Option([0.5], help="fixed: a prefix fraction (repeatable)."),
             tokens: list[int] = typer.Option([], help="tokens: a prefix length in policy tokens (repeatable)."),
             snap: Optional[str] = typer.Option(None, help="Cut only where a step starts with this separator."),
             unprefixed: int = typer.Option(1, help="Unprefixed copies per problem (1: the paper's 3:1; 0: prefixed only)."),
             calibrate_n: int = typer.Option(0, help="Measure success vs prefix fraction with this many samples "
                                              "(needed by --policy adaptive)."),
             band: tuple[float, float] = typer.Option((0.2, 0.8), help="adaptive: target success band of a prefix."),
             max_completion_length: Optional[int] = MAX_COMPLETION,
             max_prompt_length: Optional[int] = typer.Option(None, help="Tokens a prompt (rendered problem + prefix) "
                                                             "may have (default: as the context window allows)."),
             on_too_long: str = typer.Option("error", help="A longer prefixed prompt: 'error' (refuse, naming the "
                                             "trace) or 'truncate' (cut that prefix shorter)."),
             seed: int = SEED, quiet: bool = QUIET):
    """Cut prefixes from correct traces and write the training mix (train.jsonl)."""
    from prefixrl.files import write_jsonl
    from prefixrl.flops import FlopsLedger
    from prefixrl.models import load_model, n_params, resolve_model
    from prefixrl.prefixes import PrefixConfig, prefixed_problems, shortening_report, with_context_limit
    from prefixrl.runinfo import write_manifest
    from prefixrl.tasks import problems_by_id
    from prefixrl.traces import load_traces

    start = time.time()
    try:
        the_task = _task(task, task_arg)
        cfg = PrefixConfig(policy=policy, cuts_per_trace=cuts, low=low, high=high, fractions=list(fraction),
                           token_counts=list(tokens), band=band, snap=snap, unprefixed_per_problem=unprefixed,
                           max_prompt_length=max_prompt_length, on_too_long=on_too_long, seed=seed)
        model_obj, tokenizer = load_model(resolve_model(model))
        max_completion_length = _max_completion_length(max_completion_length)
        cfg = with_context_limit(cfg, model_obj, max_completion_length)
        all_traces = load_traces(traces)
        problems = problems_by_id(the_task)
        calibration = None
        if calibrate_n:
            from prefixrl.generate import SamplingParams, sampler_for
            from prefixrl.prefixes import calibrate, success_curve
            from prefixrl.report import plot_success_vs_prefix

            sampler = sampler_for(model_obj, tokenizer, SamplingParams(max_new_tokens=max_completion_length))
            calibration = calibrate(the_task, sampler, tokenizer, all_traces, problems, out, n=calibrate_n,
                                    seed=seed, quiet=quiet, cfg=cfg)
            curve = success_curve(calibration)
            plot_success_vs_prefix({model: curve}, out / "success_vs_prefix.png")
            _print_dict("success vs prefix fraction", {f"{f:.0%}": v for f, v in curve.items()})
        shortened = []
        rows = prefixed_problems(tokenizer, all_traces, problems, cfg, calibration=calibration, shortened=shortened)
        write_jsonl(out / "train.jsonl", rows)
        ledger = FlopsLedger(out / "flops.json", fresh=True)  # calibration's sampling, chargeable (--prior-flops)
        ledger.add("calibration", n_params=n_params(model_obj),
                   inference_tokens=sum(p["tokens"] for row in calibration or [] for p in row["points"]))
        write_manifest(out, stage="prefixes", config={"model": model, "traces": str(traces), **asdict(cfg)},
                       seed=seed, flops=ledger.total, wall_time_s=time.time() - start, task=the_task,
                       extra={"shortened_prefixes": shortened})
    except (ValueError, InputError) as err:
        _fail(err)
    n_prefixed = sum(r["prefixed"] for r in rows)
    if shortened:
        console.print(f"[yellow]{escape(shortening_report(shortened, rows, cfg.max_prompt_length))}[/yellow]")
    console.print(f"wrote {len(rows)} rows ({n_prefixed} prefixed, {len(rows) - n_prefixed} unprefixed) "
                  f"to {out / 'train.jsonl'}")


@app.command()
def train(model: str = typer.Argument(..., help="The base policy: a model folder or builtin:TASK."),
          task: str = TASK, task_arg: list[str] = TASK_ARGS,
          data: Path = typer.Option(..., help="Training rows from `prefixrl prefixes` (train.jsonl)."),
          out: Path = typer.Option(Path("runs/train"), help="Run folder (resumes from its last checkpoint)."),
          method: str = typer.Option("prefixrl", help="prefixrl | prefixrl-only | prefixrl-adaptive | rl | rl-n64 | "
                                     "sft-rl | offpolicy-is | luffy | hint (see `prefixrl.methods`)."),
          traces: Optional[Path] = typer.Option(None, help="traces.jsonl: needed by sft-rl, offpolicy-is, luffy."),
          steps: int = typer.Option(100, help="Optimizer steps."),
          problems_per_step: int = typer.Option(16, help="Problems per batch."),
          num_generations: int = typer.Option(8, help="Samples per problem (the group)."),
          lr: float = typer.Option(1e-4, help="Learning rate."),
          loss_type: str = typer.Option("dr_grpo", help="Any TRL GRPO loss type (dr_grpo: plain REINFORCE)."),
          scale_rewards: str = typer.Option("none", help="none (paper) | group | batch: std scaling of advantages."),
          beta: float = typer.Option(0.0, help="KL coefficient against the base policy (paper: 0)."),
          is_truncation: Optional[float] = typer.Option(None, help="offpolicy-is: cap on pi/mu (default: none)."),
          sft_epochs: Optional[int] = typer.Option(None, help="sft-rl: passes of SFT over the traces (default 100: tiny models)."),
          sft_sweep_lr: Optional[list[float]] = typer.Option(None, help="sft-rl: tune SFT on the task's validation "
                                                             "split over these learning rates (repeat the option) x "
                                                             "25/50/100/200 passes; the best by validation pass@1."),
          eval_every: int = typer.Option(20, help="Steps between unprefixed evaluations (0: none, not even "
                                         "at the start and end; evaluate the model afterwards with vLLM)."),
          eval_n: int = typer.Option(16, help="Samples per problem at each evaluation."),
          eval_batch_size: int = typer.Option(512, help="Sequences per generation batch at each evaluation (lower "
                                              "it for long samples on big models)."),
          save_every: int = typer.Option(50, help="Steps between checkpoints (a killed run resumes from the last)."),
          reliance_n: int = typer.Option(0, help="At each evaluation, samples per prefixed training row: each "
                                         "training problem's success with its prefixes vs without (0: off)."),
          heldout: str = typer.Option("heldout", help="Held-out problems: split name or JSONL."),
          prior_flops: Optional[Path] = typer.Option(None, help="flops.json of earlier stages to charge (e.g. collect's)."),
          micro_batch_size: Optional[int] = typer.Option(None, help="Samples per process per forward/backward "
                                                         "(gradients accumulate to the whole batch)."),
          bf16: bool = typer.Option(False, help="bf16 mixed precision (GPUs)."),
          gradient_checkpointing: bool = typer.Option(False, help="Recompute activations: less memory, more time."),
          use_vllm: bool = typer.Option(False, help="Sample rollouts with vLLM (TRL's use_vllm; GPU only)."),
          vllm_mode: str = typer.Option("server", help="server (a `trl vllm-serve` on other GPUs) | colocate."),
          vllm_server_base_url: Optional[str] = typer.Option(None, help="server: its URL (default: "
                                                             "http://0.0.0.0:8000)."),
          vllm_gpu_memory_utilization: float = typer.Option(0.3, help="colocate: share of each GPU for vLLM."),
          vllm_tensor_parallel_size: int = typer.Option(1, help="colocate: GPUs per vLLM engine."),
          sampler: str = typer.Option("auto", help="Rollouts and evaluations: 'auto' (on CPU, a fast decode loop for "
                                      "small Llama / Qwen models, else transformers) | 'hf' (transformers' generate)."),
          split_grad_norms: bool = typer.Option(True, help="Log each part's gradient norm (prefixed / unprefixed) "
                                                "with one backward pass per part (--no-split-grad-norms: TRL's one pass)."),
          max_completion_length: Optional[int] = MAX_COMPLETION, seed: int = SEED,
          report_to: Optional[str] = REPORT_TO):
    """RL on prefixed problems (only the policy's own continuation is trained), or a baseline.
    Several GPUs: `accelerate launch --config_file configs/accelerate/... -m prefixrl.cli train ...`."""
    from prefixrl.files import read_jsonl
    from prefixrl.flops import FlopsLedger
    from prefixrl.methods import run_method
    from prefixrl.models import resolve_model
    from prefixrl.sft import SFTStageConfig
    from prefixrl.tasks import load_problems, problems_by_id
    from prefixrl.traces import load_traces
    from prefixrl.train import TrainConfig

    try:
        the_task = _task(task, task_arg)
        rows = read_jsonl(data, required=("prompt", "problem_id", "prefix", "prefixed"))
        cfg = TrainConfig(steps=steps, problems_per_step=problems_per_step, num_generations=num_generations, lr=lr,
                          loss_type=loss_type, scale_rewards=scale_rewards, beta=beta, is_truncation=is_truncation,
                          eval_every=eval_every, eval_n=eval_n, eval_batch_size=eval_batch_size, save_every=save_every,
                          reliance_n=reliance_n,
                          max_completion_length=_max_completion_length(max_completion_length), seed=seed,
                          micro_batch_size=micro_batch_size, bf16=bf16, gradient_checkpointing=gradient_checkpointing,
                          use_vllm=use_vllm, vllm_mode=vllm_mode, vllm_server_base_url=vllm_server_base_url,
                          vllm_gpu_memory_utilization=vllm_gpu_memory_utilization,
                          vllm_tensor_parallel_size=vllm_tensor_parallel_size, report_to=report_to or "none",
                          sampler=sampler, split_grad_norms=split_grad_norms)
        by_id = problems_by_id(the_task)
        ids = list(dict.fromkeys(r["problem_id"] for r in rows))
        unknown = [pid for pid in ids if pid not in by_id]
        if unknown:
            raise InputError(f"{data}: {len(unknown)} of {len(ids)} problems are not task {the_task.name!r}'s, e.g. "
                             f"{unknown[0]!r}: train with the --task (and --task-arg) the rows were made for")
        hard = [by_id[pid] for pid in ids]
        evals = {"train": hard, "heldout": load_problems(the_task, heldout)}
        path = run_method(method, the_task, resolve_model(model), rows, out, cfg,
                          traces=load_traces(traces) if traces else None, eval_problems=evals,
                          prior_flops=FlopsLedger(prior_flops) if prior_flops else None,
                          sft_cfg=SFTStageConfig(seed=seed, sweep_lr=sft_sweep_lr or [],
                                                 **({"epochs": sft_epochs} if sft_epochs else {})))
    except (ValueError, InputError, ImportError) as err:
        _fail(err)
    if os.environ.get("RANK", "0") == "0":  # the main process of an `accelerate launch`
        console.print(f"saved the trained policy to {path}")


@app.command()
def evaluate(model: str = typer.Argument(..., help="Model folder, or `builtin:TASK`."),
             task: str = TASK, task_arg: list[str] = TASK_ARGS,
             problems: str = typer.Option("heldout", help="Split name or a JSONL file of problems."),
             n: int = typer.Option(256, help="Samples per problem (paper: 256)."),
             out: Path = typer.Option(Path("runs/eval"), help="Output folder (resumes if it exists)."),
             backend: str = BACKEND, temperature: float = typer.Option(0.7, help="Sampling temperature (paper: 0.7)."),
             max_new_tokens: Optional[int] = MAX_NEW, batch_size: int = BATCH, seed: int = SEED, quiet: bool = QUIET):
    """Unbiased pass@k (k = 1, 2, 4, ..., n) on unprefixed problems."""
    from prefixrl.evaluate import evaluate as run
    from prefixrl.tasks import load_problems

    try:
        the_task = _task(task, task_arg)
        result = run(the_task, _sampler(model, backend, temperature, max_new_tokens, batch_size),
                     load_problems(the_task, problems), n, out, seed=seed, quiet=quiet)
    except (ValueError, InputError) as err:
        _fail(err)
    _print_dict(f"evaluate: {problems}", result)


@app.command()
def demo(config: Path = typer.Option(Path("configs/demo.yaml"), help="Demo configuration."),
         out: Path = typer.Option(Path("runs/demo"), help="Run folder (resumes if it exists)."),
         quiet: bool = QUIET, report_to: Optional[str] = REPORT_TO):
    """The whole pipeline on a built-in task, end to end on CPU."""
    from prefixrl.demo import run_demo

    try:
        run_demo(config, out, quiet=quiet, console=console, report_to=report_to)
    except (ValueError, InputError) as err:
        _fail(err)


@app.command()
def experiment(config: Path = typer.Argument(..., help="Experiment configuration (e.g. configs/benchmark.yaml)."),
               out: Path = typer.Option(Path("runs/experiment"), help="Run folder (resumes if it exists)."),
               quiet: bool = QUIET, report_to: Optional[str] = REPORT_TO,
               list_: bool = typer.Option(False, "--list", help="List the runs by index (and which have finished); "
                                          "run nothing."),
               prepare: bool = typer.Option(False, "--prepare", help="Only the shared data stages (screen, collect, "
                                            "prefixes), which every --run reuses."),
               run: Optional[int] = typer.Option(None, "--run", help="Train run I alone (an index of --list; a job "
                                                 "of a Slurm array), after the shared data stages."),
               report_only: bool = typer.Option(False, "--report-only", help="Only the report, from the finished "
                                                "run folders.")):
    """Methods x seeds at equal FLOPs budgets, then the report (curves, speedup, claims).
    On a cluster: --prepare, then --run I for every I of --list (one job each), then --report-only."""
    from prefixrl.experiment import list_runs, run_experiment

    try:
        if sum([list_, prepare, run is not None, report_only]) > 1:
            raise InputError("--list, --prepare, --run and --report-only are separate steps: give one at a time")
        summary = {"runs": list_runs(config, out)} if list_ else run_experiment(
            config, out, quiet=quiet, console=console, report_to=report_to, run=run, prepare_only=prepare,
            report_only=report_only)
    except (ValueError, InputError) as err:
        _fail(err)
    if list_ or prepare or run is not None:
        for r in summary["runs"]:  # plain tab-separated lines, for scripts (configs/slurm-experiment.sh)
            status = "finished" if r["finished"] else "to run"
            print(f"{r['index']}\t{r['method']}\t{r['seed']}\t{r['folder']}\t{status}")
        console.print(f"{len(summary['runs'])} runs: --run 0 .. --run {len(summary['runs']) - 1}")
        return
    for claim in summary["claims"]:
        console.print(f"[bold]{claim['status']}[/bold]: {claim['claim']} ({claim['evidence']})")


@app.command()
def estimate(config: Path = typer.Argument(..., help="A run config (e.g. configs/paper-llama8b.yaml, or a run's config.json)."),
             params: Optional[float] = typer.Option(None, help="N, the model's parameters (default: the config's "
                                                    "`params:`, a local config.json, or the built-in table)."),
             trace_params: Optional[float] = typer.Option(None, help="N of the trace_model, if the config has one."),
             prompt_tokens: float = typer.Option(200, help="Assumed mean prompt tokens (chat template included)."),
             generated_share: float = typer.Option(0.5, help="Assumed mean generated tokens, as a share of the max."),
             hard_share: float = typer.Option(0.25, help="Assumed share of screened problems that are hard."),
             attempts: float = typer.Option(650, help="Assumed samples paid per hard problem in rejection sampling."),
             solved_share: float = typer.Option(1.0, help="Assumed share of hard problems that get a trace."),
             heldout: int = typer.Option(60, help="Held-out problems available for evaluation."),
             screened: Optional[int] = typer.Option(None, help="Problems screened (default: the config's screen.limit)."),
             gpu: str = typer.Option("H100 SXM", help="Name of the accelerator (for the printout)."),
             peak_tflops: float = typer.Option(989.0, help="Its peak dense bf16 TFLOP/s."),
             train_mfu: float = typer.Option(0.40, help="Model FLOPs utilisation of updates."),
             generate_mfu: float = typer.Option(0.10, help="Model FLOPs utilisation of sampling."),
             as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table.")):
    """FLOPs and GPU-hours of each stage (screen, collect, train, evaluate) of a config, from the FLOPs ledger."""
    from prefixrl.estimate import Assumptions, Hardware, estimate_file, print_estimate

    try:
        result = estimate_file(config, Assumptions(prompt_tokens=prompt_tokens, generated_share=generated_share,
                                                   hard_share=hard_share, attempts=attempts, solved_share=solved_share,
                                                   heldout=heldout, screened=screened),
                               Hardware(name=gpu, peak_tflops=peak_tflops, train_mfu=train_mfu, generate_mfu=generate_mfu),
                               params=params, trace_params=trace_params)
    except (ValueError, InputError) as err:
        _fail(err)
    if as_json:
        print(json.dumps(result, indent=2))
    else:
        print_estimate(result, console)


export_app = typer.Typer(help="Write prefixrl's data for other RL engines.", no_args_is_help=True)
app.add_typer(export_app, name="export")


@export_app.command("verl")
def export_verl(data: Path = typer.Argument(..., help="Training rows from `prefixrl prefixes` (train.jsonl)."),
                out: Path = typer.Option(..., help="Output folder for the Parquet files, reward.py and run_verl.sh."),
                task: str = TASK, task_arg: list[str] = TASK_ARGS,
                heldout: Optional[str] = typer.Option(None, help="Held-out problems to validate on too: a split "
                                                      "name or JSONL (needs --model to render them)."),
                model: Optional[str] = typer.Option(None, help="The policy: its chat template renders --heldout, "
                                                    "and run_verl.sh names it.")):
    """verl's Parquet format (prompt ending with the prefix) and a matching compute_score reward."""
    from prefixrl.export import export_verl as run
    from prefixrl.files import read_jsonl
    from prefixrl.models import resolve_model
    from prefixrl.tasks import load_problems, problems_by_id

    try:
        the_task = _task(task, task_arg)
        rows = read_jsonl(data, required=("prompt", "problem_id", "prefix", "prefixed"))
        model_path = resolve_model(model) if model else "MODEL"
        pairs, tokenizer = None, None
        if heldout and not model:
            raise InputError("--heldout needs --model: held-out prompts are rendered with the policy's chat template")
        if model:  # its tokenizer renders --heldout and sizes run_verl.sh's max_prompt_length
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(model_path)
        if heldout:
            from prefixrl.prefixes import render_prompt

            pairs = [(p, render_prompt(tokenizer, p.prompt, "")) for p in load_problems(the_task, heldout)]
        counts = run(rows, the_task, problems_by_id(the_task), out, heldout=pairs, model=model_path, tokenizer=tokenizer)
    except (ValueError, InputError) as err:
        _fail(err)
    console.print(f"wrote {', '.join(f'{name} ({n} rows)' for name, n in counts.items())}, reward.py and run_verl.sh "
                  f"to {out}")
    console.print(f"train on verl: MODEL=<the policy> bash {out / 'run_verl.sh'} trainer.n_gpus_per_node=8")


def _print_dict(title: str, values: dict) -> None:
    table = Table(title=title, show_header=False)
    for key, value in values.items():
        table.add_row(key, f"{value:.4g}" if isinstance(value, float) else str(value))
    console.print(table)


def _disk_errors(command):
    """A command whose folder or file cannot be read or written (missing, read-only, disk full)
    ends with the tool's own error naming the path and the fix, not a traceback."""
    @functools.wraps(command)
    def guarded(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except OSError as err:
            fix = {errno.ENOSPC: "free some space and rerun the same command (it resumes)",
                   errno.ENOENT: "check the path"}.get(err.errno, "pass a folder you can write to (--out), "
                                                                "or fix its permissions")
            where = f"{err.filename}: " if err.filename else ""
            _fail(InputError(f"{where}{err.strerror or err}: {fix}"))
    return guarded


for _info in app.registered_commands + export_app.registered_commands:  # every command, however added
    _info.callback = _disk_errors(_info.callback)


if __name__ == "__main__":
    app()
