"""The `prefixrl` command: one subcommand per pipeline stage, plus the demo, experiments, estimates
and exports.

Every subcommand is a thin wrapper over a library function of the same stage module. Option
defaults are the library's own (config.py; tests/test_cli_errors.py checks that they agree), and
`prefixrl train` has an option for every TrainConfig field. A library error (bad input, a missing
extra, a disk error) ends any command with `error: ...` and exit status 2, not a traceback
(cli_common.guard).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape

from prefixrl.cli_common import (BACKEND, BATCH, MAX_COMPLETION, MAX_NEW, QUIET, REPORT_TO, SEED, TASK, TASK_ARGS,
                                 TEMPERATURE,
                                 config_options, console, fail, guard_all, load_task_for, print_dict, sampler_of)
from prefixrl.config import (CollectConfig, PrefixConfig, PretrainConfig, SFTStageConfig, TinyModelConfig,
                             TrainConfig, default)
from prefixrl.files import InputError
from prefixrl.methods import METHODS

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # every model and tokenizer here is local
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # a bar per (tiny) model load is noise

app = typer.Typer(help="PrefixRL: RL on hard problems, conditioned on prefixes of correct off-policy traces.",
                  no_args_is_help=True, pretty_exceptions_enable=False)
export_app = typer.Typer(help="Write prefixrl's data for other RL engines.", no_args_is_help=True)
app.add_typer(export_app, name="export")


@app.command()
def pretrain(task: str = typer.Argument(..., help="Task whose base model to train."),
             task_arg: list[str] = TASK_ARGS,
             out: Path = typer.Option(..., help="Folder for the model (save_pretrained format)."),
             steps: int = typer.Option(default(PretrainConfig, "steps"), help="Optimizer steps."),
             batch_size: int = typer.Option(default(PretrainConfig, "batch_size"), help="Sequences per step."),
             lr: float = typer.Option(default(PretrainConfig, "lr"), help="Peak learning rate (cosine schedule)."),
             tokenizer: str = typer.Option(default(PretrainConfig, "tokenizer"), help="'char', or 'bpe' (a byte-level "
                                           "BPE learned from the corpus)."),
             hidden_size: int = typer.Option(default(TinyModelConfig, "hidden_size"), help="Model width (the MLP is "
                                             "3x wider)."),
             layers: int = typer.Option(default(TinyModelConfig, "num_hidden_layers"), help="Transformer layers."),
             seed: int = SEED):
    """Train a task's tiny base model from random weights on its corpus of worked attempts."""
    from prefixrl.pretrain import pretrain as run

    shape = TinyModelConfig(hidden_size=hidden_size, num_hidden_layers=layers, intermediate_size=3 * hidden_size)
    path = run(load_task_for(task, task_arg), out, PretrainConfig(steps=steps, batch_size=batch_size, lr=lr, seed=seed,
                                                          model=shape, tokenizer=tokenizer))
    console.print(f"saved base model to {path}")


@app.command()
def screen(model: str = typer.Argument(..., help="Model folder, or `builtin:TASK` for a shipped base model."),
           task: Optional[str] = TASK, task_arg: list[str] = TASK_ARGS,
           problems: str = typer.Option("train", help="Split name or a JSONL file of problems."),
           n: int = typer.Option(512, help="Samples per problem."),
           k: Optional[int] = typer.Option(None, help="Hard means pass@k = 0 (default k = n)."),
           out: Path = typer.Option(Path("runs/screen"), help="Output folder (resumes if it exists)."),
           backend: str = BACKEND, temperature: float = TEMPERATURE, max_new_tokens: int = MAX_NEW,
           batch_size: int = BATCH, seed: int = SEED, quiet: bool = QUIET):
    """Sample n completions per problem, report pass@k, write the hard subset (hard.jsonl)."""
    from prefixrl.screen import screen as run
    from prefixrl.tasks import load_problems

    the_task = load_task_for(task, task_arg, model)
    hard = run(the_task, sampler_of(model, backend, temperature, max_new_tokens, batch_size),
               load_problems(the_task, problems), out, n=n, k=k, seed=seed, quiet=quiet)
    summary = json.loads((out / "screen.json").read_text())
    print_dict(f"screen: {len(hard)} of {summary['problems']} problems are hard", summary)


@app.command()
def collect(model: str = typer.Argument(..., help="Model folder, or `builtin:TASK`."),
            task: Optional[str] = TASK, task_arg: list[str] = TASK_ARGS,
            problems: str = typer.Option(..., help="JSONL of problems (e.g. screen's hard.jsonl) or a split."),
            out: Path = typer.Option(Path("runs/traces"), help="Output folder (resumes if it exists)."),
            max_attempts: int = typer.Option(default(CollectConfig, "max_attempts"), help="Cap on attempts per problem."),
            traces_per_problem: int = typer.Option(default(CollectConfig, "traces_per_problem"), help="Stop a problem "
                                                   "after this many correct traces."),
            attempts_per_round: int = typer.Option(default(CollectConfig, "attempts_per_round"), help="Samples per "
                                                   "problem per round."),
            backend: str = BACKEND, temperature: float = TEMPERATURE, max_new_tokens: int = MAX_NEW,
            batch_size: int = BATCH, seed: int = SEED, quiet: bool = QUIET):
    """Rejection-sample verified-correct traces (resumable: rerun the same command after a kill)."""
    from prefixrl.tasks import load_problems
    from prefixrl.traces import collect as run

    the_task = load_task_for(task, task_arg, model)
    cfg = CollectConfig(max_attempts=max_attempts, traces_per_problem=traces_per_problem,
                        attempts_per_round=attempts_per_round, seed=seed)
    run(the_task, sampler_of(model, backend, temperature, max_new_tokens, batch_size),
        load_problems(the_task, problems), out, cfg, source=model, quiet=quiet)
    summary = json.loads((out / "collect.json").read_text())
    summary.pop("per_problem")
    print_dict(f"collect: traces in {out / 'traces.jsonl'}", summary)


@app.command("import")
def import_(store: Path = typer.Argument(..., help="Trace store folder (its traces.jsonl is extended)."),
            file: Path = typer.Option(..., "--file", "-f", help="JSONL, Parquet, or a saved `datasets` folder."),
            task: Optional[str] = TASK, task_arg: list[str] = TASK_ARGS,
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

    report = import_traces(load_task_for(task, task_arg), store / "traces.jsonl", file, source=source,
                           problem_column=problem_column, text_column=text_column, question_column=question_column)
    for reject in report["rejected"]:
        console.print(f"[yellow]rejected[/yellow] {file}, line {reject['line']}: {reject['reason']}")
    console.print(f"imported {report['added']} traces into {report['store']}; rejected {len(report['rejected'])}")
    rerun = bool(report["rejected"]) and all("duplicate" in r["reason"] for r in report["rejected"])  # idempotent
    if report["added"] == 0 and not rerun:
        fail(InputError(f"{file}: no trace imported (see the reasons above): fix the records, or name their fields "
                         "with --problem-column, --question-column or --text-column"))


@app.command()
def reference(task: Optional[str] = TASK, task_arg: list[str] = TASK_ARGS,
              problems: str = typer.Option(..., help="JSONL of problems (e.g. screen's hard.jsonl) or a split."),
              out: Path = typer.Option(Path("runs/traces"), help="Output folder (a trace store, as collect writes).")):
    """Traces from the problems' own reference solutions (POPE-style), without rejection sampling:
    each verified by the task, source "reference", no collection FLOPs (math: --task-arg
    solution_column=solution; reasoning-gym: the dataset's answers)."""
    from prefixrl.tasks import load_problems
    from prefixrl.traces import reference_traces

    the_task = load_task_for(task, task_arg)
    traces = reference_traces(the_task, load_problems(the_task, problems), out)
    summary = json.loads((out / "collect.json").read_text())
    for row in summary["per_problem"]:
        if not row["solved"]:
            console.print(f"[yellow]no trace[/yellow] for {row['id']}: {row['reason']}")
    if not traces:
        fail(InputError(f"{problems}: no problem has a correct reference solution (see above); collect traces "
                         "by rejection sampling instead"))
    console.print(f"reference: {len(traces)} traces of {summary['problems']} problems in {out / 'traces.jsonl'} "
                  "(0 collection FLOPs)")


@app.command()
def prefixes(model: str = typer.Argument(..., help="The policy (its tokenizer cuts the traces; calibration samples it)."),
             task: Optional[str] = TASK, task_arg: list[str] = TASK_ARGS,
             traces: Path = typer.Option(..., help="Trace store (traces.jsonl)."),
             out: Path = typer.Option(Path("runs/prefixes"), help="Output folder."),
             policy: str = typer.Option(default(PrefixConfig, "policy"), help="Cut policy: uniform (paper) | fixed | "
                                        "tokens | adaptive."),
             cuts: int = typer.Option(default(PrefixConfig, "cuts_per_trace"), help="uniform: prefixes per trace."),
             low: float = typer.Option(default(PrefixConfig, "low"), help="uniform: lowest cut, as a fraction of the "
                                       "trace."),
             high: float = typer.Option(default(PrefixConfig, "high"), help="uniform: highest cut, as a fraction of "
                                        "the trace."),
             fraction: list[float] = typer.Option(default(PrefixConfig, "fractions"), help="fixed: a prefix fraction "
                                                  "(repeatable)."),
             tokens: list[int] = typer.Option(default(PrefixConfig, "token_counts"), help="tokens: a prefix length in "
                                              "policy tokens (repeatable)."),
             snap: Optional[str] = typer.Option(default(PrefixConfig, "snap"), help="Cut only where a step starts "
                                                "with this separator."),
             unprefixed: int = typer.Option(default(PrefixConfig, "unprefixed_per_problem"), help="Unprefixed copies "
                                            "per problem (1: the paper's 3:1; 0: prefixed only)."),
             calibrate_n: int = typer.Option(0, help="Measure success vs prefix fraction with this many samples "
                                              "(0: not measured; needed by --policy adaptive)."),
             band: tuple[float, float] = typer.Option(default(PrefixConfig, "band"), help="adaptive: target success "
                                                      "band of a prefix."),
             max_completion_length: int = MAX_COMPLETION,
             max_prompt_length: Optional[int] = typer.Option(default(PrefixConfig, "max_prompt_length"), help="Tokens "
                                                             "a prompt (rendered problem + prefix) may have (default: "
                                                             "as the context window allows)."),
             on_too_long: str = typer.Option(default(PrefixConfig, "on_too_long"), help="A longer prefixed prompt: "
                                             "'error' (refuse, naming the trace) or 'truncate' (cut that prefix "
                                             "shorter)."),
             seed: int = SEED, quiet: bool = QUIET):
    """Cut prefixes from correct traces and write the training mix (train.jsonl)."""
    from prefixrl.pipeline import prefixes_stage
    from prefixrl.prefixes import shortening_report

    cfg = PrefixConfig(policy=policy, cuts_per_trace=cuts, low=low, high=high, fractions=list(fraction),
                       token_counts=list(tokens), band=band, snap=snap, unprefixed_per_problem=unprefixed,
                       max_prompt_length=max_prompt_length, on_too_long=on_too_long, seed=seed)
    rows, shortened, curve, cfg = prefixes_stage(load_task_for(task, task_arg, model), model, traces, out, cfg,
                                                 max_completion_length, calibrate_n, quiet)
    if curve:
        print_dict("success vs prefix fraction", {f"{f:.0%}": v for f, v in curve.items()})
    n_prefixed = sum(r["prefixed"] for r in rows)
    if shortened:
        console.print(f"[yellow]{escape(shortening_report(shortened, rows, cfg.max_prompt_length))}[/yellow]")
    console.print(f"wrote {len(rows)} rows ({n_prefixed} prefixed, {len(rows) - n_prefixed} unprefixed) "
                  f"to {out / 'train.jsonl'}")


@app.command()
@config_options(TrainConfig)
def train(model: str = typer.Argument(..., help="The base policy: a model folder or builtin:TASK."),
          task: Optional[str] = TASK, task_arg: list[str] = TASK_ARGS,
          data: Path = typer.Option(..., help="Training rows from `prefixrl prefixes` (train.jsonl)."),
          out: Path = typer.Option(Path("runs/train"), help="Run folder (resumes from its last checkpoint)."),
          method: str = typer.Option("prefixrl", help=f"{' | '.join(METHODS)} (see `prefixrl.methods`)."),
          traces: Optional[Path] = typer.Option(None, help="traces.jsonl: needed by "
                                                f"{', '.join(m.name for m in METHODS.values() if m.uses_traces)}."),
          sft_epochs: int = typer.Option(default(SFTStageConfig, "epochs"), help="sft-rl: passes of SFT over the "
                                         "traces (without --sft-sweep-lr)."),
          sft_sweep_lr: Optional[list[float]] = typer.Option(None, help="sft-rl: tune SFT on the task's validation "
                                                             "split over these learning rates (repeat the option) x "
                                                             "25/50/100/200 passes; the best by validation pass@1."),
          heldout: str = typer.Option("heldout", help="Held-out problems: split name or JSONL."),
          prior_flops: Optional[Path] = typer.Option(None, help="flops.json of earlier stages to charge (e.g. "
                                                     "collect's)."),
          cfg: TrainConfig = None):
    """RL on prefixed problems (only the policy's own continuation is trained), or a baseline.
    Every TrainConfig field is an option. Several GPUs:
    `accelerate launch --config_file configs/accelerate/... -m prefixrl.cli train ...`."""
    from prefixrl.engine import run_method
    from prefixrl.files import read_jsonl
    from prefixrl.flops import FlopsLedger
    from prefixrl.models import resolve_model
    from prefixrl.tasks import load_problems, problems_by_id
    from prefixrl.traces import load_traces

    the_task = load_task_for(task, task_arg, model)
    rows = read_jsonl(data, required=("prompt", "problem_id", "prefix", "prefixed"))
    by_id = problems_by_id(the_task)
    ids = list(dict.fromkeys(r["problem_id"] for r in rows))
    unknown = [pid for pid in ids if pid not in by_id]
    if unknown:
        raise InputError(f"{data}: {len(unknown)} of {len(ids)} problems are not task {the_task.name!r}'s, e.g. "
                         f"{unknown[0]!r}: train with the --task (and --task-arg) the rows were made for")
    evals = {"train": [by_id[pid] for pid in ids], "heldout": load_problems(the_task, heldout)}
    path = run_method(method, the_task, resolve_model(model), rows, out, cfg,
                      traces=load_traces(traces) if traces else None, eval_problems=evals,
                      prior_flops=FlopsLedger(prior_flops) if prior_flops else None,
                      sft_cfg=SFTStageConfig(seed=cfg.seed, sweep_lr=sft_sweep_lr or [], epochs=sft_epochs))
    if os.environ.get("RANK", "0") == "0":  # the main process of an `accelerate launch`
        console.print(f"saved the trained policy to {path}")


@app.command()
def evaluate(model: str = typer.Argument(..., help="Model folder, or `builtin:TASK`."),
             task: Optional[str] = TASK, task_arg: list[str] = TASK_ARGS,
             problems: str = typer.Option("heldout", help="Split name or a JSONL file of problems."),
             n: int = typer.Option(256, help="Samples per problem (paper: 256)."),
             out: Path = typer.Option(Path("runs/eval"), help="Output folder (resumes if it exists)."),
             backend: str = BACKEND,
             temperature: float = typer.Option(default(TrainConfig, "eval_temperature"), help="Sampling temperature "
                                               "(paper: 0.7)."),
             max_new_tokens: int = MAX_NEW, batch_size: int = BATCH, seed: int = SEED, quiet: bool = QUIET):
    """Unbiased pass@k (k = 1, 2, 4, ..., n) on unprefixed problems."""
    from prefixrl.evaluate import evaluate as run
    from prefixrl.tasks import load_problems

    the_task = load_task_for(task, task_arg, model)
    result = run(the_task, sampler_of(model, backend, temperature, max_new_tokens, batch_size),
                 load_problems(the_task, problems), n, out, seed=seed, quiet=quiet)
    print_dict(f"evaluate: {problems}", result)


@app.command()
def demo(config: Path = typer.Option(Path("configs/demo.yaml"), help="Demo configuration."),
         out: Path = typer.Option(Path("runs/demo"), help="Run folder (resumes if it exists)."),
         quiet: bool = QUIET, report_to: Optional[str] = REPORT_TO):
    """The whole pipeline on a built-in task, end to end on CPU."""
    from prefixrl.demo import run_demo

    run_demo(config, out, quiet=quiet, console=console, report_to=report_to)


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

    if sum([list_, prepare, run is not None, report_only]) > 1:
        raise InputError("--list, --prepare, --run and --report-only are separate steps: give one at a time")
    summary = {"runs": list_runs(config, out)} if list_ else run_experiment(
        config, out, quiet=quiet, console=console, report_to=report_to, run=run, prepare_only=prepare,
        report_only=report_only)
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

    result = estimate_file(config, Assumptions(prompt_tokens=prompt_tokens, generated_share=generated_share,
                                               hard_share=hard_share, attempts=attempts, solved_share=solved_share,
                                               heldout=heldout, screened=screened),
                           Hardware(name=gpu, peak_tflops=peak_tflops, train_mfu=train_mfu, generate_mfu=generate_mfu),
                           params=params, trace_params=trace_params)
    if as_json:
        print(json.dumps(result, indent=2))
    else:
        print_estimate(result, console)


@export_app.command("verl")
def export_verl(data: Path = typer.Argument(..., help="Training rows from `prefixrl prefixes` (train.jsonl)."),
                out: Path = typer.Option(..., help="Output folder for the Parquet files, reward.py and run_verl.sh."),
                task: Optional[str] = TASK, task_arg: list[str] = TASK_ARGS,
                heldout: Optional[str] = typer.Option(None, help="Held-out problems to validate on too: a split "
                                                      "name or JSONL (needs --model to render them)."),
                model: Optional[str] = typer.Option(None, help="The policy: its chat template renders --heldout, "
                                                    "and run_verl.sh names it.")):
    """verl's Parquet format (prompt ending with the prefix) and a matching compute_score reward."""
    from prefixrl.export import export_verl as run
    from prefixrl.files import read_jsonl
    from prefixrl.models import resolve_model
    from prefixrl.tasks import load_problems, problems_by_id

    the_task = load_task_for(task, task_arg, model)
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
    console.print(f"wrote {', '.join(f'{name} ({n} rows)' for name, n in counts.items())}, reward.py and run_verl.sh "
                  f"to {out}")
    console.print(f"train on verl: MODEL=<the policy> bash {out / 'run_verl.sh'} trainer.n_gpus_per_node=8")


guard_all(app)  # every command, however added


if __name__ == "__main__":
    app()
