"""Stage 0: train a task's tiny base model on its corpus of worked attempts (TRL `SFTTrainer`).

    prefixrl pretrain sort --out runs/sort-base

The result is a plain `save_pretrained` folder: `AutoModelForCausalLM.from_pretrained` and
`AutoTokenizer.from_pretrained` load it, and every later stage treats it like any HF model.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path

import torch
from datasets import Dataset
from transformers import set_seed
from trl import SFTConfig, SFTTrainer

from prefixrl.config import PretrainConfig
from prefixrl.flops import FlopsLedger
from prefixrl.models import (bpe_tokenizer, char_tokenizer, load_model, n_params, resolve_model,
                             tiny_model)
from prefixrl.runinfo import write_manifest
from prefixrl.tasks import Task, task_args


def pretrain(task: Task, out_dir: str | Path, cfg: PretrainConfig | None = None) -> Path:
    """Train a base model for `task` from random weights and save it (with a manifest) in out_dir."""
    cfg = cfg or PretrainConfig()
    out_dir = Path(out_dir)
    set_seed(cfg.seed)
    pairs = task.corpus(cfg.steps * cfg.batch_size, seed=cfg.seed)
    texts = [p + c for p, c in pairs]
    if cfg.init:
        model, tokenizer = load_model(resolve_model(cfg.init), device="cpu")
        model.train()
    else:
        tokenizer = char_tokenizer() if cfg.tokenizer == "char" else bpe_tokenizer(texts, cfg.bpe_vocab_size)
        model = tiny_model(tokenizer, cfg.model, seed=cfg.seed)
    dataset = Dataset.from_dict({"prompt": [p for p, _ in pairs], "completion": [c for _, c in pairs]})
    args = SFTConfig(
        output_dir=str(out_dir / "trainer"), max_steps=cfg.steps, per_device_train_batch_size=cfg.batch_size,
        learning_rate=cfg.lr, lr_scheduler_type="cosine", warmup_steps=int(0.03 * cfg.steps),
        weight_decay=0.0, seed=cfg.seed, bf16=False, use_cpu=not torch.cuda.is_available(),
        report_to="none", save_strategy="no", logging_steps=max(1, cfg.steps // 20),
        completion_only_loss=True, max_length=max(map(len, texts)) + 2, dataset_num_proc=None,  # chars >= tokens
        dataloader_num_workers=0, disable_tqdm=False,
    )
    start = time.time()
    trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer)
    trainer.train()
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    n_tokens = sum(map(len, tokenizer(texts)["input_ids"])) + len(texts)  # +1 for <eos>
    ledger = FlopsLedger(out_dir / "flops.json")
    ledger.add("pretrain", train_tokens=n_tokens, n_params=n_params(model))
    losses = [log["loss"] for log in trainer.state.log_history if "loss" in log]
    write_manifest(out_dir, stage="pretrain", config={"task": task.name, "task_args": task_args(task), **asdict(cfg)},
                   seed=cfg.seed, flops=ledger.total, wall_time_s=time.time() - start,
                   extra={"final_loss": losses[-1] if losses else None, "n_params": n_params(model)})
    return out_dir

