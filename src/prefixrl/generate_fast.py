"""A lean CPU decode loop for the small decoder models (Llama, Qwen2, Qwen3 configs): `FastSampler`.

Why it exists: at the shipped tiny models' size (about 0.6 M parameters) a transformers forward
spends most of its time in per-call overhead (mask building, cache objects, module dispatch), not in
arithmetic: `model.generate` reached 9-17 GFLOP/s where GEMMs at the model's shapes reach ~56.
This loop does the same arithmetic with a few tensor ops per layer: a KV cache grown in blocks and
attended as one contiguous block, the q/k/v and gate/up projections fused into one GEMM each, rows
dropped once their sample has ended, each distinct prompt prefilled once for all its samples, and
(for samples that are only scored) rows stopped once the task says they can no longer be correct. Measured by `benchmarks/sampling.py` (chain model, 4 problems
x 256 samples, batch 256, one thread): 2.1x the samples/s of `model.generate` and 1.9x a bare
decode loop over the transformers forward, with identical samples (README "Benchmarks").

It reads the model's own weights from the Hugging Face module at every `generate` call (training
changes them), and implements the `Sampler` protocol exactly as `HFSampler` does: the same prompt
token ids, left padding and position ids, temperature then top-p, one `torch.multinomial` draw per
step over the whole batch from the seed, and the behaviour log-probs of the temperature-scaled
(top-p filtered) distribution. Its logits match the transformers forward to ~1e-6
(tests/test_generate_fast.py); with the same seed it draws the same samples as `HFSampler` except
where a uniform draw lands within float rounding of a token boundary (rare, not never).

Architectures outside what it implements are refused with `UnsupportedModel` (which names the
reason); `sampler_for(..., backend="auto")` then falls back to `HFSampler`, the library path, which
stays one option away (`--backend hf`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from prefixrl.generate import Sample, SamplingParams
from prefixrl.models import encode_prompt, n_params

SUPPORTED_TYPES = ("llama", "qwen2", "qwen3")
STATIC_ROPE = ("default", "linear", "llama3")  # inv_freq fixed at load: a table of cos/sin is exact
GROW = 32  # KV-cache positions added at a time


class UnsupportedModel(ValueError):
    """The model is not one this decode loop implements (the message says which property)."""


def check_supported(model) -> None:
    """Raise UnsupportedModel unless `model` is a plain Llama / Qwen2 / Qwen3 causal LM this loop
    computes exactly (SwiGLU with SiLU, RMSNorm, static RoPE, full attention, no tensor parallelism)."""
    config = model.config
    kind = getattr(config, "model_type", None)
    problems = []
    if kind not in SUPPORTED_TYPES:
        problems.append(f"model_type {kind!r} (supported: {', '.join(SUPPORTED_TYPES)})")
    else:
        if getattr(config, "hidden_act", "silu") != "silu":
            problems.append(f"hidden_act {config.hidden_act!r} (only silu)")
        rope = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        if rope_type not in STATIC_ROPE:
            problems.append(f"rope_type {rope_type!r} (supported: {', '.join(STATIC_ROPE)})")
        if any(t != "full_attention" for t in getattr(config, "layer_types", None) or []):
            problems.append("sliding-window attention layers")
        if getattr(config, "pretraining_tp", 1) != 1:
            problems.append(f"pretraining_tp {config.pretraining_tp}")
        if getattr(model, "hf_quantizer", None) is not None:
            problems.append("a quantized model")
    if problems:
        raise UnsupportedModel(f"the fast CPU sampler does not implement {type(model).__name__} with "
                               f"{'; '.join(problems)}: use --backend hf")


@dataclass
class _Layer:
    """One decoder layer's weights, q/k/v and gate/up concatenated so each is one GEMM."""

    in_norm: torch.Tensor
    qkv_w: torch.Tensor
    qkv_b: torch.Tensor | None
    qk_norm: torch.Tensor | None  # Qwen3: per-head RMSNorm weights of q then k, [H + Hkv, head_dim]
    o_w: torch.Tensor
    o_b: torch.Tensor | None
    post_norm: torch.Tensor
    gate_up_w: torch.Tensor
    gate_up_b: torch.Tensor | None
    down_w: torch.Tensor
    down_b: torch.Tensor | None


def _cat_bias(*modules) -> torch.Tensor | None:
    biases = [m.bias for m in modules]
    if all(b is None for b in biases):
        return None
    return torch.cat([b if b is not None else m.weight.new_zeros(m.out_features) for m, b in zip(modules, biases)])


class Decoder:
    """The model's forward with a preallocated KV cache: `prefill` the left-padded prompts, then
    `step` one token per row. Shapes: B rows, P prompt positions, H query heads, Hkv key/value heads."""

    def __init__(self, model):
        check_supported(model)
        config, body = model.config, model.model
        self.heads, self.kv_heads = config.num_attention_heads, config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.heads
        self.eps = config.rms_norm_eps
        self.embed = body.embed_tokens.weight
        self.norm, self.lm_head = body.norm.weight, model.lm_head.weight
        self.lm_head_b = model.lm_head.bias
        self.rotary = body.rotary_emb
        self.layers = []
        for layer in body.layers:
            a, m = layer.self_attn, layer.mlp
            qk_norm = None
            if hasattr(a, "q_norm"):
                qk_norm = torch.cat([a.q_norm.weight.expand(self.heads, -1), a.k_norm.weight.expand(self.kv_heads, -1)])
            self.layers.append(_Layer(
                in_norm=layer.input_layernorm.weight, post_norm=layer.post_attention_layernorm.weight,
                qkv_w=torch.cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight]),
                qkv_b=_cat_bias(a.q_proj, a.k_proj, a.v_proj), qk_norm=qk_norm, o_w=a.o_proj.weight, o_b=a.o_proj.bias,
                gate_up_w=torch.cat([m.gate_proj.weight, m.up_proj.weight]),
                gate_up_b=_cat_bias(m.gate_proj, m.up_proj),
                down_w=m.down_proj.weight, down_b=m.down_proj.bias))

    def start(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Allocate the cache and run the prompts: the last position's logits [B, V] (float32).
        Identical rows (the n samples of one prompt, as every caller sends them) are run once and
        share their cache: a GRPO batch of 16 prompts x 8 fills its cache for 1/8 of the cost."""
        rows, inverse = torch.unique(torch.cat([input_ids, attention_mask], 1), dim=0, return_inverse=True)
        if len(rows) == len(input_ids):
            return self._prefill(input_ids, attention_mask)
        logits = self._prefill(*rows.long().split(input_ids.shape[1], dim=1))
        self.keep(inverse)
        return logits[inverse]

    def _prefill(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        batch, prompt = input_ids.shape
        # zeros, not empty: every step attends over the whole cache (see _step_attention), and a
        # masked NaN from uninitialised memory would still poison the softmax
        self.k_cache = self.embed.new_zeros((len(self.layers), batch, self.kv_heads, prompt + GROW, self.head_dim))
        self.v_cache = torch.zeros_like(self.k_cache)
        # positions as generate() gives them: the first real token of each left-padded row is 0
        positions = (attention_mask.long().cumsum(1) - 1).clamp(min=0)
        self.next_position = positions[:, -1] + 1
        valid = attention_mask.bool()
        # the steps' additive attention mask [B, 1, 1, cache positions]: 0 on the prompts' tokens and the
        # generated ones, -inf on padding and positions not written yet
        self.bias = self.embed.new_full((batch, 1, 1, prompt + GROW), float("-inf"))
        self.bias[:, 0, 0, :prompt].masked_fill_(valid, 0.0)
        self.length = prompt
        cos, sin = self._rope(positions)
        # causal and not padding; each position also sees itself, so a padding row's softmax is defined
        causal = torch.ones(prompt, prompt, dtype=torch.bool, device=input_ids.device).tril()
        mask = (causal & valid[:, None]) | torch.eye(prompt, dtype=torch.bool, device=input_ids.device)
        x = F.embedding(input_ids, self.embed)
        for i, layer in enumerate(self.layers):
            x = x + self._prefill_attention(i, layer, x, cos, sin, mask[:, None])
            x = x + self._mlp(layer, x)
        return self._logits(x[:, -1])

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """Feed one token per row [B] at the next position; its logits [B, V] (float32)."""
        t = self.length
        if t == self.bias.shape[-1]:  # the cache is full: GROW more positions
            self.k_cache, self.v_cache = (F.pad(c, (0, 0, 0, GROW)) for c in (self.k_cache, self.v_cache))
            self.bias = F.pad(self.bias, (0, GROW), value=float("-inf"))
        self.bias[..., t] = 0.0  # generate() extends the attention mask with ones, finished rows too
        cos, sin = self._rope(self.next_position[:, None])
        x = F.embedding(tokens[:, None], self.embed)
        for i, layer in enumerate(self.layers):
            x = x + self._step_attention(i, layer, x, cos, sin, self.bias)
            x = x + self._mlp(layer, x)
        self.length += 1
        self.next_position = self.next_position + 1
        return self._logits(x[:, -1])

    def keep(self, rows: torch.Tensor) -> None:
        """Keep only these of the current rows (indices, repeats allowed): the others' samples have ended."""
        self.k_cache, self.v_cache = self.k_cache[:, rows], self.v_cache[:, rows]
        self.bias, self.next_position = self.bias[rows], self.next_position[rows]

    # -- pieces ------------------------------------------------------------------------------------
    def _rope(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos [B, T, 1, d] and sin with rotate_half's sign folded in, from the model's own rotary module."""
        cos, sin = self.rotary(self.embed, positions)
        half = self.head_dim // 2
        sin = torch.cat([-sin[..., :half], sin[..., half:]], dim=-1)
        return cos[:, :, None], sin[:, :, None]

    def _qkv(self, layer: _Layer, x, cos, sin):
        """q [B, T, H, d], k and v [B, T, Hkv, d], RoPE applied to q and k in one go."""
        h = F.rms_norm(x, (x.shape[-1],), layer.in_norm, self.eps)
        qkv = F.linear(h, layer.qkv_w, layer.qkv_b).unflatten(-1, (-1, self.head_dim))
        qk, v = qkv[:, :, :self.heads + self.kv_heads], qkv[:, :, self.heads + self.kv_heads:]
        if layer.qk_norm is not None:
            qk = F.rms_norm(qk, (self.head_dim,), None, self.eps) * layer.qk_norm
        half = self.head_dim // 2
        qk = qk * cos + torch.cat([qk[..., half:], qk[..., :half]], dim=-1) * sin
        return qk[:, :, :self.heads], qk[:, :, self.heads:], v

    def _prefill_attention(self, i, layer, x, cos, sin, mask):
        q, k, v = self._qkv(layer, x, cos, sin)
        prompt = x.shape[1]
        self.k_cache[i, :, :, :prompt] = k.transpose(1, 2)
        self.v_cache[i, :, :, :prompt] = v.transpose(1, 2)
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask,
                                             enable_gqa=self.heads != self.kv_heads)
        return F.linear(out.transpose(1, 2).flatten(2), layer.o_w, layer.o_b)

    def _step_attention(self, i, layer, x, cos, sin, bias):
        q, k, v = self._qkv(layer, x, cos, sin)
        t = self.length
        self.k_cache[i, :, :, t] = k[:, 0]
        self.v_cache[i, :, :, t] = v[:, 0]
        # over the whole cache, the positions not written yet masked: a slice [:t + 1] is strided, and
        # torch's batched matmul then runs one small GEMM per row and head, ~3x slower at these sizes
        # (the cache grows GROW positions at a time, so at most GROW - 1 of them are masked)
        keys, values = self.k_cache[i], self.v_cache[i]
        # grouped-query attention without repeating k/v: each kv head's query group is one matmul
        q = q[:, 0].unflatten(1, (self.kv_heads, -1))  # [B, Hkv, G, d]
        scores = torch.matmul(q, keys.transpose(-1, -2)).mul_(self.head_dim ** -0.5).add_(bias)
        out = torch.matmul(scores.softmax(-1), values)  # [B, Hkv, G, d]: heads in the model's order
        return F.linear(out.flatten(1)[:, None], layer.o_w, layer.o_b)

    def _mlp(self, layer, x):
        h = F.rms_norm(x, (x.shape[-1],), layer.post_norm, self.eps)
        gate, up = F.linear(h, layer.gate_up_w, layer.gate_up_b).chunk(2, dim=-1)
        return F.linear(F.silu(gate) * up, layer.down_w, layer.down_b)

    def _logits(self, x):
        return F.linear(F.rms_norm(x, (x.shape[-1],), self.norm, self.eps), self.lm_head, self.lm_head_b).float()


def _top_p(scores: torch.Tensor, top_p: float) -> torch.Tensor:
    """transformers' TopPLogitsWarper: drop the least likely tokens whose mass is within 1 - top_p."""
    ordered, order = torch.sort(scores, descending=False)
    remove = ordered.softmax(-1).cumsum(-1) <= 1 - top_p
    remove[..., -1:] = False
    return scores.masked_fill(remove.scatter(1, order, remove), float("-inf"))


CHECK_EVERY = 8  # generated tokens between two early-rejection checks (a check decodes every live row)


@torch.inference_mode()
def sample(decoder: Decoder, input_ids: torch.Tensor, attention_mask: torch.Tensor, params: SamplingParams,
           eos_ids: list[int], pad_id: int, dead_end=None) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """Sample continuations of left-padded prompts as transformers' generate() does (temperature,
    then top-p, then one multinomial draw per step over the whole batch from the global RNG; rows
    that ended are given `pad_id`), until every row has an <eos> or max_new_tokens. Returns the
    generated ids [B, T], each token's log-prob under the temperature-scaled distribution [B, T], and
    each row's length (its <eos> included, or where it stopped).

    Early rejection: `dead_end(rows, ids)` (optional) is asked every CHECK_EVERY tokens about the
    rows still running, with their tokens so far; a row it answers True for stops there, as an ended
    one does. Only for samples that are scored, never trained on: the task promises no continuation
    of a dead end is correct (Task.dead_end), so a stopped row loses nothing but compute.

    Rows that ended leave the decoder once they are a quarter of its rows, and their logits are
    zeros from then on: the draw still covers the whole batch, so it consumes the RNG as generate()'s
    does (multinomial's exponential noise is drawn for every entry, whatever the values) and every
    live row gets the token generate() would give it, whichever rows stopped early."""
    logits = decoder.start(input_ids, attention_mask)
    eos = torch.tensor(eos_ids, device=logits.device)
    finished = torch.zeros(len(input_ids), dtype=torch.bool, device=logits.device)
    lengths = [0] * len(input_ids)
    live = torch.arange(len(input_ids), device=logits.device)  # the batch rows the decoder computes
    tokens, logprobs = [], []
    for step in range(params.max_new_tokens):
        scores = logits / params.temperature  # the behaviour policy
        if params.top_p < 1:
            scores = _top_p(scores, params.top_p)
        chosen = torch.multinomial(scores.softmax(-1), 1).squeeze(1).masked_fill(finished, pad_id)
        tokens.append(chosen)
        logprobs.append(scores.log_softmax(-1).gather(1, chosen[:, None]).squeeze(1))
        running = ~finished
        finished |= torch.isin(chosen, eos)
        if dead_end is not None and (step + 1) % CHECK_EVERY == 0:
            _reject(dead_end, finished, tokens)
        for row in (running & finished).nonzero().squeeze(1).tolist():
            lengths[row] = step + 1
        if finished.all() or step == params.max_new_tokens - 1:
            break
        if 4 * finished[live].sum() >= len(live):
            kept = (~finished[live]).nonzero().squeeze(1)
            decoder.keep(kept)
            live = live[kept]
        logits = decoder.step(chosen[live])
        if len(live) < len(finished):
            logits = logits.new_zeros(len(finished), logits.shape[1]).index_copy_(0, live, logits)
    lengths = [n or len(tokens) for n in lengths]  # rows that never ended ran to the last step
    return torch.stack(tokens, 1), torch.stack(logprobs, 1), lengths


def _reject(dead_end, finished: torch.Tensor, tokens: list[torch.Tensor]) -> None:
    """Mark as finished the running rows that `dead_end` says can no longer be correct."""
    rows = (~finished).nonzero().squeeze(1)
    if len(rows):
        ids = torch.stack(tokens, 1)[rows].tolist()
        stop = torch.tensor(dead_end(rows.tolist(), ids), dtype=torch.bool)
        finished[rows[stop]] = True


class FastSampler:
    """`Sampler` over `Decoder`: HFSampler's samples, seeds and log-probs without transformers' forward."""

    def __init__(self, model, tokenizer, params: SamplingParams | None = None):
        check_supported(model)
        self.model, self.tokenizer = model, tokenizer
        self.params = params or SamplingParams()
        self.n_params = n_params(model)

    @torch.inference_mode()
    def generate(self, prompts: list[str], n: int, seed: int, dead_end=None) -> list[list[Sample]]:
        """n samples per prompt (the Sampler protocol). dead_end(prompt index, text so far) -> True
        stops a sample early once it can no longer be correct (early rejection; see `sample`)."""
        decoder = Decoder(self.model)  # this call's weights: training changes them between calls
        flat = [i for i in range(len(prompts)) for _ in range(n)]
        out: list[Sample] = []
        for start in range(0, len(flat), self.params.batch_size):
            rows = flat[start:start + self.params.batch_size]
            out.extend(self._generate_batch(decoder, [prompts[i] for i in rows], seed + start,
                                            self._rejecter(dead_end, rows)))
        return [out[i * n:(i + 1) * n] for i in range(len(prompts))]

    def _rejecter(self, dead_end, prompt_of_row: list[int]):
        """`sample`'s dead_end over token ids, from the caller's over (prompt index, text)."""
        if dead_end is None:
            return None
        decode = self.tokenizer.decode
        return lambda rows, ids: [dead_end(prompt_of_row[r], decode(t, skip_special_tokens=True))
                                  for r, t in zip(rows, ids)]

    def _generate_batch(self, decoder: Decoder, prompts: list[str], seed: int, dead_end=None) -> list[Sample]:
        tok = self.tokenizer
        enc = tok.pad({"input_ids": [encode_prompt(tok, text) for text in prompts]},
                      padding_side="left", return_tensors="pt").to(self.model.device)
        torch.manual_seed(seed)
        new_tokens, logprobs, lengths = sample(decoder, enc["input_ids"], enc["attention_mask"], self.params,
                                               [tok.eos_token_id], tok.pad_token_id, dead_end)
        samples = []
        for row, n_prompt, row_logprobs, length in zip(new_tokens.tolist(), enc["attention_mask"].sum(1).tolist(),
                                                       logprobs.tolist(), lengths):
            ids = row[:length]
            samples.append(Sample(text=tok.decode(ids, skip_special_tokens=True), token_ids=ids,
                                  prompt_tokens=n_prompt, logprobs=row_logprobs[:length]))
        return samples


@torch.inference_mode()
def rollout_ids(model, prompt_ids: list[list[int]], params: SamplingParams, eos_ids: list[int], pad_id: int
                ) -> list[list[int]]:
    """TRL's regular-generation rollouts (GRPOTrainer._generate_single_turn) through `sample`: each
    prompt's completion ids up to and including its first <eos>. The same global RNG stream as
    TRL's `model.generate`, so a seeded run draws the same samples up to float rounding."""
    rows = [torch.tensor(ids) for ids in prompt_ids]
    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, r in enumerate(rows):  # left padding, as TRL pads
        input_ids[i, width - len(r):], mask[i, width - len(r):] = r, 1
    device = model.device
    tokens, _, lengths = sample(Decoder(model), input_ids.to(device), mask.to(device), params, eos_ids, pad_id)
    return [row[:length] for row, length in zip(tokens.tolist(), lengths)]
