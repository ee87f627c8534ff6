"""Stage 4: on-policy RL on prefixed (and unprefixed) problems, on TRL's `GRPOTrainer`.

    prefixrl train MODEL --task sort --data runs/prefixes/train.jsonl --out runs/train

Each training row's prompt is the problem followed by a prefix of a correct trace (empty for an
unprefixed row). GRPOTrainer never trains prompt tokens, so the prefix is context only: the loss
covers the policy's own continuation, and nothing else. The reward scores prefix + continuation
(the answer may sit in either). The default objective is the paper's: REINFORCE with a group-mean
baseline (no std scaling, no KL, one update per batch so the ratio is 1), 8 samples per problem.

The subclass adds to GRPOTrainer, in small hooks: metrics split by prefixed / unprefixed groups
(reward, zero-advantage share, entropy, and with split_grad_norms the gradient norm from one
backward pass per part); rollouts on CPU through generate_fast's decode loop (TrainConfig.sampler);
the FLOPs ledger (rollouts 2·N·D, updates 6·N·D, prompt and prefix tokens counted); for the off-policy
baselines only, a correct trace in place of each group's last sample with its own token weights;
and rows that can change during training (prefixrl-adaptive). Callbacks evaluate *unprefixed*
pass@1 every `eval_every` steps and stop a run at its FLOPs budget. Methods: see methods.py.

At scale (see the README's "On GPUs"): `accelerate launch -m prefixrl.cli train ...` runs one
process per GPU (DDP, DeepSpeed ZeRO-3 or FSDP: configs/accelerate/), and `use_vllm` samples the
rollouts with vLLM (TRL's server or colocate mode). A step's batch is global: problems_per_step x
num_generations samples shared by the processes, one optimizer step per batch. FLOPs are counted
from every process's tokens (gathered), every process keeps the same ledger (so all stop at the
same budget), and only the main process writes files.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import tempfile
import time
import warnings
import weakref
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from accelerate.utils import broadcast_object_list, gather_object, get_int_from_env, parse_flag_from_env
from datasets import Dataset
from transformers import (AutoConfig, AutoTokenizer, PrinterCallback, ProgressCallback, Trainer, TrainerCallback,
                          set_seed)
from trl import GRPOConfig, GRPOTrainer
from trl.models.utils import unwrap_model_for_generation

from prefixrl.evaluate import score_problems
from prefixrl.files import AppendLog, InputError, atomic_write_text
from prefixrl.flops import FlopsLedger
from prefixrl.generate import SamplingParams, sampler_for
from prefixrl.generate_fast import UnsupportedModel, check_supported, rollout_ids
from prefixrl.models import encode_prompt, load_model, n_params, sequence_logprobs
from prefixrl.reliance import prefix_reliance
from prefixrl.runinfo import differences, write_manifest
from prefixrl.tasks import Problem, Task, problems_by_id, task_args, verify_all

# TRL calls transformers' renamed gradient_checkpointing API: its FutureWarnings say nothing to a
# user (filtered here, not in the CLI, so experiment workers and scripts are quiet too)
warnings.filterwarnings("ignore", category=FutureWarning, message=".*gradient_checkpointing.*")
logger = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    steps: int = 100  # optimizer steps (one generation batch each)
    problems_per_step: int = 16  # problems per batch (the paper: "batch 128", read as 128 problems x 8)
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
    eval_batch_size: int = 512  # sequences per generation batch when evaluating (and prefixrl-adaptive's
    # calibration): lower it for long samples on big models (512 x 16k tokens on an 8 B model run out of memory)
    save_every: int = 50  # steps between checkpoints (a killed run resumes from the last)
    reliance_n: int = 0  # samples per prefixed training row at each evaluation: prefix reliance per problem
    # (reliance.py: success with its prefixes vs without); 0: not measured
    budget_flops: float | None = None  # stop once the run's ledger (charged prior stages included) reaches it
    report_to: str = "none"  # trackers, comma-separated: trackio, wandb, tensorboard (metrics.jsonl is always written)
    progress_bar: bool = True  # TRL's step bar (off in experiment workers, which share one terminal)
    is_truncation: float | None = None  # offpolicy-is: cap on the importance weight pi/mu (None: none)
    luffy_gamma: float = 0.1  # luffy: the shaping constant in pi / (pi + gamma)
    seed: int = 0
    sampler: str = "auto"  # rollouts and evaluations: auto (on CPU, generate_fast's decode loop where it supports
    # the model: ~2x faster, the same samples up to float-rounding ties; else transformers') | hf (always
    # transformers' generate, TRL's own rollouts) | fast (the decode loop, or an error)
    split_grad_norms: bool = True  # one backward pass per part (prefixed, then unprefixed rows) to log each
    # part's gradient norm (prefixed/grad_norm, unprefixed/grad_norm), the same gradient. Off: TRL's single pass. On the
    # tiny models it costs nothing measurable (each part is padded to its own longest continuation, which pays
    # for the second pass: benchmarks/train_step.py); switch it off where the second pass shows
    # -- scale: memory and processes (a step's batch stays problems_per_step x num_generations) ---------
    micro_batch_size: int | None = None  # samples per process per forward/backward (None: its whole share);
    # smaller ones accumulate gradients, so the optimizer still steps once per batch
    bf16: bool = False  # bf16 mixed precision (GPUs; an accelerate config's mixed_precision: bf16 also sets it,
    # see use_bf16); the weights load in bf16 where DeepSpeed / FSDP keep fp32 master copies (policy_dtype)
    gradient_checkpointing: bool = False  # recompute activations in the backward pass: long sequences fit
    # -- vLLM rollouts (TRL's GRPOConfig options of the same names; GPU only, README "On GPUs") -----------
    use_vllm: bool = False
    vllm_mode: str = "server"  # server: a `trl vllm-serve` process on its own GPUs | colocate: in each process
    vllm_server_base_url: str | None = None  # server: e.g. http://10.0.0.2:8000 (overrides host and port)
    vllm_server_host: str = "0.0.0.0"
    vllm_server_port: int = 8000
    vllm_gpu_memory_utilization: float = 0.3  # colocate: the share of each GPU vLLM may take
    vllm_tensor_parallel_size: int = 1  # colocate: GPUs per vLLM engine (must divide the process count)

    def __post_init__(self):
        for name in ("steps", "problems_per_step", "num_generations", "max_completion_length", "eval_n",
                     "eval_batch_size", "vllm_tensor_parallel_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"TrainConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.num_generations < 2:
            raise ValueError("TrainConfig.num_generations must be >= 2: the baseline is the group mean")
        if self.lr <= 0:
            raise ValueError(f"TrainConfig.lr must be > 0, got {self.lr}")
        if self.micro_batch_size is not None and self.micro_batch_size < 1:
            raise ValueError(f"TrainConfig.micro_batch_size must be >= 1 (or None), got {self.micro_batch_size}")
        if self.sampler not in ("auto", "hf", "fast"):
            raise ValueError(f"TrainConfig.sampler must be 'auto', 'hf' or 'fast', got {self.sampler!r}")
        if self.vllm_mode not in ("server", "colocate"):
            raise ValueError(f"TrainConfig.vllm_mode must be 'server' or 'colocate', got {self.vllm_mode!r}")
        if not 0 < self.vllm_gpu_memory_utilization <= 1:
            raise ValueError(f"TrainConfig.vllm_gpu_memory_utilization must be in (0, 1], "
                             f"got {self.vllm_gpu_memory_utilization}")
        if self.reliance_n < 0:
            raise ValueError(f"TrainConfig.reliance_n must be >= 0 (0: not measured), got {self.reliance_n}")
        report_to(self.report_to)  # an unknown or missing tracker: said before any work


def reward_function(task: Task, problems: dict[str, Problem]):
    """A TRL reward function: 1 if prefix + continuation is a correct solution, else 0."""

    def correct(prompts, completions, problem_id, prefix, **_) -> list[float]:
        items = [(problems[pid], pre + completion) for pid, pre, completion in zip(problem_id, prefix, completions)]
        return [verdict.reward for verdict in verify_all(task, items)]

    return correct


@dataclass
class OffPolicyTraces:
    """Correct traces that join on-policy groups as one extra sample (the `luffy` and `offpolicy-is`
    baselines): per problem id, the trace's policy token ids (<eos> included) and the behaviour
    policy's log-probs of them."""

    weight: str  # "is": truncated importance weight pi/mu on grad log pi | "luffy": shaped pi/(pi + gamma)
    token_ids: dict[str, list[int]]
    behaviour_logprobs: dict[str, list[float]]
    is_truncation: float | None = None  # is: cap on pi/mu (None: untruncated, as in the paper's baseline)
    luffy_gamma: float = 0.1  # luffy: the shaping constant of Yan et al. (2025)

    def __post_init__(self):
        if self.weight not in ("is", "luffy"):
            raise ValueError(f"OffPolicyTraces.weight must be 'is' or 'luffy', got {self.weight!r}")


class PrefixRLTrainer(GRPOTrainer):
    """GRPOTrainer plus metrics split by prefixed / unprefixed groups, a FLOPs ledger and, for the
    off-policy baselines only, a correct trace in place of one sample per group."""

    def __init__(self, *args, flops_ledger: FlopsLedger, off_policy: OffPolicyTraces | None = None,
                 sampler: str = "auto", split_grad_norms: bool = True, **kwargs):
        super().__init__(*args, **kwargs)
        self.flops_ledger, self.off_policy = flops_ledger, off_policy
        self.split_grad_norms = split_grad_norms
        self.fast_rollouts = self._can_roll_out_fast(sampler)
        self.n_params = n_params(self.model)
        self.live_rows: list[dict] | None = None  # rows that change during training, by their "slot"
        self.trace_pool = None  # where correct unprefixed answers go (prefixrl-adaptive)

    # -- rollouts -------------------------------------------------------------------------------
    def _generate_and_score_completions(self, inputs):
        if self.live_rows is not None:  # the current prompt and prefix of each row's slot
            inputs = [{**x, **self.live_rows[x["slot"]]} for x in inputs]
        self._batch_inputs = inputs  # read by _generate, which sees only the prompts
        self._discarded_tokens = 0  # generated, then replaced by a trace (set by _generate)
        out = super()._generate_and_score_completions(inputs)
        local = out["prompt_mask"].sum() + out["completion_mask"].sum()
        counts = torch.stack([local, torch.tensor(self._discarded_tokens, device=local.device)])
        tokens, discarded = self.accelerator.gather(counts).reshape(-1, 2).sum(0).tolist()
        # rollouts read and write every token once (2ND, on vLLM or not), the samples a trace replaced
        # included; the update trains on the batch's (6ND). The counts are gathered: every process's
        # tokens, counted once, in every process's ledger.
        self.flops_ledger.add("rollouts", n_params=self.n_params, inference_tokens=tokens + discarded)
        self.flops_ledger.add("updates", n_params=self.n_params, train_tokens=tokens)
        extra = self._extra_forward_passes()
        if extra:  # old-policy / reference forward passes
            self.flops_ledger.add("extra_forward", n_params=self.n_params, inference_tokens=extra * tokens)
        mode = "train" if self.model.training else "eval"
        self._metrics[mode]["flops/total"].append(self.flops_ledger.total)
        prefixed = torch.tensor([bool(x["prefixed"]) for x in inputs], device=out["advantages"].device)
        out["is_prefixed"] = prefixed  # rides along through TRL's shuffle and split: the loss splits by it
        lengths = out["completion_mask"].sum(1).float()
        for name, mask in (("prefixed", prefixed), ("unprefixed", ~prefixed)):
            self._log_mean(mode, f"continuation_length_{name}", lengths, mask)
        if self.off_policy:
            out.update(self._off_policy_columns(inputs, out["completion_ids"].shape[1]))
        return out

    def _extra_forward_passes(self) -> int:
        """Forward passes over the batch besides the update's: TRL's old-policy log-probs (computed when
        the samples may be stale, and always with vLLM's importance-sampling correction) and the
        reference model's (KL penalty)."""
        generate_every = self.args.steps_per_generation * self.num_iterations
        old_policy = (self.args.gradient_accumulation_steps % generate_every != 0
                      or (self.use_vllm and self.vllm_importance_sampling_correction))
        return int(old_policy) + int(self.beta != 0)

    def _tokenize_prompts(self, prompts):
        # the samplers' token ids (encode_prompt): TRL adds special tokens to text prompts, a second
        # BOS after a chat template that writes one
        return [encode_prompt(self.processing_class, prompt) for prompt in prompts], None, {}

    def _can_roll_out_fast(self, sampler: str) -> bool:
        """Whether rollouts go through generate_fast's decode loop: on CPU, in one process, for a model
        it supports, with sampling it implements (temperature and top-p, as GRPOConfig sets it here)."""
        if sampler == "hf":
            return False
        why = [reason for reason, bad in (
            ("vLLM", self.use_vllm), ("continuous batching", self.use_transformers_continuous_batching),
            ("a GPU", self.accelerator.device.type != "cpu"), ("several processes", self.accelerator.num_processes > 1),
            ("half precision", self.args.bf16 or self.args.fp16), ("a vision model", self._is_vlm),
            ("top_k / min_p / repetition_penalty", self.top_k not in (0, None) or self.min_p is not None
             or self.repetition_penalty not in (None, 1.0)), ("generation_kwargs", self.args.generation_kwargs),
            ("attention dropout (TRL samples in training mode)", getattr(self.model.config, "attention_dropout", 0)))
            if bad]
        if not why:
            try:
                check_supported(self.accelerator.unwrap_model(self.model))
            except UnsupportedModel as err:
                why.append(str(err))
        if why and sampler == "fast":
            raise ValueError(f"TrainConfig.sampler 'fast' cannot sample these rollouts ({'; '.join(why)}): use 'auto'")
        return not why

    def _generate_single_turn(self, prompt_ids, images, multimodal_fields, num_generations, has_tool_images=False):
        if not self.fast_rollouts or self.use_vllm or images is not None or multimodal_fields:
            return super()._generate_single_turn(prompt_ids, images, multimodal_fields, num_generations, has_tool_images)
        params = SamplingParams(temperature=self.temperature, top_p=self.top_p,
                                max_new_tokens=self.max_completion_length)
        ids = rollout_ids(self.accelerator.unwrap_model(self.model), prompt_ids, params, self.eos_token_ids,
                          self._tokenizer.pad_token_id)
        return ids, None  # no sampling log-probs, as TRL's transformers path

    def _generate(self, prompts):
        """TRL's sampling (transformers or vLLM: both go through here), then the off-policy baselines'
        trace in place of each group's last sample."""
        result = super()._generate(prompts)
        if not self.off_policy or not self.model.training:
            return result
        prompt_ids, completion_ids, tool_mask, completions, logprobs, *rest = result
        for i in self._off_policy_rows(len(prompts)):
            # the trace replaces the group's last sample: it is scored and baselined like the others
            ids = self.off_policy.token_ids[self._batch_inputs[i]["problem_id"]]
            self._discarded_tokens += len(completion_ids[i])
            completion_ids[i] = list(ids)
            completions[i] = self.processing_class.decode(ids, skip_special_tokens=True)
            if logprobs is not None:  # vLLM's sampling log-probs: none for a trace (TRL reads None as
                logprobs[i] = [None] * len(ids)  # "unscored": no vLLM correction, no vLLM-mismatch metric)
        return (prompt_ids, completion_ids, tool_mask, completions, logprobs, *rest)

    def _off_policy_rows(self, local_batch: int) -> list[int]:
        """Local indices of each group's last sample, for problems that have a trace (groups are
        consecutive in the global batch, which the processes share in order)."""
        first = self.accelerator.process_index * local_batch
        return [i for i in range(local_batch) if (first + i) % self.num_generations == self.num_generations - 1
                and self._batch_inputs[i]["problem_id"] in self.off_policy.token_ids]

    def _off_policy_columns(self, inputs, width: int) -> dict:
        rows = self._off_policy_rows(len(inputs))
        device = self.accelerator.device
        off = torch.zeros(len(inputs), dtype=torch.bool, device=device)
        behaviour = torch.zeros(len(inputs), width, device=device)
        for i in rows:
            logps = self.off_policy.behaviour_logprobs[inputs[i]["problem_id"]]
            off[i] = True
            behaviour[i, :len(logps)] = torch.tensor(logps, device=device)
        return {"off_policy": off, "behaviour_logps": behaviour}

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        rewards = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        prefixed = torch.tensor(gather_object([bool(x["prefixed"]) for x in inputs]), device=rewards.device)
        groups = rewards.sum(1).view(-1, self.num_generations)
        group_prefixed = prefixed.view(-1, self.num_generations)[:, 0]
        zero_advantage = (groups == groups[:, :1]).all(1)  # every sample scored alike: no gradient
        mode = "train" if self.model.training else "eval"
        for name, mask in (("prefixed", group_prefixed), ("unprefixed", ~group_prefixed)):
            if mask.any():
                self._metrics[mode][f"{name}/reward"].append(groups[mask].mean().item())
                self._metrics[mode][f"{name}/zero_advantage"].append(zero_advantage[mask].float().mean().item())
        if self.trace_pool is not None:  # this process's own correct unprefixed answers
            first = self.accelerator.process_index * len(inputs)
            for i, (x, completion) in enumerate(zip(inputs, completions)):
                if not x["prefixed"] and rewards[first + i].sum() > 0:
                    self.trace_pool.add(x["problem_id"], completion, self.state.global_step)
        return rewards

    # -- the update -----------------------------------------------------------------------------
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """With split_grad_norms, one backward pass per part (prefixed rows, then unprefixed rows), so
        each part's gradient norm is measured; their gradients add up to the batch's. Twice the
        passes, but each part is padded only to its own longest continuation (prefixed ones are
        shorter): on the tiny models the update costs what one pass costs. Otherwise, and for
        multi-process runs (whose backward synchronises across processes) and an entropy bonus (not
        a sum over rows), TRL's single pass."""
        parts = [(name, rows) for name, rows in _parts(inputs) if rows.any()]
        single = len(parts) < 2 or self.accelerator.num_processes > 1 or self._entropy_bonus_enabled
        if single or not self.split_grad_norms:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        params = [p for p in model.parameters() if p.requires_grad]
        total = torch.zeros((), device=self.accelerator.device)
        for name, rows in parts:
            earlier = [p.grad for p in params]  # set aside, so .grad holds this part's gradient alone
            for p in params:
                p.grad = None
            loss = self._compute_loss(model, _select(inputs, rows)) * self._part_share(inputs, rows)
            self.accelerator.backward(loss)
            norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params if p.grad is not None]))
            self._metrics["train"][f"{name}/grad_norm"].append(norm.item())
            for p, grad in zip(params, earlier):
                if grad is not None:
                    p.grad = grad if p.grad is None else p.grad + grad
            total += loss.detach()
        return total.requires_grad_()  # the gradient is in place: the Trainer's backward adds nothing

    def _part_share(self, inputs, rows) -> float:
        """A part's loss as a share of the batch's: TRL normalises per loss type, by rows or tokens."""
        if self.loss_type == "bnpo":
            mask = inputs["completion_mask"]
            return (mask[rows].sum() / mask.sum().clamp(min=1)).item()
        if self.loss_type in ("grpo", "dr_grpo", "luspo", "sapo"):
            return rows.float().mean().item()
        return 1.0  # dapo, cispo, vespo: already normalised by the whole batch's token count

    def _get_per_token_logps_and_entropies(self, *args, **kwargs):
        self._last_forward = super()._get_per_token_logps_and_entropies(*args, **kwargs)
        return self._last_forward

    def _compute_loss(self, model, inputs):
        off = inputs.get("off_policy")
        if off is None:
            loss = super()._compute_loss(model, inputs)
        else:  # TRL's objective on the policy's own samples, the method's weighted one on the traces
            loss = super()._compute_loss(model, {**inputs, "advantages": inputs["advantages"] * ~off})
            loss = loss + self._off_policy_loss(self._last_forward[0], inputs, off)
        own = inputs["completion_mask"].bool()  # the policy's own tokens: not a trace's
        if off is not None:
            own = own & ~off[:, None]
        entropies = self._last_forward[1]
        mode = "train" if self.model.training else "eval"
        for name, rows in _parts(inputs):
            self._log_mean(mode, f"{name}/entropy", entropies, own & rows[:, None])
        return loss

    def _log_mean(self, mode: str, name: str, values: torch.Tensor, mask: torch.Tensor) -> None:
        """Log the mean of values[mask] over every process's rows. A collective: every process calls
        it, whether or not it holds such rows."""
        local = torch.stack([values[mask].sum(), mask.sum()]).float()
        total, count = self.accelerator.reduce(local, reduction="sum").tolist()
        if count:
            self._metrics[mode][name].append(total / count)

    def _off_policy_loss(self, logps, inputs, off):
        """-A · w(pi) on each trace token, normalised like dr_grpo (sum / (rows x max length)).
        is: w = min(pi/mu, c) (a constant) times log pi, so its gradient is the truncated importance
        weight times grad log pi; luffy: w = pi / (pi + gamma), LUFFY's policy shaping with the
        behaviour probability taken as 1 (it keeps low-probability tokens' gradients from vanishing
        and high-probability ones' from dominating)."""
        mask = inputs["completion_mask"] * off[:, None]
        if self.off_policy.weight == "is":
            ratio = (logps.detach() - inputs["behaviour_logps"]).exp()
            if self.off_policy.is_truncation is not None:
                ratio = ratio.clamp(max=self.off_policy.is_truncation)
            surrogate = ratio * logps
            self._log_mean("train", "importance_weight/mean", ratio, mask.bool())
            local_max = ratio[mask.bool()].max() if mask.any() else ratio.new_tensor(float("-inf"))
            largest = self.accelerator.gather(local_max.reshape(1)).max().item()
            if largest > float("-inf"):
                self._metrics["train"]["importance_weight/max"].append(largest)
        else:
            prob = logps.exp()
            surrogate = prob / (prob + self.off_policy.luffy_gamma)
        advantages = inputs["advantages"][:, None]
        normaliser = logps.size(0) * self.max_completion_length * self.current_gradient_accumulation_steps
        return -(advantages * surrogate * mask).sum() / normaliser

    def _save_checkpoint(self, model, trial):
        super()._save_checkpoint(model, trial)
        # the ledger travels with the checkpoint, so a resumed run counts exactly the steps it kept
        checkpoint = Path(self.args.output_dir) / f"checkpoint-{self.state.global_step}"
        if self.args.should_save and checkpoint.is_dir():
            FlopsLedger(checkpoint / "flops.json").merge(self.flops_ledger)

    def _issue_warnings_after_load(self, load_result) -> None:
        """A checkpoint of a model with tied weights has no lm_head.weight (it is the embedding,
        saved once): not a missing key on resume, so not a warning that alarms for nothing."""
        tied = set(getattr(self.model, "all_tied_weights_keys", None) or ())
        load_result.missing_keys[:] = [key for key in load_result.missing_keys if key not in tied]
        super()._issue_warnings_after_load(load_result)

    @contextmanager
    def full_model(self):
        """The policy with all its weights in this process, for sampling outside TRL's rollouts
        (evaluation): TRL's own context for generation, which unwraps DDP and gathers ZeRO-3 / FSDP
        shards. Every process must enter it (sharded weights are gathered collectively)."""
        with (unwrap_model_for_generation(self.model_wrapped, self.accelerator,
                                          gather_deepspeed3_params=self.args.ds3_gather_for_generation,
                                          gradient_checkpointing_kwargs=self.args.gradient_checkpointing_kwargs)
              as model,
              self._dist.summon_full_params(self.model_wrapped, recurse=False)):
            yield model


def _parts(inputs) -> list[tuple[str, torch.Tensor]]:
    prefixed = inputs["is_prefixed"] if "is_prefixed" in inputs else torch.zeros(
        len(inputs["advantages"]), dtype=torch.bool, device=inputs["advantages"].device)
    return [("prefixed", prefixed), ("unprefixed", ~prefixed)]


def _select(inputs: dict, rows: torch.Tensor) -> dict:
    """The batch's rows where `rows` is True (per-row tensors only; scalars pass through)."""
    return {k: v[rows] if isinstance(v, torch.Tensor) and v.dim() and v.size(0) == rows.numel() else v
            for k, v in inputs.items()}


class MetricsLog(TrainerCallback):
    """Every logged step as one line of metrics.jsonl (always on, whatever report_to says)."""

    def __init__(self, log: AppendLog):
        self.log = log

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and state.is_world_process_zero and not any(k.startswith("eval_") for k in logs):
            self.log.append({"step": state.global_step, **logs})  # (evaluations are in eval.jsonl)


class BarOnly(ProgressCallback):
    """transformers' progress bar without the dict of logs it writes under the bar every step."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        pass


class FlopsBudget(TrainerCallback):
    """Stops training once the ledger reaches the budget: compute-matched runs end at equal FLOPs."""

    def __init__(self, ledger: FlopsLedger, budget: float):
        self.ledger, self.budget = ledger, budget

    def on_step_end(self, args, state, control, **kwargs):
        if self.ledger.total >= self.budget:
            control.should_training_stop = True


class UnprefixedEval(TrainerCallback):
    """Every `every` steps, on unprefixed problems: pass@1 on the hard training problems and on
    held-out ones, the share of each strategy marker in the answers, and the policy's mean NLL of
    the training prefixes (does it come to imitate them?).

    With several processes, each runs the same evaluation (same seeds: same samples) on the whole
    policy, so that sharded weights (ZeRO-3, FSDP) can be gathered; only the main process writes."""

    def __init__(self, trainer_ref, task: Task, problem_sets: dict[str, list[Problem]], cfg: TrainConfig,
                 out_dir: Path, ledger: FlopsLedger, prefix_rows: list[dict], reliance_rows: list[dict] = ()):
        self.trainer_ref, self.task, self.cfg, self.reliance_rows = trainer_ref, task, cfg, list(reliance_rows)
        self.out_dir, self.ledger, self.prefix_rows = out_dir, ledger, prefix_rows
        self.main = trainer_ref().accelerator.is_main_process
        # an empty set has no pass@1 (e.g. --task math without a heldout= file): evaluate the others
        self.problem_sets = {name: problems for name, problems in problem_sets.items() if problems}
        empty = sorted(set(problem_sets) - set(self.problem_sets))
        if empty and self.main:
            rest = " and ".join(self.problem_sets)
            logger.warning("no %s problems to evaluate on%s", " or ".join(empty),
                           f": evaluating on {rest} only" if rest else "")
        self.log = AppendLog(out_dir / "eval.jsonl") if self.main else None
        done = [[row["step"] for row in self.log.rows] if self.main else None]
        self.done = set(broadcast_object_list(done)[0])  # every process skips the same steps

    def on_step_end(self, args, state, control, **kwargs):
        if self.cfg.eval_every and state.global_step % self.cfg.eval_every == 0:
            self.evaluate(state.global_step)

    def evaluate(self, step: int) -> dict:
        if step in self.done:
            return {}
        trainer = self.trainer_ref()
        # the other processes score into a folder of their own, thrown away afterwards
        folder = nullcontext(self.out_dir / "evals") if self.main else tempfile.TemporaryDirectory()
        with trainer.full_model() as model, folder as evals:
            row = self._evaluate(step, model, trainer.processing_class, Path(evals))
        self.done.add(step)
        if self.main:
            self.log.append(row)
        if self.cfg.report_to != "none":  # to the trackers as eval/hard/pass@1 ...: the Trainer's own log,
            # not GRPOTrainer's, which would take the step's pending training metrics with it
            should_log = trainer.control.should_log  # logging resets it: the step's own log must still happen
            Trainer.log(trainer, {"eval_" + k.removeprefix("eval/"): v for k, v in row.items()
                                  if k.startswith("eval/")})
            trainer.control.should_log = should_log
        return row

    def _evaluate(self, step: int, model, tokenizer, evals: Path) -> dict:
        was_training = model.training
        model.eval()
        sampler = sampler_for(model, tokenizer, SamplingParams(
            temperature=self.cfg.eval_temperature, max_new_tokens=self.cfg.max_completion_length,
            batch_size=self.cfg.eval_batch_size), backend=self.cfg.sampler)
        row, unprefixed = {"step": step, "flops": self.ledger.total}, {}
        for name, problems in self.problem_sets.items():
            scores = score_problems(self.task, sampler, problems, self.cfg.eval_n, evals / f"step-{step}-{name}",
                                    seed=self.cfg.seed * 100_003 + step, quiet=True)
            samples = sum(r["n"] for r in scores)
            unprefixed.update({r["id"]: r["correct"] / r["n"] for r in scores})
            row[f"eval/{name}/pass@1"] = sum(r["correct"] for r in scores) / samples
            for strategy in self.task.strategy_markers:
                row[f"eval/{name}/strategy/{strategy}"] = sum(r["strategies"].get(strategy, 0) for r in scores) / samples
        if self.prefix_rows:
            row["eval/prefix_nll"] = self._prefix_nll(model, tokenizer)
        if self.reliance_rows and self.cfg.reliance_n:
            problems = {p.id: p for ps in self.problem_sets.values() for p in ps}
            row.update(prefix_reliance(self.task, sampler, self.reliance_rows, problems, unprefixed,
                                       self.cfg.reliance_n, seed=self.cfg.seed * 100_003 + step))
        model.train(was_training)
        return row

    def _prefix_nll(self, model, tokenizer) -> float:
        """Mean negative log-likelihood per prefix token, given the problem's prompt."""
        total, count = 0.0, 0
        for r in self.prefix_rows:
            ids = tokenizer(r["prefix"], add_special_tokens=False)["input_ids"]
            logprobs = sequence_logprobs(model, tokenizer, r["prompt"][:-len(r["prefix"])], ids)
            total, count = total - sum(logprobs), count + len(logprobs)
        return total / max(count, 1)


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
    micro, accumulation = batch_split(cfg, processes or world_size())
    return GRPOConfig(
        output_dir=str(out_dir / "checkpoints"), max_steps=cfg.steps, per_device_train_batch_size=micro,
        gradient_accumulation_steps=accumulation, num_generations=cfg.num_generations, learning_rate=cfg.lr,
        lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0, loss_type=cfg.loss_type,
        scale_rewards=cfg.scale_rewards, beta=cfg.beta, num_iterations=1, temperature=cfg.temperature,
        top_k=0, top_p=1.0, max_completion_length=cfg.max_completion_length, seed=cfg.seed, data_seed=cfg.seed,
        bf16=use_bf16(cfg), gradient_checkpointing=cfg.gradient_checkpointing, use_cpu=not torch.cuda.is_available(),
        report_to=report_to(cfg.report_to), project="prefixrl", run_name=str(out_dir), logging_steps=1,
        save_strategy="steps", save_steps=cfg.save_every,
        save_total_limit=2, save_only_model=False, disable_tqdm=not cfg.progress_bar, remove_unused_columns=False,
        use_vllm=cfg.use_vllm, vllm_mode=cfg.vllm_mode, vllm_server_base_url=cfg.vllm_server_base_url,
        vllm_server_host=cfg.vllm_server_host, vllm_server_port=cfg.vllm_server_port,
        vllm_gpu_memory_utilization=cfg.vllm_gpu_memory_utilization,
        vllm_tensor_parallel_size=cfg.vllm_tensor_parallel_size,
    )


TRACKERS = {"trackio": "trackio==0.43.0", "wandb": "wandb", "tensorboard": "tensorboard"}  # name: what to install


def report_to(value: str) -> list[str]:
    """The trackers of `report_to` ("none", or some of TRACKERS, comma-separated), each checked to be
    installed before anything runs."""
    names = [name.strip() for name in value.split(",") if name.strip() and name.strip() != "none"]
    unknown = [name for name in names if name not in TRACKERS]
    if unknown:
        raise ValueError(f"report_to: unknown tracker {unknown}; use none or {', '.join(TRACKERS)} (comma-separated)")
    missing = [name for name in names if importlib.util.find_spec(name) is None]
    if missing:
        raise ValueError(f"report_to {missing[0]}: it is not installed; pip install {TRACKERS[missing[0]]}")
    return names or ["none"]


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
          off_policy: OffPolicyTraces | None = None, adaptive=None) -> Path:
    """Train `model_path` on `rows` (prompt, problem_id, prefix, prefixed, ...) and save the result in
    out_dir/model. Resumes from the last checkpoint in out_dir. `prior_flops` (e.g. collection) is
    charged to the run's ledger so curves start after it. `off_policy`: traces that join the
    groups (the luffy and offpolicy-is baselines, see methods.py). `adaptive`: an AdaptivePrefixes
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
    problems = problems_by_id(task)
    problems.update({p.id: p for ps in (eval_problems or {}).values() for p in ps})
    checkpoint = _last_checkpoint(out_dir)
    ledger = _resume_ledger(out_dir, checkpoint, prior_flops, write=main)
    kept_step = int(checkpoint.name.split("-")[1]) if checkpoint else -1
    for log_name in ("metrics.jsonl", "eval.jsonl") if main else ():  # forget what the kill lost since the checkpoint
        AppendLog(out_dir / log_name).keep(lambda row: row["step"] <= kept_step)
    if main:
        _drop_evals_after(out_dir / "evals", kept_step)
    nll_rows = [r for r in rows if r["prefix"]][:32]  # a fixed sample: the prefix-NLL curve follows one set
    if adaptive:  # the rows chosen at the last re-calibration the checkpoint saw
        current = adaptive.start(kept_step)
        nll_rows = [r for r in adaptive.rows(model, tokenizer, 0, ledger) if r["prefix"]][:32]  # step 0's, from disk
        rows = adaptive.rows(model, tokenizer, current, ledger)
    if len(rows) < cfg.problems_per_step:  # a batch needs problems_per_step rows: repeat a small set
        rows = rows * -(-cfg.problems_per_step // len(rows))
    trainer = PrefixRLTrainer(model=model, reward_funcs=reward_function(task, problems), args=args,
                              train_dataset=Dataset.from_list(rows), processing_class=tokenizer, flops_ledger=ledger,
                              off_policy=off_policy, sampler=cfg.sampler, split_grad_norms=cfg.split_grad_norms)
    if main:
        trainer.add_callback(MetricsLog(AppendLog(out_dir / "metrics.jsonl")))
    if adaptive:
        adaptive.attach(trainer, ledger)
        trainer.live_rows = rows
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
