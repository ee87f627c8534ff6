"""Stage 4: on-policy RL on prefixed (and unprefixed) problems, on TRL's `GRPOTrainer`.

    prefixrl train MODEL --task sort --data runs/prefixes/train.jsonl --out runs/train

The method is objective.py: the reward (prefix + continuation), the GRPOConfig settings that make
TRL's loss the paper's REINFORCE with a group-mean baseline, and that loss written out. Here: the
run's settings (TrainConfig), the rest of the GRPOConfig (batching, saving, logging, vLLM), and
`train`, which builds the trainer (trainer.py; offpolicy.py for the off-policy baselines), adds the
callbacks (callbacks.py) and resumes a killed run from its last checkpoint. Methods: methods.py.

At scale (see the README's "On GPUs"): `accelerate launch -m prefixrl.cli train ...` runs one
process per GPU (DDP, DeepSpeed ZeRO-3 or FSDP: configs/accelerate/), and `use_vllm` samples the
rollouts with vLLM (TRL's server or colocate mode). A step's batch is global: problems_per_step x
num_generations samples shared by the processes, one optimizer step per batch. FLOPs are counted
from every process's tokens (gathered), every process keeps the same ledger (so all stop at the
same budget), and only the main process writes files.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
import warnings
import weakref
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from accelerate.utils import get_int_from_env, parse_flag_from_env
from datasets import Dataset
from transformers import AutoConfig, AutoTokenizer, PrinterCallback, ProgressCallback, set_seed
from trl import GRPOConfig

from prefixrl.config import TrainConfig, report_to
from prefixrl.callbacks import BarOnly, FlopsBudget, MetricsLog, UnprefixedEval
from prefixrl.files import AppendLog, InputError, atomic_write_text
from prefixrl.flops import FlopsLedger
from prefixrl.models import encode_prompt, load_model
from prefixrl.objective import objective_args, reward_function
from prefixrl.offpolicy import OffPolicyTraces, OffPolicyTrainer
from prefixrl.runinfo import differences, write_manifest
from prefixrl.tasks import Problem, Task, problems_by_id, task_args
from prefixrl.trainer import PrefixRLTrainer

if TYPE_CHECKING:
    from prefixrl.adaptive import AdaptivePrefixes

# TRL calls transformers' renamed gradient_checkpointing API: its FutureWarnings say nothing to a
# user (filtered here, not in the CLI, so experiment workers and scripts are quiet too)
warnings.filterwarnings("ignore", category=FutureWarning, message=".*gradient_checkpointing.*")
logger = logging.getLogger(__name__)


def world_size() -> int:
    """Processes in this run, from the launcher's environment (torchrun / accelerate launch, deepspeed, MPI)."""
    return get_int_from_env(["WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE"], 1)


def batch_split(cfg: TrainConfig, processes: int) -> tuple[int, int]:
    """(per-process micro batch, gradient accumulation steps) for a global batch of problems_per_step x
    num_generations samples: TRL's per_device_train_batch_size x processes x accumulation steps. A
    group may straddle two processes: TRL computes the group-mean baseline after gathering rewards."""
    batch = cfg.problems_per_step * cfg.num_generations
    if batch % processes:
        raise ValueError(f"TrainConfig.problems_per_step x num_generations = {batch} samples per step must be "
                         f"divisible by the number of processes ({processes})")
    share = batch // processes
    micro = cfg.micro_batch_size or share
    if share % micro:
        raise ValueError(f"TrainConfig.micro_batch_size ({micro}) must divide each process's share of the batch "
                         f"({batch} / {processes} processes = {share})")
    return micro, share // micro


def grpo_config(cfg: TrainConfig, out_dir: Path, processes: int | None = None) -> GRPOConfig:
    """TRL's settings for a run: the objective's (objective.objective_args), then batching, saving,
    logging and vLLM."""
    micro, accumulation = batch_split(cfg, processes or world_size())
    return GRPOConfig(
        **objective_args(cfg),  # the method: objective.py
        output_dir=str(out_dir / "checkpoints"), max_steps=cfg.steps, per_device_train_batch_size=micro,
        gradient_accumulation_steps=accumulation, seed=cfg.seed, data_seed=cfg.seed,
        bf16=use_bf16(cfg), gradient_checkpointing=cfg.gradient_checkpointing, use_cpu=not torch.cuda.is_available(),
        report_to=report_to(cfg.report_to), project="prefixrl", run_name=str(out_dir), logging_steps=1,
        save_strategy="steps", save_steps=cfg.save_every,
        save_total_limit=2, save_only_model=False, disable_tqdm=not cfg.progress_bar, remove_unused_columns=False,
        use_vllm=cfg.use_vllm, vllm_mode=cfg.vllm_mode, vllm_server_base_url=cfg.vllm_server_base_url,
        vllm_server_host=cfg.vllm_server_host, vllm_server_port=cfg.vllm_server_port,
        vllm_gpu_memory_utilization=cfg.vllm_gpu_memory_utilization,
        vllm_tensor_parallel_size=cfg.vllm_tensor_parallel_size,
    )


def use_bf16(cfg: TrainConfig) -> bool:
    """bf16 mixed precision: asked for, or set by the accelerate config the run was launched with
    (mixed_precision: bf16, as in configs/accelerate/), which the Trainer's bf16 must agree with:
    DeepSpeed refuses a run whose config enables bf16 while the Trainer's bf16 is False."""
    return cfg.bf16 or os.environ.get("ACCELERATE_MIXED_PRECISION") == "bf16"


def policy_dtype(bf16: bool) -> torch.dtype:
    """The dtype the policy's weights load in. bf16 (half the memory of an 8 B model's fp32 weights)
    only where fp32 master weights are kept anyway: DeepSpeed's optimizer holds fp32 copies, and
    accelerate upcasts FSDP's parameters to fp32 under mixed precision. A single process or DDP
    steps AdamW on the loaded weights themselves: in bf16 (8 significant bits) an update of 1e-6 to a
    weight of 0.01 rounds away, so they stay fp32 and bf16 autocast does the compute (TRL's default too)."""
    sharded = parse_flag_from_env("ACCELERATE_USE_DEEPSPEED") or parse_flag_from_env("ACCELERATE_USE_FSDP")
    return torch.bfloat16 if bf16 and sharded else torch.float32


def _check_same_config(out_dir: Path, cfg: TrainConfig) -> None:
    """A run folder resumes (or is returned, if finished) only under the config it was started
    with: otherwise a changed budget or learning rate would be reported for runs that never had it."""
    path = out_dir / "config.json"
    if not path.exists():
        return
    diff = differences(json.loads(path.read_text()), json.loads(json.dumps(asdict(cfg))),
                       ignore=("progress_bar", "report_to"))
    if diff:
        raise InputError(f"{out_dir} holds a run started with other settings ({diff}): pass another output "
                         f"folder, or delete this one to start it over")


def _check_context(rows: list[dict], model_path: str, max_completion_length: int) -> None:
    """Refuse rows whose prompt leaves no room for max_completion_length tokens in the policy's
    context window: past it a RoPE model does not crash, it reads positions it never learned. (A
    `hint` prompt holds the prefix *and* asks for a whole solution, so it can pass where the
    prefixed prompt fits.) Before anything is written: the fixed rerun must find a clean folder."""
    window = getattr(AutoConfig.from_pretrained(model_path), "max_position_embeddings", None)
    if window is None:
        return
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    for index, row in enumerate(rows):
        length = len(encode_prompt(tokenizer, row["prompt"]))
        if length + max_completion_length > window:
            raise InputError(
                f"training row {index} (problem {row['problem_id']!r}): its prompt is {length} tokens, and with "
                f"max_completion_length {max_completion_length} it passes the policy's context window of {window}: "
                "cut shorter prefixes (`prefixrl prefixes --high`) or generate fewer tokens (max_completion_length)")


def train(task: Task, model_path: str, rows: list[dict], out_dir: str | Path, cfg: TrainConfig | None = None,
          eval_problems: dict[str, list[Problem]] | None = None, prior_flops: FlopsLedger | None = None,
          off_policy: OffPolicyTraces | None = None, adaptive: AdaptivePrefixes | None = None) -> Path:
    """Train `model_path` on `rows` (prompt, problem_id, prefix, prefixed, ...) and save the result in
    out_dir/model. Resumes from the last checkpoint in out_dir. `prior_flops` (e.g. collection) is
    charged to the run's ledger so curves start after it. `off_policy`: traces that join the
    groups (the luffy and offpolicy-is baselines, offpolicy.py). `adaptive`: an AdaptivePrefixes
    that re-chooses the rows' prefixes during training (prefixrl-adaptive; `rows` is then ignored)."""
    cfg = cfg or TrainConfig()
    out_dir = Path(out_dir)
    _check_same_config(out_dir, cfg)
    if (out_dir / "model").is_dir() and (out_dir / "manifest.json").exists():
        return out_dir / "model"  # finished earlier
    if cfg.use_vllm:  # fail before loading anything, with the message that says how to get it
        from prefixrl.generate_vllm import import_vllm

        import_vllm()
    _check_context(rows, model_path, cfg.max_completion_length)
    start = time.time()
    set_seed(cfg.seed)
    args = grpo_config(cfg, out_dir)  # before the model: it starts a multi-process run's process group
    main = args.process_index == 0  # only the main process writes (several nodes: a shared run folder)
    if args.generation_batch_size != cfg.problems_per_step * cfg.num_generations:  # launcher env vs process group
        raise RuntimeError(f"{args.world_size} processes started, but the launcher's environment said "
                           f"{world_size()}: a step's batch would not be problems_per_step x num_generations")
    if adaptive and args.world_size > 1:
        raise ValueError("prefixrl-adaptive runs in one process: its calibration and trace pool are not "
                         "shared between processes; launch it without accelerate (or with --num_processes 1)")
    if main:
        atomic_write_text(out_dir / "config.json", json.dumps(asdict(cfg), indent=2))
    # this process's device; bf16 weights only under DeepSpeed / FSDP (policy_dtype)
    model, tokenizer = load_model(model_path, device=str(args.device), dtype=policy_dtype(args.bf16))
    checkpoint = _last_checkpoint(out_dir)
    ledger = _resume_ledger(out_dir, checkpoint, prior_flops, write=main)
    kept_step = int(checkpoint.name.split("-")[1]) if checkpoint else -1
    if main:  # forget what the kill lost since the checkpoint
        for log_name in ("metrics.jsonl", "eval.jsonl"):
            AppendLog(out_dir / log_name).keep(lambda row: row["step"] <= kept_step)
        _drop_evals_after(out_dir / "evals", kept_step)
    trainer, evaluator = _trainer(task, model, tokenizer, rows, args, cfg, out_dir, ledger, kept_step, eval_problems,
                                  off_policy, adaptive)
    trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    if evaluator:
        evaluator.evaluate(trainer.state.global_step)  # the final policy (a no-op if just evaluated)
    trainer.save_model(str(out_dir / "model"))  # every process: ZeRO-3 / FSDP gather the weights to save
    if main:
        tokenizer.save_pretrained(out_dir / "model")
        write_manifest(out_dir, stage="train", config={"task": task.name, "task_args": task_args(task),
                       "model": model_path, **asdict(cfg)},
                       seed=cfg.seed, flops=ledger.total, wall_time_s=time.time() - start, task=task,
                       extra={"processes": args.world_size, "bf16": args.bf16})
    trainer.accelerator.wait_for_everyone()  # the run is done when its files are
    return out_dir / "model"


def _trainer(task, model, tokenizer, rows, args, cfg, out_dir, ledger, kept_step, eval_problems, off_policy,
             adaptive) -> tuple[PrefixRLTrainer, UnprefixedEval | None]:
    """The run's trainer (OffPolicyTrainer for the off-policy baselines) with its callbacks, and the
    evaluator, which has scored step 0 already."""
    problems = problems_by_id(task)
    problems.update({p.id: p for ps in (eval_problems or {}).values() for p in ps})
    nll_rows = [r for r in rows if r["prefix"]][:32]  # a fixed sample: the prefix-NLL curve follows one set
    if adaptive:  # the rows chosen at the last re-calibration the checkpoint saw
        current = adaptive.start(kept_step, ledger)
        nll_rows = [r for r in adaptive.rows(model, tokenizer, 0, ledger) if r["prefix"]][:32]  # step 0's, from disk
        rows = adaptive.current = adaptive.rows(model, tokenizer, current, ledger)
    if len(rows) < cfg.problems_per_step:  # a batch needs problems_per_step rows: repeat a small set
        rows = rows * -(-cfg.problems_per_step // len(rows))
    kind, extra = (PrefixRLTrainer, {}) if off_policy is None else (OffPolicyTrainer, {"off_policy": off_policy})
    trainer = kind(model=model, reward_funcs=reward_function(task, problems), args=args,
                   train_dataset=Dataset.from_list(rows), processing_class=tokenizer, flops_ledger=ledger,
                   sampler=cfg.sampler, split_grad_norms=cfg.split_grad_norms,
                   skip_zero_advantage=cfg.skip_zero_advantage, live_rows=adaptive, **extra)
    if args.process_index == 0:
        trainer.add_callback(MetricsLog(AppendLog(out_dir / "metrics.jsonl")))
    if adaptive:
        trainer.add_callback(adaptive)
    if not cfg.progress_bar:
        trainer.remove_callback(PrinterCallback)  # without the bar, Trainer prints every step's logs instead
    else:  # the bar alone: every step's logs are in metrics.jsonl, not printed under the bar
        trainer.remove_callback(ProgressCallback)
        trainer.add_callback(BarOnly)
    evaluator = None
    if eval_problems and cfg.eval_every:  # eval_every 0: no evaluation at all, not even at the start and end
        evaluator = UnprefixedEval(weakref.ref(trainer), task, eval_problems, cfg, out_dir, ledger, nll_rows,
                                   reliance_rows=[r for r in rows if r["prefixed"]])
        trainer.add_callback(evaluator)
        evaluator.evaluate(0)
    if cfg.budget_flops:
        trainer.add_callback(FlopsBudget(ledger, cfg.budget_flops))
    return trainer, evaluator


def _last_checkpoint(out_dir: Path) -> Path | None:
    """The newest complete checkpoint. A kill mid-save leaves a checkpoint-N without the files written
    last (the Trainer's trainer_state.json, then the ledger's flops.json): the one before it is
    resumed instead (save_total_limit=2 keeps it until the new one is written)."""
    complete = [p for p in (out_dir / "checkpoints").glob("checkpoint-*")
                if (p / "trainer_state.json").is_file() and (p / "flops.json").is_file()]
    return max(complete, key=lambda p: int(p.name.split("-")[1]), default=None)


def _drop_evals_after(evals: Path, step: int) -> None:
    """Evaluation folders of steps a kill lost since the checkpoint: they were scored with a policy the
    resumed run has not got yet, and score_problems would resume from them instead of sampling anew."""
    for folder in evals.glob("step-*"):
        if int(folder.name.split("-")[1]) > step:
            shutil.rmtree(folder)


def _resume_ledger(out_dir: Path, checkpoint: Path | None, prior: FlopsLedger | None, write: bool = True
                   ) -> FlopsLedger:
    """The run's ledger: the checkpoint's copy when resuming (FLOPs spent after that checkpoint
    were lost with the kill and are redone), else the prior stages' FLOPs. write=False: kept in
    memory only (the other processes of a multi-process run)."""
    ledger = FlopsLedger(out_dir / "flops.json" if write else None, fresh=True)
    source = FlopsLedger(checkpoint / "flops.json") if checkpoint else prior
    if source is not None:
        ledger.merge(source)
    return ledger