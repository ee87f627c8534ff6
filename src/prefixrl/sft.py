"""The `sft-rl` baseline's first stage: supervised fine-tuning on the off-policy traces (TRL `SFTTrainer`).

The baseline imitates the correct traces that PrefixRL only conditions on, then runs plain RL
from the result (elsewhere). Each example is tokenized here, as the RL stage lays out a sample:
the token ids of the prompt the policy is sampled from (`render_prompt` with no prefix, so chat
models get their template; `encode_prompt`), then the trace's tokens and an <eos>. The loss covers
only the trace and its <eos> (`completion_mask`), so the model also learns to stop where the trace
stops.

A fair baseline is tuned the way a practitioner would tune it: with `sweep_lr` set, one run per
learning rate is scored at each of `sweep_epochs` by unprefixed pass@1 on *validation* problems
(hard problems neither trained on nor held out), and the best (learning rate, epochs) is kept.
Every run and every validation sample is charged to the baseline's FLOPs, and the sweep is
recorded (`sweep.jsonl`, one line per candidate, resumable).
"""

from __future__ import annotations

import shutil
import time
from dataclasses import asdict
from pathlib import Path

import torch
from datasets import Dataset
from transformers import AutoTokenizer, TrainerCallback, set_seed
from trl import SFTConfig, SFTTrainer

from prefixrl.config import SFTStageConfig
from prefixrl.evaluate import score_problems
from prefixrl.files import AppendLog
from prefixrl.flops import FlopsLedger
from prefixrl.generate import SamplingParams, sampler_for
from prefixrl.models import count_params_from_config, encode_prompt, load_model
from prefixrl.prefixes import render_prompt
from prefixrl.runinfo import write_manifest
from prefixrl.tasks import Problem, Task, task_args


def sft_examples(tokenizer, traces: list[dict], problems: dict[str, Problem]) -> list[dict]:
    """One tokenized example per trace: the unprefixed prompt, then the whole trace and <eos>,
    which alone are trained (SFTTrainer tokenizing text itself would add a second BOS to a chat
    template that writes one)."""
    if not traces:
        raise ValueError("no traces to fine-tune on: collect or import some first (prefixrl collect / import)")
    examples = []
    for index, trace in enumerate(traces):
        pid = trace["problem_id"]
        if pid not in problems:
            raise ValueError(f"trace {index} is for problem {pid!r}, which is not among the problems given")
        prompt_ids = encode_prompt(tokenizer, render_prompt(tokenizer, problems[pid].prompt))
        trace_ids = tokenizer(trace["completion"], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        examples.append({"input_ids": prompt_ids + trace_ids,
                         "completion_mask": [0] * len(prompt_ids) + [1] * len(trace_ids)})
    return examples


def sft_config(cfg: SFTStageConfig, out_dir: Path, lr: float | None = None, epochs: int | None = None) -> SFTConfig:
    return SFTConfig(
        output_dir=str(out_dir / "trainer"), num_train_epochs=epochs or cfg.epochs,
        per_device_train_batch_size=cfg.batch_size, learning_rate=lr or cfg.lr, lr_scheduler_type="constant",
        warmup_steps=0, weight_decay=0.0, seed=cfg.seed,
        data_seed=cfg.seed, bf16=False, use_cpu=not torch.cuda.is_available(), report_to="none", save_strategy="no",
        logging_steps=1, completion_only_loss=True,
        max_length=None,  # never truncate: a cut trace would lose its answer and its <eos>
        dataset_num_proc=None, dataloader_num_workers=0, disable_tqdm=False,
    )


def sft(task: Task, model_path: str, traces: list[dict], problems: dict[str, Problem], out_dir: str | Path,
        cfg: SFTStageConfig | None = None, prior_flops: FlopsLedger | None = None,
        validation: list[Problem] | None = None, eval_params: SamplingParams | None = None) -> Path:
    """Fine-tune `model_path` on `traces` and save the result in out_dir/model. `prior_flops` (e.g.
    collection) is charged to the stage's ledger first. With `cfg.sweep_lr`, the (lr, epochs) with the
    best unprefixed pass@1 on `validation` is chosen (sampled with `eval_params`)."""
    cfg = cfg or SFTStageConfig()
    out_dir = Path(out_dir)
    if (out_dir / "model").is_dir() and (out_dir / "manifest.json").exists():
        return out_dir / "model"  # finished earlier
    if cfg.sweep_lr and not validation:
        raise ValueError("SFT sweep: no validation problems to choose the learning rate and epochs on; give the "
                         "task a 'validation' split, or set sft.sweep_lr to [] for a fixed lr and epochs")
    start = time.time()
    dataset = Dataset.from_list(sft_examples(AutoTokenizer.from_pretrained(model_path), traces, problems))
    tokens = sum(map(len, dataset["input_ids"]))  # prompt + completion + <eos>, as trained on
    ledger = FlopsLedger(out_dir / "flops.json", fresh=True)
    if prior_flops is not None:
        ledger.merge(prior_flops)
    n = count_params_from_config(model_path)
    extra = {"tokens_per_epoch": tokens}
    if cfg.sweep_lr:
        sweep = _Sweep(task, validation, cfg, eval_params or SamplingParams(temperature=0.7), out_dir)
        for lr in cfg.sweep_lr:
            if not sweep.done(lr):
                _fine_tune(model_path, dataset, cfg, lr, max(cfg.sweep_epochs), out_dir / f"lr-{lr:g}", sweep)
        ledger.add("sft", n_params=n, train_tokens=tokens * max(cfg.sweep_epochs) * len(cfg.sweep_lr))
        ledger.add("sft_validation", n_params=n, inference_tokens=sweep.validation_tokens())
        extra.update(chosen=sweep.choose(), sweep=sweep.log.rows)
        (out_dir / "best").rename(out_dir / "model")
    else:
        trainer = _fine_tune(model_path, dataset, cfg, cfg.lr, cfg.epochs, out_dir)
        _save(trainer, out_dir / "model")
        ledger.add("sft", n_params=n, train_tokens=tokens * cfg.epochs)
        losses = [log["loss"] for log in trainer.state.log_history if "loss" in log]
        extra["final_loss"] = losses[-1] if losses else None
    write_manifest(out_dir, stage="sft", config={"task": task.name, "task_args": task_args(task), "model": model_path,
                   "traces": len(traces), **asdict(cfg)}, seed=cfg.seed, flops=ledger.total,
                   wall_time_s=time.time() - start, extra=extra)
    return out_dir / "model"


def _fine_tune(model_path: str, dataset: Dataset, cfg: SFTStageConfig, lr: float, epochs: int, out_dir: Path,
               sweep: "_Sweep | None" = None) -> SFTTrainer:
    set_seed(cfg.seed)
    model, tokenizer = load_model(model_path, device="cpu" if not torch.cuda.is_available() else None)
    trainer = SFTTrainer(model=model, args=sft_config(cfg, out_dir, lr, epochs), train_dataset=dataset,
                         processing_class=tokenizer)
    if sweep is not None:
        trainer.add_callback(_ScoreAt(sweep, lr, trainer))
    trainer.train()
    return trainer


def _save(trainer, path: Path) -> None:
    trainer.save_model(str(path))
    trainer.processing_class.save_pretrained(path)


class _Sweep:
    """One SFT run per learning rate, scored on the validation problems after each of `sweep_epochs`
    passes; the best candidate so far is kept in out_dir/best (saved before its line is logged, so
    a kill between the two only repeats work)."""

    def __init__(self, task: Task, validation: list[Problem], cfg: SFTStageConfig, params: SamplingParams,
                 out_dir: Path):
        self.task, self.validation, self.cfg, self.params, self.out_dir = task, validation, cfg, params, out_dir
        self.log = AppendLog(out_dir / "sweep.jsonl")

    def done(self, lr: float) -> bool:
        return all(self._row(lr, e) for e in self.cfg.sweep_epochs)  # scored before a kill

    def score(self, lr: float, epochs: int, trainer) -> None:
        if self._row(lr, epochs):
            return
        model = trainer.model
        model.eval()
        scores = score_problems(self.task, sampler_for(model, trainer.processing_class, self.params), self.validation,
                                self.cfg.validation_n, self.out_dir / "validation" / f"lr-{lr:g}-epochs-{epochs}",
                                seed=self.cfg.seed, stage="sft validation", quiet=True)
        model.train()
        losses = [log["loss"] for log in trainer.state.log_history if "loss" in log]
        per_epoch = max(1, len(losses) // epochs)
        row = {"lr": lr, "epochs": epochs, "validation_pass@1": sum(r["correct"] for r in scores) /
               sum(r["n"] for r in scores), "train_loss": sum(losses[-per_epoch:]) / per_epoch,
               "validation_tokens": sum(r["tokens"] for r in scores)}
        if (best := self.best()) is None or _rank(row) > _rank(best):  # saved before logged: a kill in between repeats this candidate
            shutil.rmtree(self.out_dir / "best.tmp", ignore_errors=True)
            _save(trainer, self.out_dir / "best.tmp")
            shutil.rmtree(self.out_dir / "best", ignore_errors=True)
            (self.out_dir / "best.tmp").rename(self.out_dir / "best")
        self.log.append(row)

    def best(self) -> dict | None:
        return max(self.log.rows, key=_rank, default=None)

    def choose(self) -> dict:
        best = self.best()
        return {"lr": best["lr"], "epochs": best["epochs"], "validation_pass@1": best["validation_pass@1"]}

    def validation_tokens(self) -> int:
        return sum(row["validation_tokens"] for row in self.log.rows)

    def _row(self, lr: float, epochs: int) -> dict | None:
        return next((r for r in self.log.rows if r["lr"] == lr and r["epochs"] == epochs), None)


def _rank(row: dict) -> tuple[float, float]:
    """Higher validation pass@1 first; at a tie, the lower training loss (fits the traces best)."""
    return row["validation_pass@1"], -row["train_loss"]


class _ScoreAt(TrainerCallback):
    """Scores the sweep's candidate at the end of each of `sweep_epochs` passes."""

    def __init__(self, sweep: _Sweep, lr: float, trainer):
        self.sweep, self.lr, self.trainer = sweep, lr, trainer

    def on_epoch_end(self, args, state, control, **kwargs):
        epochs = round(state.epoch)
        if epochs in self.sweep.cfg.sweep_epochs:
            self.sweep.score(self.lr, epochs, self.trainer)
