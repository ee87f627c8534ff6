"""vLLM without vLLM: the options that switch it on reach TRL, a missing vLLM is a clear error,
VLLMSampler maps vLLM's outputs to Samples (against a stand-in `vllm` module), and TRL's vLLM
rollout path still goes through PrefixRL's `_generate` (trace injection, FLOPs)."""

import math
import sys
import types
from types import SimpleNamespace

import pytest
import torch
from datasets import Dataset
from transformers import AutoTokenizer
from typer.testing import CliRunner

from conftest import solve_sort
from prefixrl.cli import app
from prefixrl.demo import DemoConfig
from prefixrl.files import write_jsonl
from prefixrl.flops import FlopsLedger
from prefixrl.generate import SamplingParams
from prefixrl.models import TinyModelConfig, char_tokenizer, encode_prompt, tiny_model
from prefixrl.pipeline import build_config
from prefixrl.prefixes import prefixed_problems
from prefixrl.offpolicy import OffPolicyTrainer, OffPolicyTraces
from prefixrl.train import TrainConfig, grpo_config, reward_function

torch.set_num_threads(1)
SMALL = TinyModelConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)


@pytest.fixture(scope="module")
def tok():
    return char_tokenizer()


@pytest.fixture(scope="module")
def model_dir(tok, tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny")
    tiny_model(tok, SMALL).save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture
def no_vllm(monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # `import vllm` raises ImportError, installed or not


# -- configuration ------------------------------------------------------------------------------------
def test_train_config_passes_vllm_and_memory_options_to_grpo(tmp_path):
    cfg = TrainConfig(use_vllm=True, vllm_mode="colocate", vllm_server_base_url="http://10.0.0.2:8001",
                      vllm_server_host="10.0.0.2", vllm_server_port=8001, vllm_gpu_memory_utilization=0.45,
                      vllm_tensor_parallel_size=2, gradient_checkpointing=True)
    args = grpo_config(cfg, tmp_path, processes=1)
    assert (args.use_vllm, args.vllm_mode, args.vllm_server_base_url) == (True, "colocate", "http://10.0.0.2:8001")
    assert (args.vllm_server_host, args.vllm_server_port) == ("10.0.0.2", 8001)
    assert (args.vllm_gpu_memory_utilization, args.vllm_tensor_parallel_size) == (0.45, 2)
    assert args.gradient_checkpointing and not args.bf16
    assert not grpo_config(TrainConfig(), tmp_path, processes=1).use_vllm  # off unless asked for


def test_train_config_checks_the_vllm_fields():
    with pytest.raises(ValueError, match="vllm_mode"):
        TrainConfig(vllm_mode="remote")
    with pytest.raises(ValueError, match="vllm_gpu_memory_utilization"):
        TrainConfig(vllm_gpu_memory_utilization=0.0)
    with pytest.raises(ValueError, match="micro_batch_size"):
        TrainConfig(micro_batch_size=0)


def test_a_yaml_train_section_switches_vllm_on():
    cfg = build_config(DemoConfig, {"train": {"use_vllm": True, "vllm_mode": "server",
                                              "vllm_server_base_url": "http://gpu7:8000", "micro_batch_size": 4}},
                       "test.yaml")
    assert cfg.train.use_vllm and cfg.train.vllm_server_base_url == "http://gpu7:8000"
    assert cfg.train.micro_batch_size == 4


# -- a missing vLLM ------------------------------------------------------------------------------------
def test_sampler_without_vllm_says_how_to_get_it(no_vllm, model_dir):
    from prefixrl.generate import make_sampler

    with pytest.raises(ImportError, match=r"vllm==0.31.0.*'On GPUs'.*--backend hf"):
        make_sampler("vllm", str(model_dir), SamplingParams())


@pytest.mark.parametrize("command", ["screen", "train"])
def test_cli_without_vllm_fails_cleanly(no_vllm, command, model_dir, sort_task, tok, tmp_path):
    if command == "screen":
        args = ["screen", str(model_dir), "--task", "sort", "--backend", "vllm", "--n", "2", "--out", str(tmp_path / "s")]
    else:
        problems = {p.id: p for p in sort_task.problems("train")[:1]}
        rows = prefixed_problems(tok, [{"problem_id": pid, "completion": solve_sort(p.prompt)}
                                       for pid, p in problems.items()], problems)
        write_jsonl(tmp_path / "train.jsonl", rows)
        args = ["train", str(model_dir), "--task", "sort", "--data", str(tmp_path / "train.jsonl"), "--out", str(tmp_path / "t"),
                "--use-vllm"]
    result = CliRunner().invoke(app, args, env={"COLUMNS": "400"})
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit)  # an error line, no traceback
    assert "vLLM is not installed" in result.output and "vllm==0.31.0" in result.output
    assert not (tmp_path / "t" / "model").exists()


# -- VLLMSampler against a stand-in vllm module -------------------------------------------------------
def fake_vllm():
    """The part of vLLM's offline API that VLLMSampler uses; records what it was given."""
    calls = {}

    class LLM:
        def __init__(self, **kwargs):
            calls["llm"] = kwargs

        def get_tokenizer(self):
            return AutoTokenizer.from_pretrained(calls["llm"]["model"])

        def generate(self, inputs, sampling, use_tqdm=True):
            calls["inputs"], calls["sampling"] = inputs, sampling
            outputs = []
            for k, x in enumerate(inputs):
                completions = []
                for j in range(sampling.n):
                    ids = [10 + k, 20 + j, 1]  # ... <eos>
                    logprobs = [{t: SimpleNamespace(logprob=-0.1 * (i + 1))} for i, t in enumerate(ids)]
                    completions.append(SimpleNamespace(text=f"c{k}{j}", token_ids=tuple(ids), logprobs=logprobs))
                outputs.append(SimpleNamespace(prompt_token_ids=x["prompt_token_ids"], outputs=completions))
            return outputs

    module = types.ModuleType("vllm")
    module.LLM, module.SamplingParams = LLM, lambda **kw: SimpleNamespace(**kw)
    return module, calls


def test_vllm_sampler_maps_outputs_to_samples(monkeypatch, model_dir, tok):
    from prefixrl.generate_vllm import VLLMSampler

    module, calls = fake_vllm()
    monkeypatch.setitem(sys.modules, "vllm", module)
    sampler = VLLMSampler(str(model_dir), SamplingParams(temperature=0.7, max_new_tokens=16))
    samples = sampler.generate(["31 2:", "4 1:"], n=2, seed=5)
    # log-probs after temperature, as HFSampler's: the processed ones
    assert calls["llm"] == {"model": str(model_dir), "logprobs_mode": "processed_logprobs"}
    # prompts as the token ids every sampler and the trainer use (a BOS once: here none)
    assert calls["inputs"] == [{"prompt_token_ids": encode_prompt(tok, "31 2:")},
                               {"prompt_token_ids": encode_prompt(tok, "4 1:")}]
    assert calls["inputs"][0]["prompt_token_ids"] == tok("31 2:", add_special_tokens=False)["input_ids"]
    s = calls["sampling"]
    assert (s.n, s.temperature, s.max_tokens, s.seed, s.logprobs) == (2, 0.7, 16, 5, 0)
    assert [[x.text for x in group] for group in samples] == [["c00", "c01"], ["c10", "c11"]]
    first = samples[1][0]
    assert first.token_ids == [11, 20, 1] and first.prompt_tokens == 4
    assert first.logprobs == pytest.approx([-0.1, -0.2, -0.3]) and first.tokens == 7
    assert sampler.n_params == sum(p.numel() for p in tiny_model(tok, SMALL).parameters())


# -- TRL's vLLM rollout path goes through PrefixRLTrainer._generate ------------------------------------
class FakeVLLMGeneration:
    """Stands in for TRL's VLLMGeneration: one completion per (repeated) prompt, with top-1 log-probs."""

    def __init__(self, tok):
        self.tok, self.calls, self.synced = tok, [], 0

    def sync_weights(self):
        self.synced += 1

    def generate(self, prompts, images, num_generations, profiler=None):
        self.calls.append((prompts, num_generations))
        ids = self.tok(" 1:9", add_special_tokens=False)["input_ids"] + [self.tok.eos_token_id]
        return prompts, [list(ids) for _ in prompts], [[[-0.25]] * len(ids) for _ in prompts], None


def test_vllm_rollouts_get_the_trace_and_are_counted(sort_task, tok, tmp_path):
    problems = {p.id: p for p in sort_task.problems("train")[:2]}
    traces = {pid: tok(solve_sort(p.prompt), add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
              for pid, p in problems.items()}
    rows = prefixed_problems(tok, [{"problem_id": pid, "completion": solve_sort(p.prompt)}
                                   for pid, p in problems.items()], problems)
    cfg = TrainConfig(steps=1, problems_per_step=2, num_generations=2, max_completion_length=64)
    ledger = FlopsLedger()
    trainer = OffPolicyTrainer(model=tiny_model(tok, SMALL), reward_funcs=reward_function(sort_task, problems),
                               args=grpo_config(cfg, tmp_path, processes=1), train_dataset=Dataset.from_list(rows),
                               processing_class=tok, flops_ledger=ledger,
                               off_policy=OffPolicyTraces("is", traces, {pid: [-1.0] * len(ids)
                                                                         for pid, ids in traces.items()}))
    # what GRPOTrainer.__init__ sets up when use_vllm is on (vLLM itself cannot run here)
    trainer.use_vllm, trainer.vllm_generation, trainer._last_loaded_step = True, FakeVLLMGeneration(tok), -1
    assert trainer.vllm_importance_sampling_correction  # TRL's default: an extra old-policy forward pass
    trainer.model.train()
    one_per_problem = {r["problem_id"]: r for r in rows if r["prefixed"]}.values()
    batch = [dict(r) for r in one_per_problem for _ in range(2)]  # two groups of two
    out = trainer._generate_and_score_completions(batch)

    engine = trainer.vllm_generation
    assert engine.synced == 1 and len(engine.calls) == 1 and engine.calls[0][1] == 2
    assert engine.calls[0][0] == [encode_prompt(tok, x["prompt"]) for x in batch]  # problem + prefix
    own = tok(" 1:9", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    for i, row in enumerate(batch):  # each group's last sample is the trace, the others vLLM's
        ids = out["completion_ids"][i][out["completion_mask"][i].bool()].tolist()
        assert ids == (traces[row["problem_id"]] if i % 2 else own)
    assert out["off_policy"].tolist() == [False, True, False, True]
    # a trace has no vLLM sampling log-probs: TRL's correction leaves it alone (ratio 1)
    sampling = out["sampling_per_token_logps"]
    assert torch.isnan(sampling[1, :len(traces[batch[1]["problem_id"]])]).all()
    assert sampling[0, :len(own)].tolist() == [-0.25] * len(own)
    assert out["importance_sampling_ratio"][1].tolist() == [1.0]
    tokens = int(out["prompt_mask"].sum() + out["completion_mask"].sum())
    assert ledger.stages["updates"]["train_tokens"] == tokens
    discarded = 2 * len(own)  # the two vLLM samples the traces replaced were generated all the same
    assert ledger.stages["rollouts"]["inference_tokens"] == tokens + discarded
    assert ledger.stages["extra_forward"]["inference_tokens"] == tokens  # the old-policy log-probs
    assert not math.isnan(out["advantages"].sum().item())
