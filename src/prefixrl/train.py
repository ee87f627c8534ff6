"""Stage 4: on-policy RL on prefixed (and unprefixed) problems, on TRL's `GRPOTrainer`.

    prefixrl train MODEL --task sort --data runs/prefixes/train.jsonl --out runs/train

Each training row's prompt is the problem followed by a prefix of a correct trace (empty for an
unprefixed row). GRPOTrainer never trains prompt tokens, so the prefix is context only: the loss
covers the policy's own continuation, and nothing else. The reward scores prefix + continuation
(the answer may sit in either). The default objective is the paper's: REINFORCE with a group-mean
baseline (no std scaling, no KL, one update per batch so the ratio is 1), 8 samples per problem.

The subclass adds two things to GRPOTrainer, in two small hooks: metrics split by prefixed /
unprefixed groups, and the FLOPs ledger (rollouts 2·N·D, updates 6·N·D, prompt and prefix tokens
counted). A callback evaluates *unprefixed* pass@1 every `eval_every` steps.
"""

from __future__ import annotations

import json
import time
import weakref
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from accelerate.utils import gather_object
from datasets import Dataset
from transformers import TrainerCallback, set_seed
from trl import GRPOConfig, GRPOTrainer

from prefixrl.evaluate import score_problems
from prefixrl.files import AppendLog, atomic_write_text
from prefixrl.flops import FlopsLedger, inference_flops, train_flops
from prefixrl.generate import HFSampler, SamplingParams
from prefixrl.models import load_model, n_params
from prefixrl.runinfo import write_manifest
from prefixrl.tasks import Problem, Task, problems_by_id


@dataclass
class TrainConfig:
    steps: int = 100  # optimizer steps (one generation batch each)
    problems_per_step: int = 16  # prompts per batch (paper: 128 samples = 16 x 8)
    num_generations: int = 8  # samples per problem: the group of the group-mean baseline
    lr: float = 1e-4  # paper: 1e-6 for 8 B models; tiny models need about 1e-4
    loss_type: str = "dr_grpo"  # dr_grpo: sum over tokens / constant, i.e. plain REINFORCE
    scale_rewards: str = "none"  # no std scaling: advantage = reward - group mean
    beta: float = 0.0  # no KL penalty
    temperature: float = 1.0
    max_completion_length: int = 128
    eval_every: int = 20  # steps between unprefixed evaluations (0: never)
    eval_n: int = 16  # samples per problem at each evaluation
    eval_temperature: float = 0.7  # the paper evaluates at 0.7
    save_every: int = 50  # steps between checkpoints (a killed run resumes from the last)
    report_to: str = "none"  # any of TRL's: tensorboard, trackio, wandb
    seed: int = 0

    def __post_init__(self):
        for name in ("steps", "problems_per_step", "num_generations", "max_completion_length", "eval_n"):
            if getattr(self, name) < 1:
                raise ValueError(f"TrainConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.num_generations < 2:
            raise ValueError("TrainConfig.num_generations must be >= 2: the baseline is the group mean")
        if self.lr <= 0:
            raise ValueError(f"TrainConfig.lr must be > 0, got {self.lr}")


METHODS = {"prefixrl": "the 3:1 mix of prefixed and unprefixed problems", "prefixrl-only": "prefixed problems only",
           "rl": "unprefixed problems only (plain on-policy RL)"}


def select_rows(rows: list[dict], method: str) -> list[dict]:
    """The training rows a method uses (all methods share one engine and one data file)."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}: choose one of {sorted(METHODS)}")
    keep = {"prefixrl": lambda r: True, "prefixrl-only": lambda r: r["prefixed"], "rl": lambda r: not r["prefixed"]}
    selected = [r for r in rows if keep[method](r)]
    if not selected:
        raise ValueError(f"method {method!r} found no rows to train on ({METHODS[method]})")
    return selected


def reward_function(task: Task, problems: dict[str, Problem]):
    """A TRL reward function: 1 if prefix + continuation is a correct solution, else 0."""

    def correct(prompts, completions, problem_id, prefix, **_) -> list[float]:
        return [task.verify(problems[pid], pre + completion).reward
                for pid, pre, completion in zip(problem_id, prefix, completions)]

    return correct


class PrefixRLTrainer(GRPOTrainer):
    """GRPOTrainer plus metrics split by prefixed / unprefixed groups and a FLOPs ledger."""

    def __init__(self, *args, flops_ledger: FlopsLedger, **kwargs):
        super().__init__(*args, **kwargs)
        self.flops_ledger = flops_ledger
        self.n_params = n_params(self.model)

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        rewards = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        prefixed = torch.tensor(gather_object([bool(x["prefixed"]) for x in inputs]), device=rewards.device)
        groups = rewards.sum(1).view(-1, self.num_generations)
        group_prefixed = prefixed.view(-1, self.num_generations)[:, 0]
        zero_advantage = (groups == groups[:, :1]).all(1)  # every sample scored alike: no gradient
        mode = "train" if self.model.training else "eval"
        for name, mask in (("prefixed", group_prefixed), ("unprefixed", ~group_prefixed)):
            if mask.any():
                self._metrics[mode][f"reward_{name}"].append(groups[mask].mean().item())
                self._metrics[mode][f"zero_advantage_{name}"].append(zero_advantage[mask].float().mean().item())
        return rewards

    def _generate_and_score_completions(self, inputs):
        out = super()._generate_and_score_completions(inputs)
        local = out["prompt_mask"].sum() + out["completion_mask"].sum()
        tokens = int(self.accelerator.gather(local.reshape(1)).sum())
        # rollouts read and write every token once (2ND); the update trains on all of them (6ND)
        self.flops_ledger.add("rollouts", n_params=self.n_params, inference_tokens=tokens)
        self.flops_ledger.add("updates", n_params=self.n_params, train_tokens=tokens)
        if self.args.num_iterations > 1 or self.beta != 0:  # old-policy / reference forward passes
            extra = tokens * (int(self.args.num_iterations > 1) + int(self.beta != 0))
            self.flops_ledger.add("extra_forward", n_params=self.n_params, inference_tokens=extra)
        mode = "train" if self.model.training else "eval"
        self._metrics[mode]["flops/total"].append(self.flops_ledger.total)
        lengths = out["completion_mask"].sum(1).float()
        prefixed = torch.tensor([bool(x["prefixed"]) for x in inputs], device=lengths.device)
        for name, mask in (("prefixed", prefixed), ("unprefixed", ~prefixed)):
            gathered = self.accelerator.gather(torch.stack([lengths[mask].sum(), mask.sum().float()]).reshape(1, 2))
            total, count = gathered.sum(0).tolist()
            if count:
                self._metrics[mode][f"continuation_length_{name}"].append(total / count)
        return out

    def _save_checkpoint(self, model, trial):
        super()._save_checkpoint(model, trial)
        # the ledger travels with the checkpoint, so a resumed run counts exactly the steps it kept
        checkpoint = Path(self.args.output_dir) / f"checkpoint-{self.state.global_step}"
        if checkpoint.is_dir():
            FlopsLedger(checkpoint / "flops.json").merge(self.flops_ledger)


class MetricsLog(TrainerCallback):
    """Every logged step as one line of metrics.jsonl (always on, whatever report_to says)."""

    def __init__(self, log: AppendLog):
        self.log = log

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and state.is_world_process_zero:
            self.log.append({"step": state.global_step, **logs})


class UnprefixedEval(TrainerCallback):
    """Unprefixed pass@1 on the hard training problems and held-out problems every `every` steps."""

    def __init__(self, trainer_ref, task: Task, problem_sets: dict[str, list[Problem]], cfg: TrainConfig,
                 out_dir: Path, ledger: FlopsLedger):
        self.trainer_ref, self.task, self.problem_sets, self.cfg = trainer_ref, task, problem_sets, cfg
        self.log = AppendLog(out_dir / "eval.jsonl")
        self.out_dir, self.ledger = out_dir, ledger

    def on_step_end(self, args, state, control, **kwargs):
        if self.cfg.eval_every and state.global_step % self.cfg.eval_every == 0:
            self.evaluate(state.global_step)

    def evaluate(self, step: int) -> dict:
        if any(row["step"] == step for row in self.log.rows):
            return {}
        trainer = self.trainer_ref()
        model = trainer.accelerator.unwrap_model(trainer.model)
        was_training = model.training
        model.eval()
        sampler = HFSampler(model, trainer.processing_class, SamplingParams(
            temperature=self.cfg.eval_temperature, max_new_tokens=self.cfg.max_completion_length, batch_size=512))
        row = {"step": step, "flops": self.ledger.total}
        for name, problems in self.problem_sets.items():
            scores = score_problems(self.task, sampler, problems, self.cfg.eval_n,
                                    self.out_dir / "evals" / f"step-{step}-{name}", seed=step, quiet=True)
            row[f"eval/{name}/pass@1"] = sum(r["correct"] for r in scores) / sum(r["n"] for r in scores)
        model.train(was_training)
        self.log.append(row)
        return row


def grpo_config(cfg: TrainConfig, out_dir: Path) -> GRPOConfig:
    batch = cfg.problems_per_step * cfg.num_generations
    return GRPOConfig(
        output_dir=str(out_dir / "checkpoints"), max_steps=cfg.steps, per_device_train_batch_size=batch,
        gradient_accumulation_steps=1, num_generations=cfg.num_generations, learning_rate=cfg.lr,
        lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0, loss_type=cfg.loss_type,
        scale_rewards=cfg.scale_rewards, beta=cfg.beta, num_iterations=1, temperature=cfg.temperature,
        top_k=0, top_p=1.0, max_completion_length=cfg.max_completion_length, seed=cfg.seed, data_seed=cfg.seed,
        bf16=False, use_cpu=not torch.cuda.is_available(), report_to=cfg.report_to, logging_steps=1,
        save_strategy="steps", save_steps=cfg.save_every, save_total_limit=2, save_only_model=False,
        disable_tqdm=False, remove_unused_columns=False,
    )


def train(task: Task, model_path: str, rows: list[dict], out_dir: str | Path, cfg: TrainConfig | None = None,
          eval_problems: dict[str, list[Problem]] | None = None, prior_flops: FlopsLedger | None = None) -> Path:
    """Train `model_path` on `rows` (prompt, problem_id, prefix, prefixed, ...) and save the result in
    out_dir/model. Resumes from the last checkpoint in out_dir. `prior_flops` (e.g. collection) is
    charged to the run's ledger so curves start after it."""
    cfg = cfg or TrainConfig()
    out_dir = Path(out_dir)
    if (out_dir / "model").is_dir() and (out_dir / "manifest.json").exists():
        return out_dir / "model"  # finished earlier
    start = time.time()
    set_seed(cfg.seed)
    atomic_write_text(out_dir / "config.json", json.dumps(asdict(cfg), indent=2))
    model, tokenizer = load_model(model_path, device="cpu" if not torch.cuda.is_available() else None)
    problems = problems_by_id(task)
    problems.update({p.id: p for ps in (eval_problems or {}).values() for p in ps})
    checkpoint = _last_checkpoint(out_dir)
    ledger = _resume_ledger(out_dir, checkpoint, prior_flops)
    kept_step = int(checkpoint.name.split("-")[1]) if checkpoint else -1
    for log_name in ("metrics.jsonl", "eval.jsonl"):  # forget what the kill lost since the checkpoint
        AppendLog(out_dir / log_name).keep(lambda row: row["step"] <= kept_step)
    if len(rows) < cfg.problems_per_step:  # a batch needs problems_per_step rows: repeat a small set
        rows = rows * -(-cfg.problems_per_step // len(rows))
    trainer = PrefixRLTrainer(model=model, reward_funcs=reward_function(task, problems), args=grpo_config(cfg, out_dir),
                              train_dataset=Dataset.from_list(rows), processing_class=tokenizer, flops_ledger=ledger)
    trainer.add_callback(MetricsLog(AppendLog(out_dir / "metrics.jsonl")))
    evaluator = None
    if eval_problems:
        evaluator = UnprefixedEval(weakref.ref(trainer), task, eval_problems, cfg, out_dir, ledger)
        trainer.add_callback(evaluator)
        evaluator.evaluate(0)
    trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    if evaluator and cfg.steps % max(cfg.eval_every, 1):
        evaluator.evaluate(cfg.steps)
    trainer.save_model(str(out_dir / "model"))
    tokenizer.save_pretrained(out_dir / "model")
    write_manifest(out_dir, stage="train", config={"task": task.name, "model": model_path, **asdict(cfg)},
                   seed=cfg.seed, flops=ledger.total, wall_time_s=time.time() - start)
    return out_dir / "model"


def _last_checkpoint(out_dir: Path) -> Path | None:
    checkpoints = sorted((out_dir / "checkpoints").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    return checkpoints[-1] if checkpoints else None


def _resume_ledger(out_dir: Path, checkpoint: Path | None, prior: FlopsLedger | None) -> FlopsLedger:
    """The run's ledger: the checkpoint's copy when resuming (FLOPs spent after that checkpoint
    were lost with the kill and are redone), else the prior stages' FLOPs."""
    ledger = FlopsLedger(out_dir / "flops.json", fresh=True)
    source = FlopsLedger(checkpoint / "flops.json") if checkpoint else prior
    if source is not None:
        ledger.merge(source)
    return ledger
