"""The shipped base models load with plain transformers and reproduce their documented regime
(README, task table): on easy problems they succeed about as often as a policy that executes every
step right but chooses at random (the `chance` rate), and on hard ones almost never."""

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from prefixrl.generate import HFSampler, SamplingParams
from prefixrl.models import resolve_model
from prefixrl.tasks import load_task


def shipped(name: str) -> HFSampler:
    torch.set_num_threads(1)
    path = resolve_model(f"builtin:{name}")
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    return HFSampler(model, tokenizer, SamplingParams(temperature=1.0, max_new_tokens=128, batch_size=512))


@pytest.mark.parametrize("name, task_name, task_args", [("sort", "sort", {}), ("chain", "chain", {}),
                                                        ("chain-q", "chain", {"share_q": 0.9}),
                                                        ("mines", "mines", {"rule_bias": 0.2})])
def test_shipped_base_model_reproduces_its_pass_rates(name, task_name, task_args):
    # mines: its base follows the rule at 0.59 of its moves, rule_bias 0.2's chance rate (0.6), not
    # its last corpus's (rule_bias 0.4: 0.7)
    sampler, task = shipped(name), load_task(task_name, **task_args)

    easy = task.problems("easy")[:16]
    samples = sampler.generate([p.prompt for p in easy], 32, seed=0)
    rate = np.mean([task.verify(p, s.text).reward for p, group in zip(easy, samples) for s in group])
    chance = np.mean([task.chance(p) for p in easy])
    assert 0.5 * chance <= rate <= 2.0 * chance, (rate, chance)

    hard = task.problems("train")[:8]
    samples = sampler.generate([p.prompt for p in hard], 32, seed=0)
    assert sum(task.verify(p, s.text).reward for p, group in zip(hard, samples) for s in group) <= 1


def test_the_other_family_writes_strategy_q_in_its_own_tokens():
    """`chain-q`, the cross-family trace model, declares Q where `chain` declares P, and its
    tokenizer is a BPE whose tokens span several characters."""
    task = load_task("chain")
    prompts = [p.prompt for p in task.problems("easy")[:16]]
    for name, q_share in (("chain", (0.0, 0.3)), ("chain-q", (0.7, 1.0))):
        sampler = shipped(name)
        texts = [s.text for group in sampler.generate(prompts, 8, seed=0) for s in group]
        assert q_share[0] <= np.mean([" Q " in t for t in texts]) <= q_share[1], name
    assert len(sampler.tokenizer(texts[0])["input_ids"]) < 0.8 * len(texts[0])


def test_unknown_builtin_model_names_the_shipped_ones():
    with pytest.raises(ValueError, match="sort"):
        resolve_model("builtin:nope")
