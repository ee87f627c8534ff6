"""Stage 0: pretraining a task's base model, with either tokenizer family."""

from __future__ import annotations

import json

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from prefixrl.models import TinyModelConfig, bpe_tokenizer
from prefixrl.pretrain import PretrainConfig, pretrain
from prefixrl.tasks import load_task


def test_bpe_tokenizer_round_trips_and_keeps_the_prompt_boundary():
    """Its tokens span several characters, decoding gives the text back exactly, and a prompt's
    tokens are the start of prompt + completion's (sampling continues a prompt tokenized alone)."""
    pairs = load_task("chain").corpus(500, seed=0)
    tokenizer = bpe_tokenizer([p + c for p, c in pairs], vocab_size=384)
    for prompt, completion in pairs[:50]:
        ids = tokenizer(prompt + completion)["input_ids"]
        assert tokenizer.decode(ids) == prompt + completion
        assert len(ids) < 0.8 * len(prompt + completion)
        prompt_ids = tokenizer(prompt)["input_ids"]
        assert ids[:len(prompt_ids)] == prompt_ids


def test_pretrain_with_bpe_saves_a_model_of_another_family(tmp_path):
    shape = TinyModelConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
    out = pretrain(load_task("chain", share_q=0.9), tmp_path / "base",
                   PretrainConfig(steps=2, batch_size=4, seed=1, model=shape, tokenizer="bpe", bpe_vocab_size=300))
    tokenizer, model = AutoTokenizer.from_pretrained(out), AutoModelForCausalLM.from_pretrained(out)
    assert len(tokenizer) == model.config.vocab_size == 300
    assert (model.config.hidden_size, model.config.num_hidden_layers) == (32, 2)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config"]["tokenizer"] == "bpe" and manifest["config"]["task_args"]["share_q"] == 0.9
    # the ledger counts BPE tokens, not characters
    corpus = load_task("chain", share_q=0.9).corpus(8, seed=1)
    chars = sum(len(p) + len(c) + 1 for p, c in corpus)
    tokens = json.loads((out / "flops.json").read_text())["stages"]["pretrain"]["train_tokens"]
    assert tokens < 0.8 * chars


def test_pretrain_refuses_an_unknown_tokenizer():
    with pytest.raises(ValueError, match="'char' or 'bpe'"):
        PretrainConfig(tokenizer="wordpiece")


def test_pretrain_from_another_model_keeps_its_tokenizer_and_shape_and_starts_from_its_weights(tmp_path):
    """`init`: the new base starts from the given model (mines from chain's walk on digit pairs);
    its own corpus then moves the weights."""
    import torch

    shape = TinyModelConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
    first = pretrain(load_task("chain"), tmp_path / "first", PretrainConfig(steps=1, batch_size=4, model=shape))
    second = pretrain(load_task("mines"), tmp_path / "second",
                      PretrainConfig(steps=1, batch_size=4, lr=1e-12, init=str(first), seed=5))
    a, b = (AutoModelForCausalLM.from_pretrained(p) for p in (first, second))
    assert b.config.hidden_size == 32 and AutoTokenizer.from_pretrained(second).get_vocab() == \
        AutoTokenizer.from_pretrained(first).get_vocab()
    assert all(torch.allclose(x, y, atol=1e-6) for x, y in zip(a.parameters(), b.parameters()))
    assert json.loads((second / "manifest.json").read_text())["config"]["init"] == str(first)
