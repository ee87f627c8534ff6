"""Batched sampling behind one small interface: `sampler.generate(prompts, n, max_new_tokens, seed)`.

Backends: `HFSampler` (transformers `generate` with the KV cache; CPU or GPU) here, `FastSampler`
in `generate_fast.py` (a lean decode loop for small Llama / Qwen models on CPU, the same samples in
distribution, ~2x faster) and `VLLMSampler` in `generate_vllm.py` when vLLM is installed.
`make_sampler` and `sampler_for` pick one by name; "auto" (the default) is the fast loop on CPU
where it supports the model, else transformers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
import logging
import zlib
from typing import Protocol

import torch

from prefixrl.config import BACKENDS, SamplingParams
from prefixrl.models import encode_prompt, n_params

logger = logging.getLogger(__name__)


@dataclass
class Sample:
    text: str  # the generated continuation, special tokens removed
    token_ids: list[int]  # generated token ids, <eos> included when the model stopped
    prompt_tokens: int  # tokens the model read before generating (prompt + any prefix)
    logprobs: list[float] = field(default_factory=list)  # behaviour log-probs of token_ids

    @property
    def tokens(self) -> int:
        """Tokens this sample cost at inference: D in 2·N·D (read + generated)."""
        return self.prompt_tokens + len(self.token_ids)


class Sampler(Protocol):
    n_params: int
    params: SamplingParams
    tokenizer: object  # the policy's: stages render prompts with its chat template (prefixes.render_prompt)

    def generate(self, prompts: list[str], n: int, seed: int, dead_end=None) -> list[list[Sample]]:
        """n samples for each rendered prompt, as a list (one entry per prompt) of n Samples.
        dead_end(prompt index, text so far) -> bool, optional: a sampler may stop a sample early once
        it is True (no continuation can be correct; `tasks.dead_end_of`). Only FastSampler does."""


class HFSampler:
    """Sampling with `model.generate` (KV cache on), `batch_size` sequences at a time."""

    def __init__(self, model, tokenizer, params: SamplingParams | None = None):
        self.model, self.tokenizer = model, tokenizer
        self.params = params or SamplingParams()
        self.n_params = n_params(model)

    @torch.no_grad()
    def generate(self, prompts: list[str], n: int, seed: int, dead_end=None) -> list[list[Sample]]:
        """dead_end is not used: transformers' generate computes every row to the end anyway."""
        flat = [p for p in prompts for _ in range(n)]
        out: list[Sample] = []
        for start in range(0, len(flat), self.params.batch_size):
            out.extend(self._generate_batch(flat[start:start + self.params.batch_size], seed + start))
        return [out[i * n:(i + 1) * n] for i in range(len(prompts))]

    def _generate_batch(self, prompts: list[str], seed: int) -> list[Sample]:
        p = self.params
        # the trainer's token ids for the same prompts (encode_prompt), left-padded
        enc = self.tokenizer.pad({"input_ids": [encode_prompt(self.tokenizer, text) for text in prompts]},
                                 padding_side="left", return_tensors="pt").to(self.model.device)
        torch.manual_seed(seed)
        result = self.model.generate(
            **enc, do_sample=True, temperature=p.temperature, top_p=p.top_p, top_k=0,
            max_new_tokens=p.max_new_tokens, pad_token_id=self.tokenizer.pad_token_id,
            eos_token_id=self.tokenizer.eos_token_id, return_dict_in_generate=True, output_scores=True,
        )
        new_tokens = result.sequences[:, enc["input_ids"].shape[1]:]
        # scores are the processed (temperature-scaled) logits: the behaviour policy that sampled
        logprobs = torch.stack(result.scores, dim=1).log_softmax(-1)
        token_logprobs = logprobs.gather(-1, new_tokens.unsqueeze(-1)).squeeze(-1)
        prompt_lengths = enc["attention_mask"].sum(1).tolist()
        samples = []
        for row, n_prompt, row_logprobs in zip(new_tokens.tolist(), prompt_lengths, token_logprobs.tolist()):
            length = _length_until_eos(row, self.tokenizer.eos_token_id)
            ids = row[:length]
            samples.append(Sample(text=self.tokenizer.decode(ids, skip_special_tokens=True), token_ids=ids,
                                  prompt_tokens=n_prompt, logprobs=row_logprobs[:length]))
        return samples


def _length_until_eos(row: list[int], eos_id: int) -> int:
    """Generated length with the <eos> counted (rows that finished early are padded after it)."""
    return row.index(eos_id) + 1 if eos_id in row else len(row)


def stable_seed(seed: int, key: str) -> int:
    """A per-item seed that is the same in every process (Python's hash() is salted)."""
    return (seed * 1_000_003 + zlib.crc32(key.encode())) % 2**31


def sampler_for(model, tokenizer, params: SamplingParams, backend: str | None = None) -> Sampler:
    """A sampler over a loaded model (backend: params.backend unless given; not vllm, which loads its own)."""
    backend = backend or params.backend
    if backend == "hf":
        return HFSampler(model, tokenizer, params)
    if backend not in ("auto", "fast"):
        raise ValueError(f"unknown generation backend {backend!r} for a loaded model: use 'auto', 'fast' or 'hf'")
    from prefixrl.generate_fast import FastSampler, UnsupportedModel

    if backend == "auto" and model.device.type != "cpu":  # GPUs: transformers (or vLLM), as before
        return HFSampler(model, tokenizer, params)
    try:
        return FastSampler(model, tokenizer, params)
    except UnsupportedModel as err:
        if backend == "fast":
            raise
        logger.info("sampling with transformers' generate: %s", err)
        return HFSampler(model, tokenizer, params)


def make_sampler(backend: str | None, model_path: str, params: SamplingParams, device: str | None = None) -> Sampler:
    """A sampler for the model at `model_path` (backend: params.backend unless given)."""
    backend = backend or params.backend
    if backend == "vllm":
        from prefixrl.generate_vllm import VLLMSampler

        return VLLMSampler(model_path, params)
    if backend not in BACKENDS:
        raise ValueError(f"unknown generation backend {backend!r}: use one of {', '.join(BACKENDS)}")
    from prefixrl.models import load_model

    model, tokenizer = load_model(model_path, device=device)
    return sampler_for(model, tokenizer, params, backend)
