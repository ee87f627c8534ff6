"""vLLM generation backend (GPU only; vllm 0.22-0.31, the versions TRL 1.16 supports).

vLLM has no CPU wheel for this stack, so this file is kept thin and imported only when asked for.
"""

from __future__ import annotations

from prefixrl.generate import Sample, SamplingParams
from prefixrl.models import count_params_from_config, encode_prompt


def import_vllm():
    """The vllm module, or an ImportError that says how to get it (shared by `--backend vllm` and
    training's `use_vllm`)."""
    try:
        import vllm
    except ImportError as err:
        raise ImportError(
            "vLLM is not installed: `--backend vllm` and training's `use_vllm` need it. On a CUDA machine, "
            "install vllm==0.31.0 (the newest TRL 1.16 supports) with the versions the README's 'On GPUs' "
            "section lists, or use `--backend hf` / `use_vllm: false`."
        ) from err
    return vllm


class VLLMSampler:
    """Sampling with vLLM's offline engine. Prompts go in as the token ids every sampler and the
    trainer use (`encode_prompt`), and log-probs are taken after temperature (`processed_logprobs`),
    as HFSampler's and TRL's are."""

    def __init__(self, model_path: str, params: SamplingParams, **llm_kwargs):
        vllm = import_vllm()
        self.params = params
        self.model_path = model_path  # what the run folders' identity hashes (runinfo.sampler_model)
        self.llm = vllm.LLM(model=model_path, **{"logprobs_mode": "processed_logprobs", **llm_kwargs})
        self.tokenizer = self.llm.get_tokenizer()
        self.n_params = count_params_from_config(model_path)
        self._vllm = vllm

    def generate(self, prompts: list[str], n: int, seed: int, dead_end=None) -> list[list[Sample]]:
        p = self.params
        sampling = self._vllm.SamplingParams(n=n, temperature=p.temperature, top_p=p.top_p,
                                             max_tokens=p.max_new_tokens, seed=seed, logprobs=0)
        # token ids, not text: vLLM would add special tokens to a chat-rendered prompt (a second BOS)
        token_prompts = [{"prompt_token_ids": encode_prompt(self.tokenizer, text)} for text in prompts]
        outputs = self.llm.generate(token_prompts, sampling, use_tqdm=False)
        return [[Sample(text=c.text, token_ids=list(c.token_ids), prompt_tokens=len(o.prompt_token_ids),
                        logprobs=[lp[t].logprob for t, lp in zip(c.token_ids, c.logprobs or [])])
                 for c in o.outputs] for o in outputs]
