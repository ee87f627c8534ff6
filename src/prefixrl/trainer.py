"""`PrefixRLTrainer`: TRL's GRPOTrainer, its loss untouched (objective.py), plus what a PrefixRL run
measures and needs around it:

- metrics split by prefixed / unprefixed groups: reward, zero-advantage share, continuation length,
  entropy, and with `split_grad_norms` each part's gradient norm (one backward pass per part);
- an update that skips the rows whose advantage is 0 (`skip_zero_advantage`: the same gradient);
- the FLOPs ledger: rollouts 2·N·D, updates 6·N·D, prompt and prefix tokens counted, gathered over
  processes so every process stops at the same budget;
- rollouts on CPU through generate_fast's decode loop (TrainConfig.sampler);
- `LiveRows` (prefixrl-adaptive): rows whose prefix changes during training, and where the
  policy's correct unprefixed answers go.

The off-policy baselines subclass it (offpolicy.py).
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Protocol

import torch
from accelerate.utils import gather_object
from trl import GRPOTrainer
from trl.models.utils import unwrap_model_for_generation

from prefixrl.flops import FlopsLedger
from prefixrl.generate import SamplingParams
from prefixrl.generate_fast import UnsupportedModel, check_supported, rollout_ids
from prefixrl.models import encode_prompt, n_params


class LiveRows(Protocol):
    """Training rows that change during training (adaptive.AdaptivePrefixes): the dataset's rows
    carry a "slot", and each batch reads its slot's current row."""

    current: list[dict]  # by slot: the rows in force now

    def solved(self, problem_id: str, completion: str, step: int) -> None:
        """A correct unprefixed answer of the policy, found while generating at `step`."""


class PrefixRLTrainer(GRPOTrainer):
    """GRPOTrainer plus metrics split by prefixed / unprefixed groups, the FLOPs ledger, CPU rollouts
    through generate_fast, and (prefixrl-adaptive) rows that change during training. The objective
    is TRL's own, set by objective.objective_args; nothing here changes the loss."""

    def __init__(self, *args, flops_ledger: FlopsLedger, sampler: str = "auto", split_grad_norms: bool = True,
                 skip_zero_advantage: bool = True, live_rows: LiveRows | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.flops_ledger, self.split_grad_norms, self.live_rows = flops_ledger, split_grad_norms, live_rows
        self.skip_zero_advantage = skip_zero_advantage
        self.fast_rollouts = self._can_roll_out_fast(sampler)
        self.n_params = n_params(self.model)

    # -- rollouts -------------------------------------------------------------------------------
    def _generate_and_score_completions(self, inputs):
        if self.live_rows is not None:  # the current prompt and prefix of each row's slot
            inputs = [{**x, **self.live_rows.current[x["slot"]]} for x in inputs]
        out = super()._generate_and_score_completions(inputs)
        local = out["prompt_mask"].sum() + out["completion_mask"].sum()
        counts = torch.stack([local, torch.tensor(self._replaced_tokens(), device=local.device)])
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
        return out

    def _replaced_tokens(self) -> int:
        """Tokens sampled in this batch, then replaced before scoring (offpolicy.py: by a trace)."""
        return 0

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
        if self.live_rows is not None:  # this process's own correct unprefixed answers
            first = self.accelerator.process_index * len(inputs)
            for i, (x, completion) in enumerate(zip(inputs, completions)):
                if not x["prefixed"] and rewards[first + i].sum() > 0:
                    self.live_rows.solved(x["problem_id"], completion, self.state.global_step)
        return rewards

    # -- the update: TRL's loss, over the rows that carry a gradient; split_grad_norms: a pass per part ---------
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """TRL's loss, with two changes that leave the gradient as it is:
        - skip_zero_advantage: a row whose advantage is 0 adds exactly nothing to it (no KL term, no
          entropy bonus here), so it gets a forward pass without gradient (its entropy is logged, as
          TRL logs it) and no backward. Early in PrefixRL almost every unprefixed group and many
          prefixed ones get the same reward in all samples. FLOPs are still charged for every row,
          as the paper counts them.
        - split_grad_norms: one backward pass per part (prefixed rows, then unprefixed rows), so each
          part's gradient norm is measured; the parts' gradients add up to the batch's, and each part
          is padded only to its own longest continuation (prefixed ones are shorter).
        Multi-process runs (whose backward synchronises across processes) take TRL's single pass."""
        trained = inputs["advantages"] != 0 if self.skip_zero_advantage and self.beta == 0 else \
            torch.ones_like(inputs["advantages"], dtype=torch.bool)
        parts = _parts(inputs) if self.split_grad_norms else [("all", torch.ones_like(trained))]
        if self.accelerator.num_processes > 1 or self._entropy_bonus_enabled or \
                (trained.all() and sum(rows.any().item() for _, rows in parts) < 2):
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        params = [p for p in model.parameters() if p.requires_grad]
        total = torch.zeros((), device=self.accelerator.device)
        for name, rows in parts:
            if (rows & ~trained).any():  # no gradient, but their entropy is a diagnostic: a forward only
                with torch.no_grad():
                    self._compute_loss(model, _select(inputs, rows & ~trained))
            if self.split_grad_norms and rows.any() and not (rows & trained).any():
                self._metrics["train"][f"{name}/grad_norm"].append(0.0)  # every row's advantage is 0
            rows = rows & trained
            if not rows.any():
                continue
            earlier = [p.grad for p in params]  # set aside, so .grad holds this part's gradient alone
            for p in params:
                p.grad = None
            loss = self._compute_loss(model, _select(inputs, rows)) * self._part_share(inputs, rows)
            self.accelerator.backward(loss)
            if self.split_grad_norms:
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
        # kept for the metrics (and the off-policy loss) of the loss TRL just computed: TRL's
        # _compute_loss returns the loss alone, and a second forward pass would double the cost
        self._last_forward = super()._get_per_token_logps_and_entropies(*args, **kwargs)
        return self._last_forward

    def _compute_loss(self, model, inputs):
        loss = super()._compute_loss(model, inputs)
        entropies = self._last_forward[1]
        own = self._own_tokens(inputs)
        mode = "train" if self.model.training else "eval"
        for name, rows in _parts(inputs):
            self._log_mean(mode, f"{name}/entropy", entropies, own & rows[:, None])
        return loss

    def _own_tokens(self, inputs) -> torch.Tensor:
        """The tokens the policy sampled itself (offpolicy.py leaves the traces out)."""
        return inputs["completion_mask"].bool()

    def _log_mean(self, mode: str, name: str, values: torch.Tensor, mask: torch.Tensor) -> None:
        """Log the mean of values[mask] over every process's rows. A collective: every process calls
        it, whether or not it holds such rows."""
        local = torch.stack([values[mask].sum(), mask.sum()]).float()
        total, count = self.accelerator.reduce(local, reduction="sum").tolist()
        if count:
            self._metrics[mode][name].append(total / count)

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
