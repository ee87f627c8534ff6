"""Run a method (methods.py's record) on the one engine, `train.train`: its rows, its stage before
RL (SFT; the off-policy traces' behaviour log-probs; prefixrl-adaptive's calibration), its trainer.
"""

from __future__ import annotations

import os
from dataclasses import asdict, replace
from pathlib import Path

from transformers import AutoTokenizer

from prefixrl.adaptive import AdaptiveConfig, AdaptivePrefixes
from prefixrl.flops import FlopsLedger
from prefixrl.methods import method as method_record, select_rows
from prefixrl.offpolicy import off_policy_traces
from prefixrl.prefixes import PrefixConfig
from prefixrl.runinfo import model_fingerprint, rows_fingerprint, run_folder
from prefixrl.tasks import Problem, Task, problems_by_id, task_args
from prefixrl.train import TrainConfig, train, world_size


def run_method(method: str, task: Task, model_path: str, rows: list[dict], out_dir: str | Path,
               cfg: TrainConfig | None = None, traces: list[dict] | None = None,
               eval_problems: dict[str, list[Problem]] | None = None, prior_flops: FlopsLedger | None = None,
               sft_cfg=None, prefix_cfg: PrefixConfig | None = None, adaptive_cfg: AdaptiveConfig | None = None
               ) -> Path:
    """Train `method` from `model_path` into out_dir (resumable); returns the trained model's folder.
    The folder is the method's: a rerun with another method, model, rows or traces is refused."""
    record = method_record(method)
    if record.one_process and world_size() > 1:  # before anything runs
        raise ValueError(f"method {method!r} runs in one process ({record.one_process}); launch it without "
                         "accelerate (or with --num_processes 1)")
    identity = {"task": task.name, "task_args": task_args(task), "method": method,
                "model": model_fingerprint(model_path), "_model_path": model_path, "rows": rows_fingerprint(rows),
                "traces": rows_fingerprint(traces) if record.uses_traces else None}
    if record.stage == "sft":  # its sft/ folder is reused on resume: only under the same SFT settings
        from prefixrl.sft import SFTStageConfig

        identity["sft"] = asdict(sft_cfg or SFTStageConfig())
    main = int(os.environ.get("RANK", "0")) == 0  # one lock per run, taken by its main process
    with run_folder(out_dir, "train", identity, lock=main):
        return _run_method(record, task, model_path, rows, Path(out_dir), cfg, traces, eval_problems, prior_flops,
                           sft_cfg, prefix_cfg, adaptive_cfg)


def _run_method(record, task, model_path, rows, out_dir, cfg, traces, eval_problems, prior_flops, sft_cfg,
                prefix_cfg, adaptive_cfg) -> Path:
    method = record.name
    cfg = cfg or TrainConfig()
    problems = problems_by_id(task)
    problems.update({p.id: p for ps in (eval_problems or {}).values() for p in ps})
    if record.uses_traces and not traces:
        raise ValueError(f"method {method!r} trains on the traces themselves: pass them (--traces traces.jsonl)")
    tokenizer = AutoTokenizer.from_pretrained(model_path)  # the hint rows need only the tokenizer
    selected = select_rows(rows, method, tokenizer, problems)
    wanted = {r["problem_id"] for r in selected}
    if record.uses_traces:
        traces = [t for t in traces if t["problem_id"] in wanted]
        if not traces:
            raise ValueError(f"method {method!r}: none of the traces given is for a training problem: pass the "
                             f"traces the training rows were cut from")
    if record.num_generations:
        cfg = replace(cfg, num_generations=record.num_generations)
    if record.stage == "sft":
        from prefixrl.generate import SamplingParams
        from prefixrl.sft import SFTStageConfig, sft

        sft_cfg = sft_cfg or SFTStageConfig()
        validation = validation_problems(task, sft_cfg.validation_problems) if sft_cfg.sweep_lr else None
        eval_params = SamplingParams(temperature=cfg.eval_temperature, max_new_tokens=cfg.max_completion_length,
                                     batch_size=cfg.eval_batch_size, backend=cfg.sampler)  # as the RL stage evaluates
        model_path = str(sft(task, model_path, traces, problems, out_dir / "sft", sft_cfg, prior_flops,
                             validation, eval_params))
        prior_flops = FlopsLedger(out_dir / "sft" / "flops.json")
    off_policy = None
    if record.stage == "behaviour":
        ledger = FlopsLedger()
        if prior_flops:
            ledger.merge(prior_flops)
        prior_flops = ledger
        off_policy = off_policy_traces(model_path, traces, problems,
                                       record.off_policy_weight, cfg, prior_flops)
    adaptive = None
    if record.stage == "adaptive":
        adaptive = AdaptivePrefixes(task, problems, traces,
                                    prefix_cfg or PrefixConfig(), adaptive_cfg or AdaptiveConfig(), out_dir,
                                    cfg.max_completion_length, cfg.eval_batch_size)
    return train(task, model_path, selected, out_dir, cfg, eval_problems=eval_problems, prior_flops=prior_flops,
                 off_policy=off_policy, adaptive=adaptive)


def validation_problems(task: Task, n: int) -> list[Problem]:
    """The first n problems of the task's "validation" split: hard problems neither trained on nor
    held out, on which the sft-rl baseline's SFT is tuned."""
    try:
        return task.problems("validation")[:n]
    except ValueError as err:
        raise ValueError(f"task {task.name!r} has no validation split ({err}), which sft-rl's SFT sweep tunes on: "
                         "set sft.sweep_lr to [] to train a fixed lr and epochs instead") from err
