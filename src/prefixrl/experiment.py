"""The compute-matched experiment: methods x seeds on the same data, stopped at the same FLOPs.

    prefixrl experiment configs/benchmark.yaml --out runs/benchmark

screen -> collect -> prefixes once (shared), then every (method, seed) run from the same base
model with the same settings, each stopped when its ledger reaches `budget_flops`. Methods that
use the traces are charged the collection FLOPs (and sft-rl its SFT), so their curves start
later. Then the report: curves against FLOPs, the headline speedup and final-reward ratios with
intervals over seeds, diagnostics, and each claim of the paper marked. A killed experiment
resumes: finished runs are skipped, an unfinished one continues from its last checkpoint.

On a cluster, each (method, seed) can be its own job (configs/slurm-experiment.sh):

    prefixrl experiment CONFIG --out D --list           # the runs, by index, and which are finished
    prefixrl experiment CONFIG --out D --prepare        # the shared data stages, once
    prefixrl experiment CONFIG --out D --run I          # run I alone (a Slurm array task each)
    prefixrl experiment CONFIG --out D --report-only    # the report, from the finished run folders
"""

from __future__ import annotations

import json
import os
import threading
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field, replace
from multiprocessing import get_context
from pathlib import Path

import torch
from rich.console import Console

from prefixrl.adaptive import AdaptiveConfig
from prefixrl.files import InputError, atomic_write_text, progress_bar
from prefixrl.generate import make_sampler
from prefixrl.config import CALIBRATION_N
from prefixrl.engine import run_method
from prefixrl.methods import METHODS
from prefixrl.pipeline import PipelineConfig, prepare_data
from prefixrl.prefixes import calibrate, success_curve
from prefixrl.report import write_experiment_report
from prefixrl.runinfo import write_manifest
from prefixrl.sft import SFTStageConfig
from prefixrl.train import TrainConfig


@dataclass
class ExperimentConfig(PipelineConfig):
    methods: list[str] = field(default_factory=lambda: ["prefixrl", "sft-rl", "rl"])
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    budget_flops: float = 1e14  # every run stops here (charged collection / SFT FLOPs included)
    heldout: int | None = None  # held-out problems evaluated (default: as many as have traces)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(steps=100_000))  # steps: a cap only
    sft: SFTStageConfig = field(default_factory=SFTStageConfig)
    adaptive: AdaptiveConfig = field(default_factory=AdaptiveConfig)  # prefixrl-adaptive's re-calibration
    calibration_traces: int = 8  # success vs prefix fraction, base vs each method's seed-0 policy
    calibration_n: int = CALIBRATION_N  # samples per (trace, prefix fraction)
    workers: int = 1  # runs trained at once, each in its own process (tiny models: 2 on 2 cores is ~1.7x faster)

    def __post_init__(self):
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown:
            raise ValueError(f"unknown methods {unknown}: choose from {', '.join(METHODS)}")
        if self.workers < 1:
            raise ValueError(f"workers must be >= 1, got {self.workers}")
        if not self.seeds:
            raise ValueError("an experiment needs at least one seed")
        if self.train.eval_every < 1:
            raise ValueError("an experiment compares runs by their evaluations: train.eval_every must be >= 1")
        self.budget_flops = float(self.budget_flops)  # YAML reads 1e14 as a string


def experiment_runs(cfg: ExperimentConfig) -> list[tuple[str, int]]:
    """Every (method, seed) of the experiment, in the order `--run I` indexes them."""
    return [(method, seed) for method in cfg.methods for seed in cfg.seeds]


def finished(folder: Path) -> bool:
    return (folder / "model").is_dir() and (folder / "manifest.json").exists()


def list_runs(config_path: str | Path, out: str | Path) -> list[dict]:
    """The experiment's runs by index, each with its folder and whether it has finished (from the
    config alone: nothing is loaded or run)."""
    cfg = ExperimentConfig.from_yaml(config_path)
    return [{"index": i, "method": m, "seed": s, "folder": str(run_dir(out, m, s)),
             "finished": finished(run_dir(out, m, s))} for i, (m, s) in enumerate(experiment_runs(cfg))]


def run_experiment(config_path: str | Path, out: str | Path, quiet: bool = False,
                   console: Console | None = None, report_to: str | None = None, run: int | None = None,
                   prepare_only: bool = False, report_only: bool = False) -> dict:
    """report_to: the trackers every run also logs to (over the config's train.report_to).
    run: train only run `run` (experiment_runs' index), after the shared data stages (done once:
    a later call reuses them from disk); prepare_only: only those stages; report_only: only the
    report, from run folders that are all finished."""
    console = console or Console()
    cfg = ExperimentConfig.from_yaml(config_path)
    if report_to:
        cfg.train = replace(cfg.train, report_to=report_to)
    runs = experiment_runs(cfg)
    if run is not None and not 0 <= run < len(runs):
        raise InputError(f"--run {run}: {config_path} has runs 0..{len(runs) - 1} (see --list)")
    out = Path(out)
    start = time.time()
    atomic_write_text(out / "config.json", json.dumps(asdict(cfg), indent=2))
    console.print(f"[bold]prefixrl experiment[/bold]: {', '.join(cfg.methods)} x seeds {cfg.seeds}, "
                  f"{cfg.budget_flops:.3g} FLOPs per run")
    data = prepare_data(cfg, out, console, quiet, max_completion_length=cfg.train.max_completion_length)
    evals = {"hard": data.solved, "heldout": data.task.problems("heldout")[:cfg.heldout or len(data.solved)]}
    if not evals["heldout"]:  # before any training: the report compares methods on held-out problems too
        raise InputError(f"task {cfg.task!r} has no held-out problems, which the experiment evaluates on "
                         "(math: add `heldout: FILE` to task_args)")
    if prepare_only or run is not None:
        if run is not None:
            console.rule(f"run {run} of 0..{len(runs) - 1}: {runs[run][0]}, seed {runs[run][1]}")
            _run(*runs[run], cfg=cfg, out=out, data=_shared(data), evals=evals)
        return {"runs": list_runs(config_path, out)}
    missing = [f"{r['index']} ({r['method']}, seed {r['seed']})" for r in list_runs(config_path, out)
               if not r["finished"]]
    if report_only and missing:
        raise InputError(f"{out}: runs {', '.join(missing)} are not finished; run them (--run I), then --report-only")
    _train_all(cfg, out, data, evals, [] if report_only else runs, console, quiet)
    return _report(cfg, out, data, console, quiet, start)


def _train_all(cfg: ExperimentConfig, out: Path, data, evals: dict, runs: list[tuple[str, int]], console: Console,
               quiet: bool) -> None:
    jobs = [dict(method=m, seed=seed, cfg=cfg, out=out, data=_shared(data), evals=evals) for m, seed in runs]
    # longest first, so the last runs finish together: a trace-free method is charged no collection,
    # so the same budget buys it more steps
    jobs.sort(key=lambda job: METHODS[job["method"]].charged_collection)
    failures = []

    def failed(job: dict, error: Exception) -> None:  # said at once; the other runs go on, a rerun resumes
        failures.append(error)
        console.print(f"[red]run {job['method']}, seed {job['seed']} failed[/red]: {error}")

    if cfg.workers == 1:
        for index, job in enumerate(jobs, 1):
            console.rule(f"run {index}/{len(jobs)}: {job['method']}, seed {job['seed']}")
            try:
                _run(**job)
            except Exception as error:
                failed(job, error)
    else:  # one process per run, each on its share of the cores; a bar over runs instead of steps
        console.rule(f"train: {len(jobs)} runs, {cfg.workers} at a time")
        threads = threads_per_worker(cfg.workers)
        with progress_bar(disable=quiet) as bar, ProcessPoolExecutor(
                cfg.workers, mp_context=get_context("spawn"), initializer=_init_worker,
                initargs=(threads, os.getpid())) as pool:
            bar_id = bar.add_task("runs", total=len(jobs), rate="")
            futures = {pool.submit(_run, **job): job for job in jobs}
            for future in as_completed(futures):
                try:
                    future.result()
                except Exception as error:
                    failed(futures[future], error)
                bar.advance(bar_id)
    if failures:  # no report from a partial experiment: the first failure, with its traceback
        raise failures[0]


def _report(cfg: ExperimentConfig, out: Path, data, console: Console, quiet: bool, start: float) -> dict:
    console.rule("success vs prefix fraction: base vs trained")
    curves = {}
    by_id = {p.id: p for p in data.hard}
    for name, path in [("base", data.model_path)] + [(m, run_dir(out, m, cfg.seeds[0]) / "model") for m in cfg.methods]:
        sampler = make_sampler(None, str(path), cfg.sampling)
        curves[name] = success_curve(calibrate(data.task, sampler, sampler.tokenizer,
                                               data.traces[:cfg.calibration_traces], by_id,
                                               out / "calibration" / name, n=cfg.calibration_n, seed=cfg.seed,
                                               quiet=quiet))

    run_dirs = {m: [run_dir(out, m, seed) for seed in cfg.seeds] for m in cfg.methods}
    summary = write_experiment_report(out, cfg, data, curves, run_dirs)
    write_manifest(out, stage="experiment", config=asdict(cfg), seed=cfg.seed, flops=summary["total_flops"],
                   wall_time_s=time.time() - start, extra={"headline": summary["headline"]})
    console.print(f"report: {out / 'report' / 'README.md'}")
    return summary


def _shared(data) -> dict:
    """What every run needs from the data stages (picklable, for worker processes)."""
    return dict(task=data.task, model_path=data.model_path, rows=data.rows, traces=data.traces,
                collect_flops=data.collect_flops)


def threads_per_worker(workers: int) -> int:
    """Each worker's share of the cores this process may use (its affinity mask: a container or
    `taskset` may allow fewer than os.cpu_count()), so that the workers together never ask for more."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cores // workers)


def limit_threads(threads: int) -> None:
    """This process's compute threads: torch's intra-op pool (OpenMP / MKL GEMMs), its inter-op pool
    (otherwise one thread per core) and the tokenizers' Rust pool (otherwise one per core as well)."""
    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(threads)
    except RuntimeError:  # set once per process, before any inter-op work: a second call is refused
        pass
    os.environ["TOKENIZERS_PARALLELISM"] = "false"


def _init_worker(threads: int, parent: int) -> None:
    limit_threads(threads)
    threading.Thread(target=_exit_with, args=(parent,), daemon=True).start()


def _exit_with(parent: int) -> None:
    """A worker outlives a killed experiment (SIGTERM reaches only the main process) and would
    go on writing its run folder under a restarted one: it exits once its parent is gone."""
    while os.getppid() == parent:
        time.sleep(2)
    os._exit(1)


def _run(method: str, seed: int, cfg: ExperimentConfig, out: Path, data: dict, evals: dict) -> None:
    train_cfg = replace(cfg.train, seed=seed, budget_flops=cfg.budget_flops, progress_bar=cfg.workers == 1)
    run_method(method, data["task"], data["model_path"], data["rows"], run_dir(out, method, seed), train_cfg,
               traces=data["traces"], eval_problems=evals,
               prior_flops=data["collect_flops"] if METHODS[method].charged_collection else None,
               sft_cfg=replace(cfg.sft, seed=seed),
               prefix_cfg=cfg.prefixes, adaptive_cfg=cfg.adaptive)


def run_dir(out: Path, method: str, seed: int) -> Path:
    return Path(out) / "runs" / method / f"seed-{seed}"
