"""Models and tokenizers: any Hugging Face causal LM, and the tiny offline ones built here.

One code path serves a 0.5 M-parameter toy and an 8 B model: everything downstream takes a
`transformers` model and tokenizer. The tiny ones are a `LlamaConfig` model and a character-level
`PreTrainedTokenizerFast` built offline from a `tokenizers` object, so nothing is fetched from a hub.
"""

from __future__ import annotations

import json
import string
from dataclasses import asdict
from pathlib import Path

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
from prefixrl.config import TinyModelConfig

SPECIAL_TOKENS = {"pad_token": "<pad>", "eos_token": "<eos>", "unk_token": "<unk>", "bos_token": "<bos>"}
CHARS = string.printable.replace("\x0b", "").replace("\x0c", "").replace("\r", "")


def char_tokenizer() -> PreTrainedTokenizerFast:
    """A character-level tokenizer over printable ASCII: any task text round-trips exactly."""
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS.values())}
    for ch in CHARS:
        vocab.setdefault(ch, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token=SPECIAL_TOKENS["unk_token"]))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"(?m)."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=tok, **SPECIAL_TOKENS, padding_side="left")


def bpe_tokenizer(texts: list[str], vocab_size: int = 384) -> PreTrainedTokenizerFast:
    """A byte-level BPE (GPT-2's pre-tokenizer) learned from `texts`: another tokenizer family for
    the tiny models, whose tokens span several characters, so traces written with it must be re-cut
    in the policy's tokens. GPT-2's word split keeps a prompt's last token ("14:" -> ":") from
    merging with the completion's first (" Q"), which sampling would never see merged."""
    tok = Tokenizer(models.BPE(unk_token=SPECIAL_TOKENS["unk_token"]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS.values()), show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=tok, **SPECIAL_TOKENS, padding_side="left")


def tiny_model(tokenizer, cfg: TinyModelConfig | None = None, seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                         eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id,
                         tie_word_embeddings=True, **asdict(cfg or TinyModelConfig()))
    return LlamaForCausalLM(config)


def load_model(path: str, device: str | None = None, dtype: torch.dtype | None = None):
    """Load a saved model and its tokenizer (a local folder or, where allowed, a hub name)."""
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:  # many chat models ship none; left padding needs one
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype or torch.float32)
    model.to(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    return model.eval(), tokenizer


def n_params(model) -> int:
    """N in the FLOPs formulas: non-embedding parameters are the usual choice, but the tiny models'
    embedding is a large share of them, so count all (a slight over-estimate for big models).
    DeepSpeed ZeRO-3 leaves each process an empty placeholder: its `ds_numel` is the full size."""
    return sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters())


def encode_prompt(tokenizer, prompt: str) -> list[int]:
    """The token ids of a rendered prompt (`prefixes.render_prompt`), the same for every sampler,
    the trainer and the SFT stage. A chat-rendered prompt already holds every special token its
    template writes (Llama-3's <|begin_of_text|>), so none is added, as `apply_chat_template` does
    when it tokenizes; a base model's prompt gets the tokenizer's own (a BOS, if it adds one).
    Either way the BOS comes once."""
    chat = bool(getattr(tokenizer, "chat_template", None))
    return tokenizer(prompt, add_special_tokens=not chat)["input_ids"]


@torch.no_grad()
def sequence_logprobs(model, tokenizer, prompt: str, ids: list[int], temperature: float = 1.0) -> list[float]:
    """log p(ids | prompt) per token under `model` at `temperature`; `prompt` is a rendered one."""
    prompt_ids = encode_prompt(tokenizer, prompt)
    input_ids = torch.tensor([prompt_ids + ids], device=model.device)
    logits = model(input_ids=input_ids).logits[0, len(prompt_ids) - 1:-1].float() / temperature
    return logits.log_softmax(-1).gather(-1, input_ids[0, len(prompt_ids):, None]).squeeze(-1).tolist()


def count_params_from_config(path: str) -> int:
    """N for a model that is not loaded in this process (e.g. served by vLLM): build it on the
    meta device, which allocates no memory."""
    from transformers import AutoConfig

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(path))
    return n_params(model)


CHECKPOINTS = Path(__file__).parent / "checkpoints"


def builtin_task(model: str) -> str | None:
    """The task a `builtin:NAME` model is shipped for: NAME when that is a built-in task (the
    `gambles` base is the `mines` model), else its manifest's (`builtin:chain-q` is a chain model);
    None for any other model, which says nothing about its task."""
    if not model.startswith("builtin:"):
        return None
    from prefixrl.tasks import builtin_tasks

    if model.removeprefix("builtin:") in builtin_tasks():
        return model.removeprefix("builtin:")
    manifest = Path(resolve_model(model)) / "manifest.json"
    return json.loads(manifest.read_text())["config"]["task"]


def resolve_model(name: str) -> str:
    """`builtin:TASK` names the base model shipped for a built-in task; anything else is a path
    or a hub name, passed through."""
    if name.startswith("builtin:"):
        path = CHECKPOINTS / name.removeprefix("builtin:")
        if not path.is_dir():
            shipped = sorted(p.name for p in CHECKPOINTS.iterdir()) if CHECKPOINTS.is_dir() else []
            raise ValueError(f"no shipped base model {name!r}; shipped: {shipped}. "
                             f"Train one with `prefixrl pretrain TASK --out DIR` and pass DIR.")
        return str(path)
    return name
