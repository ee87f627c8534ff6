"""The off-policy baselines `offpolicy-is` and `luffy` (not PrefixRL: it never trains on a trace's
tokens). A correct trace joins each on-policy group in place of its last sample: scored and
baselined like the others, but its tokens are weighted by the method's own rule (`_trace_loss`),
since the policy did not sample them.

    offpolicy-is: -A · min(pi/mu, c) · log pi   (truncated importance weight, mu the behaviour policy)
    luffy:        -A · pi / (pi + gamma)         (LUFFY's policy shaping, Yan et al. 2025)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from prefixrl.flops import FlopsLedger
from prefixrl.models import encode_prompt, load_model, n_params, sequence_logprobs
from prefixrl.objective import reinforce_loss
from prefixrl.prefixes import render_prompt
from prefixrl.tasks import Problem
from prefixrl.trainer import PrefixRLTrainer

if TYPE_CHECKING:
    from prefixrl.train import TrainConfig


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


class OffPolicyTrainer(PrefixRLTrainer):
    """PrefixRLTrainer with `off_policy`'s trace in place of each group's last sample (during
    training; evaluation samples the policy alone)."""

    def __init__(self, *args, off_policy: OffPolicyTraces, **kwargs):
        super().__init__(*args, **kwargs)
        self.off_policy = off_policy
        self._batch_inputs, self._discarded_tokens = [], 0

    def _generate_and_score_completions(self, inputs):
        # _generate sees only the prompts: it reads the batch's problem ids from here
        self._batch_inputs, self._discarded_tokens = inputs, 0
        out = super()._generate_and_score_completions(inputs)
        out.update(self._off_policy_columns(inputs, out["completion_ids"].shape[1]))
        return out

    def _replaced_tokens(self) -> int:
        return self._discarded_tokens

    def _generate(self, prompts):
        """TRL's sampling (transformers or vLLM: both go through here), then the off-policy baselines'
        trace in place of each group's last sample."""
        result = super()._generate(prompts)
        if not self.model.training:
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

    def _compute_loss(self, model, inputs):
        """TRL's objective on the policy's own samples, the method's weighted one on the traces."""
        off = inputs["off_policy"]
        loss = super()._compute_loss(model, {**inputs, "advantages": inputs["advantages"] * ~off})
        return loss + self._trace_loss(self._last_forward[0], inputs, off)

    def _own_tokens(self, inputs) -> torch.Tensor:
        return inputs["completion_mask"].bool() & ~inputs["off_policy"][:, None]

    def _trace_loss(self, logps, inputs, off):
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
        return reinforce_loss(surrogate, inputs["advantages"], mask, self.max_completion_length,
                              self.current_gradient_accumulation_steps)


def off_policy_traces(model_path: str, traces: list[dict], problems: dict[str, Problem], weight: str,
                      cfg: TrainConfig, ledger: FlopsLedger) -> OffPolicyTraces:
    """One trace per problem (its first), in the policy's tokens with <eos>, and the behaviour
    policy's log-probs of its tokens: those recorded at collection when the policy tokenizes the
    trace exactly as the sampler did; otherwise (imported traces, another tokenizer) the starting
    policy's own log-probs (at the rollout temperature, as TRL scores the policy) stand in for the
    unknown behaviour policy, at the charge of one forward pass (pi/mu then starts at 1, as if the
    policy had sampled the trace)."""
    model, tokenizer = load_model(model_path, device="cpu")
    token_ids, logprobs = {}, {}
    for trace in traces:
        pid = trace["problem_id"]
        if pid in token_ids:
            continue
        ids = tokenizer(trace["completion"], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        if len(ids) > cfg.max_completion_length:
            raise ValueError(f"the trace for problem {pid!r} has {len(ids)} tokens, more than "
                             f"max_completion_length={cfg.max_completion_length}: raise it, or drop the trace")
        recorded = trace.get("logprobs")
        if recorded and list(trace.get("token_ids") or []) == ids and len(recorded) == len(ids):
            logprobs[pid] = list(recorded)
        else:
            prompt = render_prompt(tokenizer, problems[pid].prompt)  # the unprefixed row's, as the trainer's
            logprobs[pid] = sequence_logprobs(model, tokenizer, prompt, ids, cfg.temperature)
            ledger.add("behaviour_forward", n_params=n_params(model),
                       inference_tokens=len(encode_prompt(tokenizer, prompt)) + len(ids))
        token_ids[pid] = ids
    return OffPolicyTraces(weight=weight, token_ids=token_ids, behaviour_logprobs=logprobs,
                           is_truncation=cfg.is_truncation, luffy_gamma=cfg.luffy_gamma)
