"""The `sft-rl` baseline's first stage: supervised fine-tuning on the off-policy traces (TRL `SFTTrainer`).

The baseline imitates the correct traces that PrefixRL only conditions on, then runs plain RL
from the result (elsewhere). Each example is tokenized here, as the RL stage lays out a sample:
the token ids of the prompt the policy is sampled from (`render_prompt` with no prefix, so chat
models get their template; `encode_prompt`), then the trace's tokens and an <eos>. The loss covers
only the trace and its <eos> (`completion_mask`), so the model also learns to stop where the trace
stops.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from datasets import Dataset
from transformers import set_seed
from trl import SFTConfig, SFTTrainer

from prefixrl.flops import FlopsLedger
from prefixrl.models import encode_prompt, load_model, n_params
from prefixrl.prefixes import render_prompt
from prefixrl.runinfo import write_manifest
from prefixrl.tasks import Problem, Task, task_args


@dataclass
class SFTStageConfig:
    # a 0.6 M-parameter model reproduces 4-18 chain traces at temperature 0.7 (pass@1 1.0, from 0)
    # after 100 passes at 1e-3; 50 passes left it at 0.70 on 18 traces, 3e-3 was unstable
    epochs: int = 100  # passes over the traces
    lr: float = 1e-3
    batch_size: int = 16  # traces per optimizer step
    seed: int = 0

    def __post_init__(self):
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"SFTStageConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ValueError(f"SFTStageConfig.lr must be > 0, got {self.lr}")


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


def sft_config(cfg: SFTStageConfig, out_dir: Path) -> SFTConfig:
    return SFTConfig(
        output_dir=str(out_dir / "trainer"), num_train_epochs=cfg.epochs, per_device_train_batch_size=cfg.batch_size,
        learning_rate=cfg.lr, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0, seed=cfg.seed,
        data_seed=cfg.seed, bf16=False, use_cpu=not torch.cuda.is_available(), report_to="none", save_strategy="no",
        logging_steps=1, completion_only_loss=True,
        max_length=None,  # never truncate: a cut trace would lose its answer and its <eos>
        dataset_num_proc=None, dataloader_num_workers=0, disable_tqdm=False,
    )


def sft(task: Task, model_path: str, traces: list[dict], problems: dict[str, Problem], out_dir: str | Path,
        cfg: SFTStageConfig | None = None, prior_flops: FlopsLedger | None = None) -> Path:
    """Fine-tune `model_path` on `traces` and save the result in out_dir/model. `prior_flops` (e.g.
    collection) is charged to the stage's ledger first."""
    cfg = cfg or SFTStageConfig()
    out_dir = Path(out_dir)
    if (out_dir / "model").is_dir() and (out_dir / "manifest.json").exists():
        return out_dir / "model"  # finished earlier
    start = time.time()
    set_seed(cfg.seed)
    model, tokenizer = load_model(model_path, device="cpu" if not torch.cuda.is_available() else None)
    dataset = Dataset.from_list(sft_examples(tokenizer, traces, problems))
    trainer = SFTTrainer(model=model, args=sft_config(cfg, out_dir), train_dataset=dataset, processing_class=tokenizer)
    trainer.train()
    trainer.save_model(str(out_dir / "model"))
    tokenizer.save_pretrained(out_dir / "model")
    ledger = FlopsLedger(out_dir / "flops.json", fresh=True)
    if prior_flops is not None:
        ledger.merge(prior_flops)
    tokens = sum(map(len, trainer.train_dataset["input_ids"]))  # prompt + completion + <eos>, as trained on
    ledger.add("sft", n_params=n_params(model), train_tokens=tokens * cfg.epochs)
    losses = [log["loss"] for log in trainer.state.log_history if "loss" in log]
    write_manifest(out_dir, stage="sft", config={"task": task.name, "task_args": task_args(task), "model": model_path,
                   "traces": len(traces), **asdict(cfg)}, seed=cfg.seed, flops=ledger.total,
                   wall_time_s=time.time() - start,
                   extra={"final_loss": losses[-1] if losses else None, "tokens_per_epoch": tokens})
    return out_dir / "model"
