"""The sft-rl baseline's SFT stage: the loss covers only the trace (and its <eos>), the shipped chain
model learns to reproduce its traces, the FLOPs ledger and manifest, skip and errors."""

import json
from types import SimpleNamespace

import pytest
import torch
from datasets import Dataset
from trl import SFTTrainer

import prefixrl.sft as sft_module
from conftest import solve_chain
from prefixrl.flops import FlopsLedger
from prefixrl.generate import HFSampler, SamplingParams
from prefixrl.models import TinyModelConfig, char_tokenizer, load_model, n_params, resolve_model, tiny_model
from prefixrl.prefixes import render_prompt
from prefixrl.sft import SFTStageConfig, sft, sft_config, sft_examples
from test_prefixes import CHATML, chat_tokenizer

torch.set_num_threads(1)
SMALL = TinyModelConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                        max_position_embeddings=256)


def chain_traces(task, k: int, start: int = 0):
    """Strategy-Q traces: the base model declares P (90% of its corpus), so it never writes these
    at low temperature (its P answers can be right: it follows P's rule at 3/5 of its moves)."""
    problems = task.problems("train")[start:start + k]
    return {p.id: p for p in problems}, [{"problem_id": p.id, "completion": solve_chain(p.prompt, "Q")}
                                         for p in problems]


@pytest.mark.parametrize("tok", [char_tokenizer(), chat_tokenizer(CHATML)], ids=["base", "chat"])
def test_loss_covers_only_the_trace_and_its_eos(tok, chain_task, tmp_path):
    problems, traces = chain_traces(chain_task, 2)
    examples = sft_examples(tok, traces, problems)
    trainer = SFTTrainer(model=tiny_model(tok, SMALL), args=sft_config(SFTStageConfig(), tmp_path),
                         train_dataset=Dataset.from_list(examples), processing_class=tok)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(len(traces))])
    for i, trace in enumerate(traces):
        prompt = render_prompt(tok, problems[trace["problem_id"]].prompt, "")
        assert prompt.startswith("<|im_start|>user\n") == (tok.chat_template is not None)  # chat models: the template
        prompt_ids = tok(prompt, add_special_tokens=False)["input_ids"]
        trace_ids = tok(trace["completion"], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        n = len(prompt_ids) + len(trace_ids)
        assert examples[i] == {"input_ids": prompt_ids + trace_ids,
                               "completion_mask": [0] * len(prompt_ids) + [1] * len(trace_ids)}
        assert batch["input_ids"][i][:n].tolist() == prompt_ids + trace_ids
        labels = batch["labels"][i].tolist()
        assert labels[:len(prompt_ids)] == [-100] * len(prompt_ids)  # the prompt is context only
        assert labels[len(prompt_ids):n] == trace_ids  # every trace token and the <eos> are trained
        assert all(label == -100 for label in labels[n:])  # padding


@pytest.fixture(scope="module")
def chain_sft(chain_task, tmp_path_factory):
    """The shipped chain model fine-tuned (default config) on 3 traces, with a prior stage's FLOPs."""
    problems, traces = chain_traces(chain_task, 3)
    prior = FlopsLedger()
    prior.add("collect", n_params=1000, inference_tokens=5000)
    out = tmp_path_factory.mktemp("sft")
    base = resolve_model("builtin:chain")
    model_dir = sft(chain_task, base, traces, problems, out, prior_flops=prior)
    return SimpleNamespace(problems=problems, traces=traces, prior=prior, out=out, base=base, model_dir=model_dir)


def low_temperature_samples(model_path, prompts):
    model, tok = load_model(model_path, device="cpu")
    sampler = HFSampler(model, tok, SamplingParams(temperature=0.1, max_new_tokens=128, batch_size=64))
    return [[s.text for s in group] for group in sampler.generate(prompts, 4, seed=0)]


def test_sft_makes_the_model_reproduce_its_traces(chain_sft, chain_task):
    prompts = [chain_sft.problems[t["problem_id"]].prompt for t in chain_sft.traces]
    before = low_temperature_samples(chain_sft.base, prompts)
    after = low_temperature_samples(chain_sft.model_dir, prompts)
    for trace, old, new in zip(chain_sft.traces, before, after):
        assert trace["completion"] not in old
        assert new == [trace["completion"]] * 4  # the whole trace, then <eos>
        assert chain_task.verify(chain_sft.problems[trace["problem_id"]], new[0]).reward == 1.0


def test_ledger_manifest_and_skip(chain_sft, chain_task, monkeypatch):
    cfg = SFTStageConfig()
    model, _ = load_model(str(chain_sft.model_dir), device="cpu")
    # char-level tokenizer: one token per character, plus the <eos>
    tokens = sum(len(chain_sft.problems[t["problem_id"]].prompt) + len(t["completion"]) + 1 for t in chain_sft.traces)
    stages = json.loads((chain_sft.out / "flops.json").read_text())["stages"]
    assert stages["collect"] == chain_sft.prior.stages["collect"]
    assert stages["sft"]["train_tokens"] == tokens * cfg.epochs
    assert stages["sft"]["flops"] == 6 * n_params(model) * tokens * cfg.epochs
    manifest = json.loads((chain_sft.out / "manifest.json").read_text())
    assert manifest["stage"] == "sft" and manifest["flops"] == sum(s["flops"] for s in stages.values())
    assert manifest["config"]["epochs"] == cfg.epochs and manifest["config"]["traces"] == 3

    def no_training(*args, **kwargs):
        raise AssertionError("a finished SFT stage trained again")

    monkeypatch.setattr(sft_module, "SFTTrainer", no_training)
    assert sft(chain_task, chain_sft.base, chain_sft.traces, chain_sft.problems, chain_sft.out) == chain_sft.model_dir


def test_sft_is_deterministic(chain_task, tmp_path):
    tok = char_tokenizer()
    tiny_model(tok, SMALL).save_pretrained(tmp_path / "tiny")
    tok.save_pretrained(tmp_path / "tiny")
    problems, traces = chain_traces(chain_task, 4)
    cfg = SFTStageConfig(epochs=2, batch_size=2)
    weights = []
    for run in ("a", "b", "c"):
        seeded = SFTStageConfig(epochs=2, batch_size=2, seed=1) if run == "c" else cfg
        path = sft(chain_task, str(tmp_path / "tiny"), traces, problems, tmp_path / run, seeded)
        weights.append(load_model(str(path), device="cpu")[0].state_dict())
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    assert not all(torch.equal(weights[0][k], weights[2][k]) for k in weights[0])  # the seed orders the batches


def test_unknown_problem_empty_traces_and_bad_config(chain_task, tmp_path):
    problems, traces = chain_traces(chain_task, 2)
    with pytest.raises(ValueError, match="chain-nope"):
        sft_examples(char_tokenizer(), traces + [{"problem_id": "chain-nope", "completion": " P =00."}], problems)
    with pytest.raises(ValueError, match="chain-nope"):
        sft(chain_task, resolve_model("builtin:chain"), [{"problem_id": "chain-nope", "completion": " P =00."}],
            problems, tmp_path)
    with pytest.raises(ValueError, match="no traces"):
        sft_examples(char_tokenizer(), [], problems)
    for bad in (dict(epochs=0), dict(batch_size=0), dict(lr=0.0)):
        with pytest.raises(ValueError, match="SFTStageConfig"):
            SFTStageConfig(**bad)


def test_sweep_keeps_the_candidate_best_on_validation(chain_task, tmp_path, monkeypatch):
    """The fair baseline: one run per lr scored after each of sweep_epochs passes on validation problems;
    the best (pass@1, then training loss) is the saved model, identical to a plain run of that lr and
    length; every candidate's training and validation sampling is charged; a rerun resumes from disk."""
    problems, traces = chain_traces(chain_task, 4)
    validation = chain_task.problems("easy")[:4]  # the base model solves some: candidates differ
    base = resolve_model("builtin:chain")
    prior = FlopsLedger()
    prior.add("collect", n_params=1000, inference_tokens=5000)
    cfg = SFTStageConfig(sweep_lr=[3e-4, "3e-3"], sweep_epochs=[2, 4], validation_n=8, validation_problems=4)
    params = SamplingParams(temperature=0.7, max_new_tokens=128)
    model_dir = sft(chain_task, base, traces, problems, tmp_path / "sweep", cfg, prior, validation, params)

    rows = [json.loads(line) for line in (tmp_path / "sweep" / "sweep.jsonl").read_text().splitlines()]
    assert sorted((r["lr"], r["epochs"]) for r in rows) == [(3e-4, 2), (3e-4, 4), (3e-3, 2), (3e-3, 4)]
    best = max(rows, key=lambda r: (r["validation_pass@1"], -r["train_loss"]))
    manifest = json.loads((tmp_path / "sweep" / "manifest.json").read_text())
    assert manifest["chosen"] == {k: best[k] for k in ("lr", "epochs", "validation_pass@1")}

    plain = sft(chain_task, base, traces, problems, tmp_path / "plain",
                SFTStageConfig(lr=best["lr"], epochs=best["epochs"]))
    chosen, rerun = (load_model(str(p), device="cpu")[0].state_dict() for p in (model_dir, plain))
    assert all(torch.equal(chosen[k], rerun[k]) for k in chosen)

    tokens = sum(len(problems[t["problem_id"]].prompt) + len(t["completion"]) + 1 for t in traces)
    stages = json.loads((tmp_path / "sweep" / "flops.json").read_text())["stages"]
    assert stages["collect"] == prior.stages["collect"]
    assert stages["sft"]["train_tokens"] == tokens * 4 * 2  # both lrs ran 4 passes
    assert stages["sft_validation"]["inference_tokens"] == sum(r["validation_tokens"] for r in rows) > 0

    # killed after the last candidate was logged, before the choice was moved into place: no retraining
    (tmp_path / "sweep" / "model").rename(tmp_path / "sweep" / "best")
    (tmp_path / "sweep" / "manifest.json").unlink()
    monkeypatch.setattr(sft_module, "SFTTrainer", lambda *a, **k: pytest.fail("a finished sweep trained again"))
    assert sft(chain_task, base, traces, problems, tmp_path / "sweep", cfg, prior, validation, params) == model_dir
    assert json.loads((tmp_path / "sweep" / "manifest.json").read_text())["chosen"] == manifest["chosen"]
    with pytest.raises(ValueError, match="validation"):
        sft(chain_task, base, traces, problems, tmp_path / "none", cfg, prior, None, params)
