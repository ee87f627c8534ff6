"""generate_fast's decode loop computes the transformers forward (logits to 1e-5 on the same weights,
left-padded prompts of different lengths), samples as HFSampler does from the same seed, and refuses
the architectures it does not implement (auto falls back to transformers)."""

import pytest
import torch
from transformers import (DynamicCache, GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, Qwen2Config,
                          Qwen2ForCausalLM,
                          Qwen3Config, Qwen3ForCausalLM)

from prefixrl.generate import HFSampler, SamplingParams, make_sampler, sampler_for
from prefixrl.generate_fast import GROW, Decoder, FastSampler, UnsupportedModel, rollout_ids
from prefixrl.models import CHECKPOINTS, char_tokenizer, load_model

torch.set_num_threads(1)
TOK = char_tokenizer()
SIZE = dict(vocab_size=len(TOK), hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
            max_position_embeddings=128, pad_token_id=TOK.pad_token_id, eos_token_id=TOK.eos_token_id)
RANDOM = {  # each exercises a piece of the loop: GQA, biases, untied head, Qwen3's q/k norms
    "llama-gqa-bias": lambda: LlamaForCausalLM(LlamaConfig(**SIZE, num_key_value_heads=2, attention_bias=True,
                                                           mlp_bias=True, tie_word_embeddings=False)),
    "qwen2": lambda: Qwen2ForCausalLM(Qwen2Config(**SIZE, num_key_value_heads=2)),
    "qwen3": lambda: Qwen3ForCausalLM(Qwen3Config(**SIZE, num_key_value_heads=1, head_dim=16)),
}
SHIPPED = sorted(p.name for p in CHECKPOINTS.iterdir())


def random_model(name: str):
    torch.manual_seed(0)
    model = RANDOM[name]().eval()
    with torch.no_grad():  # non-trivial norms: ones would hide a weight read from the wrong module
        for param in model.parameters():
            if param.dim() == 1:
                param.normal_(1.0, 0.3)
    return model, TOK


def models():
    yield from ((name, *random_model(name)) for name in RANDOM)
    yield from ((name, *load_model(str(CHECKPOINTS / name), device="cpu")) for name in SHIPPED)


def left_padded(tokenizer, lengths: list[int]) -> dict:
    torch.manual_seed(1)
    ids = [torch.randint(4, len(tokenizer), (n,)).tolist() for n in lengths]
    return tokenizer.pad({"input_ids": ids}, padding_side="left", return_tensors="pt")


def transformers_cached_logits(model, enc, continuation) -> torch.Tensor:
    """The same positions' logits through transformers' own cached decoding, as generate() runs it."""
    mask, prompt = enc["attention_mask"], enc["input_ids"].shape[1]
    cache = DynamicCache(config=model.config)
    out = model(input_ids=enc["input_ids"], attention_mask=mask, position_ids=(mask.cumsum(1) - 1).clamp(min=0),
                cache=cache, use_cache=True)
    logits = [out.logits[:, -1]]
    for j in range(continuation.shape[1] - 1):
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
        out = model(input_ids=continuation[:, j:j + 1], attention_mask=mask, cache=cache, use_cache=True,
                    position_ids=mask.sum(1, keepdim=True) - 1)
        logits.append(out.logits[:, -1])
    return torch.stack(logits, 1)


def test_logits_match_the_transformers_forward():
    """Prefill then teacher-forced steps (past the first cache size) give, position by position, the
    logits of one transformers forward over prompt + continuation with generate()'s position ids:
    to 1e-5, or, where float32 rounding over 40 positions makes transformers' own cached decoding
    differ from its forward by more (4.6e-5 on the chain model), no further than that does. A wrong
    piece (a norm, a rotation, a mask) is off by 1e-2 or more."""
    for name, model, tok in models():
        enc = left_padded(tok, [7, 3, 12, 1])
        continuation = torch.randint(4, len(tok), (4, GROW + 4))  # past the first cache size
        with torch.inference_mode():
            decoder = Decoder(model)
            fast = [decoder.start(enc["input_ids"], enc["attention_mask"])]
            fast += [decoder.step(continuation[:, j]) for j in range(GROW + 3)]
            ids = torch.cat([enc["input_ids"], continuation], 1)
            mask = torch.cat([enc["attention_mask"], torch.ones_like(continuation)], 1)
            positions = (mask.cumsum(1) - 1).clamp(min=0)
            reference = model(input_ids=ids, attention_mask=mask, position_ids=positions).logits[:, 11:-1]
            cached = transformers_cached_logits(model, enc, continuation)
        floor = (cached - reference).abs().max().item()
        assert (torch.stack(fast, 1) - reference).abs().max().item() <= max(1e-5, 1.2 * floor), name


def ends_often(model, tok):
    """The model with a bias on the <eos> logit (p ~ 0.1 a step): its samples end at many different steps."""
    bias = torch.zeros(model.lm_head.out_features)
    bias[tok.eos_token_id] = 2.3
    model.lm_head.bias = torch.nn.Parameter(bias)
    return model, tok


@pytest.mark.parametrize("name", ["chain-q", "qwen3", "llama-ends-often"])
def test_same_seed_same_samples_as_hf_sampler(name):
    """Both samplers draw one multinomial per step over the whole batch from the seed (the fast one
    keeps drawing for rows that ended and left its decoder): with logits equal to float rounding
    they draw the same tokens, and the same behaviour log-probs (temperature 0.7, top-p 0.9: both
    warpers applied as generate() applies them)."""
    if name in SHIPPED:
        model, tok = load_model(str(CHECKPOINTS / name), device="cpu")
    else:
        model, tok = random_model(name.split("-")[0] if name == "qwen3" else "llama-gqa-bias")
        if name == "llama-ends-often":
            model, tok = ends_often(model, tok)
    params = SamplingParams(temperature=0.7, top_p=0.9, max_new_tokens=24, batch_size=16)
    prompts = ["3 1 2:", "a longer prompt 9 8 7:", "x"]
    hf = HFSampler(model, tok, params).generate(prompts, 8, seed=3)
    fast = FastSampler(model, tok, params).generate(prompts, 8, seed=3)
    pairs = [(a, b) for group_a, group_b in zip(hf, fast) for a, b in zip(group_a, group_b)]
    same = [(a, b) for a, b in pairs if a.token_ids == b.token_ids]
    assert len(same) >= 23 and any(len(a.token_ids) > 5 for a, _ in same)  # one near-tie allowed, none seen
    if name == "llama-ends-often":  # rows ended at many steps: the decoder dropped some mid-batch
        assert len({len(a.token_ids) for a, _ in pairs}) > 5
    for a, b in same:
        assert (a.text, a.prompt_tokens) == (b.text, b.prompt_tokens)
        assert b.logprobs == pytest.approx(a.logprobs, abs=1e-4)


def test_rollouts_are_cut_at_eos_as_trl_cuts_them():
    model, tok = ends_often(*random_model("qwen2"))
    torch.manual_seed(0)
    ids = rollout_ids(model, [[5, 6, 7], [8]] * 8, SamplingParams(max_new_tokens=10), [tok.eos_token_id],
                      tok.pad_token_id)
    ended = [row for row in ids if tok.eos_token_id in row]
    assert ended and len(ended) < len(ids)
    assert all(row.index(tok.eos_token_id) == len(row) - 1 for row in ended)
    assert all(len(row) == 10 for row in ids if row not in ended)


def unsupported():
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=len(TOK), n_embd=16, n_layer=1, n_head=2, n_positions=32))
    gelu = LlamaForCausalLM(LlamaConfig(**SIZE, hidden_act="gelu"))
    sliding = Qwen2ForCausalLM(Qwen2Config(**SIZE, use_sliding_window=True, sliding_window=4, max_window_layers=0))
    dynamic = LlamaForCausalLM(LlamaConfig(**SIZE, rope_parameters={"rope_type": "dynamic", "factor": 2.0,
                                                                    "rope_theta": 10000.0}))
    return [(gpt2, "model_type 'gpt2'"), (gelu, "hidden_act 'gelu'"), (sliding, "sliding-window"),
            (dynamic, "rope_type 'dynamic'")]


def test_unsupported_models_are_refused_and_auto_falls_back():
    params = SamplingParams(max_new_tokens=4)
    for model, reason in unsupported():
        with pytest.raises(UnsupportedModel, match=rf"{reason}.*--backend hf"):
            FastSampler(model, TOK, params)
        with pytest.raises(UnsupportedModel):
            sampler_for(model, TOK, params, backend="fast")
        assert type(sampler_for(model.eval(), TOK, params)) is HFSampler  # auto
    model, _ = random_model("qwen2")
    assert type(sampler_for(model, TOK, params)) is FastSampler
    assert type(sampler_for(model, TOK, params, backend="hf")) is HFSampler
    assert type(make_sampler(None, str(CHECKPOINTS / "sort"), SamplingParams(backend="hf"))) is HFSampler
    with pytest.raises(ValueError, match="backend must be one of auto, fast, hf, vllm"):
        SamplingParams(backend="fastest")
