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


@pytest.mark.parametrize("name", ["sort", "chain"])
def test_shipped_base_model_reproduces_its_pass_rates(name):
    torch.set_num_threads(1)
    path = resolve_model(f"builtin:{name}")
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    task = load_task(name)
    sampler = HFSampler(model, tokenizer, SamplingParams(temperature=1.0, max_new_tokens=128, batch_size=512))

    easy = task.problems("easy")[:16]
    samples = sampler.generate([p.prompt for p in easy], 32, seed=0)
    rate = np.mean([task.verify(p, s.text).reward for p, group in zip(easy, samples) for s in group])
    chance = np.mean([task.chance(p) for p in easy])
    assert 0.5 * chance <= rate <= 2.0 * chance, (rate, chance)

    hard = task.problems("train")[:8]
    samples = sampler.generate([p.prompt for p in hard], 32, seed=0)
    assert sum(task.verify(p, s.text).reward for p, group in zip(hard, samples) for s in group) <= 1


def test_unknown_builtin_model_names_the_shipped_ones():
    with pytest.raises(ValueError, match="sort"):
        resolve_model("builtin:nope")
