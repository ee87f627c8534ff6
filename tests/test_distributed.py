"""Training at scale on CPU: `prefixrl train` under `accelerate launch` with two processes (gloo),
how a step's batch is split between processes, and the accelerate configs shipped for GPUs.

Run as a script (by `accelerate launch`, from the first test), this file is the worker: the real
`prefixrl train` command, with a trainer that also records what each process saw and ends with.
"""

import hashlib
import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import prefixrl.train as train_module
from prefixrl.offpolicy import OffPolicyTrainer
from prefixrl.train import TrainConfig, batch_split, grpo_config

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs" / "accelerate"


def weights_digest(model) -> str:
    """sha256 of every tensor of the model's state dict, in name order: equal iff the weights are."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def read(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


# -- the two-process run ------------------------------------------------------------------------------
def _worker(report: Path, argv: list[str]) -> None:
    """One process of the launched run: `prefixrl train ARGV` with a recording trainer."""
    from prefixrl.cli import app

    correct = train_module.reward_function

    def mixed_rewards(task, problems):  # a random model never solves sort: the first of each group does
        reward = correct(task, problems)
        return lambda completions, **kw: [max(r, float(i % 2 == 0))
                                          for i, r in enumerate(reward(completions=completions, **kw))]

    class Recording(train_module.PrefixRLTrainer):
        def _generate_and_score_completions(self, inputs):
            self.batches = getattr(self, "batches", []) + [[x["prompt"] for x in inputs]]
            return super()._generate_and_score_completions(inputs)

        def train(self, *args, **kwargs):
            result = super().train(*args, **kwargs)
            rank = self.accelerator.process_index
            (report / f"rank-{rank}.json").write_text(json.dumps({
                "processes": self.accelerator.num_processes, "batches": self.batches,
                "micro_batch": self.args.per_device_train_batch_size,
                "accumulation": self.args.gradient_accumulation_steps,
                "weights": weights_digest(self.accelerator.unwrap_model(self.model)),
                "flops": self.flops_ledger.total}))
            return result

    train_module.reward_function = mixed_rewards
    train_module.PrefixRLTrainer = Recording
    app(argv, standalone_mode=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def launched(sort_task, tmp_path_factory):
    from conftest import solve_sort
    from prefixrl.files import write_jsonl
    from prefixrl.models import TinyModelConfig, char_tokenizer, tiny_model
    from prefixrl.prefixes import prefixed_problems

    tmp = tmp_path_factory.mktemp("distributed")
    tok = char_tokenizer()
    base = tmp / "base"
    tiny_model(tok, TinyModelConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                    intermediate_size=64)).save_pretrained(base)
    tok.save_pretrained(base)
    problems = {p.id: p for p in sort_task.problems("train")[:2]}
    traces = [{"problem_id": pid, "completion": solve_sort(p.prompt)} for pid, p in problems.items()]
    write_jsonl(tmp / "train.jsonl", prefixed_problems(tok, traces, problems))
    write_jsonl(tmp / "heldout.jsonl", [p.to_dict() for p in sort_task.problems("heldout")[:2]])
    (tmp / "report").mkdir()
    out = tmp / "run"
    # 2 problems x 2 samples = 4 per step: 2 per process, as 2 micro-batches of 1 (gradient accumulation)
    argv = ["train", str(base), "--task", "sort", "--data", str(tmp / "train.jsonl"), "--out", str(out),
            "--heldout", str(tmp / "heldout.jsonl"), "--steps", "2", "--problems-per-step", "2",
            "--num-generations", "2", "--micro-batch-size", "1", "--max-completion-length", "32",
            "--eval-every", "1", "--eval-n", "2", "--save-every", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CONFIGS / "cpu_2proc.yaml"),
               "--main_process_port", str(_free_port()), __file__, str(tmp / "report"), *argv]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    return tmp, out, result


def test_two_processes_train_to_the_same_weights(launched):
    tmp, out, result = launched
    ranks = [json.loads((tmp / "report" / f"rank-{r}.json").read_text()) for r in (0, 1)]
    assert [r["processes"] for r in ranks] == [2, 2]
    from transformers import AutoModelForCausalLM

    saved = weights_digest(AutoModelForCausalLM.from_pretrained(out / "model"))
    assert ranks[0]["weights"] == ranks[1]["weights"] == saved  # DDP kept the processes in step
    assert saved != weights_digest(AutoModelForCausalLM.from_pretrained(tmp / "base"))  # and they trained
    assert result.stdout.count("saved the trained policy") == 1  # the main process reports, once


def test_each_step_is_one_global_batch_split_between_the_processes(launched):
    tmp, _, _ = launched
    ranks = [json.loads((tmp / "report" / f"rank-{r}.json").read_text()) for r in (0, 1)]
    for r in ranks:  # 4 samples per step = 2 processes x 2 accumulated micro-batches of 1
        assert (r["micro_batch"], r["accumulation"]) == (1, 2)
        assert len(r["batches"]) == 2  # one generation per optimizer step, not one per micro-batch
        assert all(len(batch) == 2 and batch[0] == batch[1] for batch in r["batches"])  # a whole group
    for step in range(2):  # the two processes hold the step's two different problems
        assert ranks[0]["batches"][step][0] != ranks[1]["batches"][step][0]


def test_only_the_main_process_writes_and_flops_count_every_process_once(launched):
    _, out, _ = launched
    metrics = [r for r in read(out / "metrics.jsonl") if "loss" in r]
    assert [r["step"] for r in metrics] == [1, 2]  # one line per step, not one per process
    assert [r["step"] for r in read(out / "eval.jsonl")] == [0, 1, 2]
    ledger = json.loads((out / "flops.json").read_text())
    # TRL's num_tokens gathers every process's prompt + completion tokens: the ledger counts the same
    assert ledger["stages"]["rollouts"]["inference_tokens"] == metrics[-1]["num_tokens"]
    assert ledger["stages"]["updates"]["train_tokens"] == metrics[-1]["num_tokens"]
    assert ledger["total"] == metrics[-1]["flops/total"]
    for step, row in zip((1, 2), metrics):  # a checkpoint's ledger is written once, not merged twice
        checkpoint = json.loads((out / "checkpoints" / f"checkpoint-{step}" / "flops.json").read_text())
        assert checkpoint["total"] == row["flops/total"]
    assert json.loads((out / "manifest.json").read_text())["processes"] == 2


def test_the_gpu_recipes_options_in_one_process(launched, sort_task):
    """The options the README's GPU commands use, in one process: micro-batches of 1 accumulated,
    gradient checkpointing, and --eval-every 0 (no in-training evaluation at all)."""
    from typer.testing import CliRunner
    from prefixrl.cli import app

    tmp, _, _ = launched
    out = tmp / "one"
    result = CliRunner().invoke(app, ["train", str(tmp / "base"), "--task", "sort", "--data", str(tmp / "train.jsonl"),
                                      "--out", str(out),
                                      "--steps", "1", "--problems-per-step", "2", "--num-generations", "2",
                                      "--micro-batch-size", "1", "--gradient-checkpointing", "--eval-every", "0",
                                      "--max-completion-length", "16"])
    assert result.exit_code == 0, result.output
    config = json.loads((out / "config.json").read_text())
    assert (config["micro_batch_size"], config["gradient_checkpointing"], config["use_vllm"]) == (1, True, False)
    assert [r["step"] for r in read(out / "metrics.jsonl") if "loss" in r] == [1]
    assert not (out / "eval.jsonl").exists() and (out / "model").is_dir()


# -- batch split, without processes -------------------------------------------------------------------
@pytest.mark.parametrize("problems, generations, processes, micro, expected", [
    (16, 8, 1, None, (128, 1)),  # the paper's batch in one process, one pass
    (16, 8, 8, None, (16, 1)),  # 8 GPUs: 16 samples each
    (16, 8, 8, 4, (4, 4)),  # ... in micro-batches of 4: 4 accumulated passes per step
    (3, 2, 2, None, (3, 1)),  # a group may straddle two processes (TRL baselines after gathering)
])
def test_batch_split(problems, generations, processes, micro, expected):
    cfg = TrainConfig(problems_per_step=problems, num_generations=generations, micro_batch_size=micro)
    assert batch_split(cfg, processes) == expected


def test_batch_split_refuses_uneven_shares(tmp_path):
    with pytest.raises(ValueError, match="divisible by the number of processes"):
        batch_split(TrainConfig(problems_per_step=3, num_generations=3), 2)
    with pytest.raises(ValueError, match="micro_batch_size"):
        batch_split(TrainConfig(problems_per_step=4, num_generations=2, micro_batch_size=3), 2)
    args = grpo_config(TrainConfig(problems_per_step=4, num_generations=8, micro_batch_size=8), tmp_path, processes=2)
    assert (args.per_device_train_batch_size, args.gradient_accumulation_steps) == (8, 2)
    assert args.steps_per_generation == 2  # one generation per optimizer step


@pytest.mark.parametrize("asked, launcher_env, expected", [
    (False, {}, False), (True, {}, True),
    (False, {"ACCELERATE_MIXED_PRECISION": "bf16"}, True),  # an accelerate config's mixed_precision: bf16
    (False, {"ACCELERATE_MIXED_PRECISION": "no"}, False)])
def test_bf16_follows_the_config_or_the_accelerate_launch(tmp_path, monkeypatch, asked, launcher_env, expected):
    """DeepSpeed refuses bf16 enabled by the accelerate config but not by the Trainer: they must agree."""
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    for name, value in launcher_env.items():
        monkeypatch.setenv(name, value)
    assert grpo_config(TrainConfig(bf16=asked), tmp_path, processes=1).bf16 is expected


@pytest.mark.parametrize("bf16, launcher_env, dtype", [
    (True, {"ACCELERATE_USE_DEEPSPEED": "true"}, torch.bfloat16),  # fp32 master weights in DeepSpeed's optimizer
    (True, {"ACCELERATE_USE_FSDP": "true"}, torch.bfloat16),  # accelerate upcasts FSDP's parameters to fp32
    (True, {}, torch.float32),  # one process or DDP: AdamW steps the loaded weights, which must be fp32
    (False, {"ACCELERATE_USE_DEEPSPEED": "true"}, torch.float32)])
def test_policy_loads_in_bf16_only_where_fp32_master_weights_are_kept(monkeypatch, bf16, launcher_env, dtype):
    for name in ("ACCELERATE_USE_DEEPSPEED", "ACCELERATE_USE_FSDP"):
        monkeypatch.delenv(name, raising=False)
    for name, value in launcher_env.items():
        monkeypatch.setenv(name, value)
    assert train_module.policy_dtype(bf16) == dtype


@pytest.mark.parametrize("process, expected", [(0, [1]), (1, [0, 2])])
def test_trace_goes_to_each_groups_last_sample_across_processes(process, expected):
    """3 problems x 2 samples over 2 processes: global rows 0-1, 2-3, 4-5 are the groups; process 0
    holds rows 0-2, process 1 rows 3-5, so the second group straddles them and its last sample (row
    3) is process 1's local row 0. Only problems with a trace get one."""
    ids = ["a", "a", "b", "b", "c", "c"][3 * process:3 * process + 3]
    trainer = SimpleNamespace(accelerator=SimpleNamespace(process_index=process), num_generations=2,
                              _batch_inputs=[{"problem_id": pid} for pid in ids],
                              off_policy=SimpleNamespace(token_ids={"a": [1], "b": [1], "c": [1]}))
    assert OffPolicyTrainer._off_policy_rows(trainer, 3) == expected
    trainer.off_policy.token_ids = {"a": [1]}
    assert OffPolicyTrainer._off_policy_rows(trainer, 3) == ([1] if process == 0 else [])


# -- the accelerate configs ---------------------------------------------------------------------------
@pytest.mark.parametrize("name, launcher, processes, precision", [
    ("cpu_2proc", "multi_gpu", 2, "no"), ("deepspeed_zero3", "use_deepspeed", 8, "bf16"),
    ("fsdp", "use_fsdp", 8, "bf16")])
def test_accelerate_configs_load_and_pick_their_launcher(name, launcher, processes, precision):
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser

    path = CONFIGS / f"{name}.yaml"
    config = load_config_from_file(str(path))  # accelerate's own loader: an unknown key is an error
    assert (config.num_processes, config.mixed_precision) == (processes, precision)
    args = launch_command_parser().parse_args(["--config_file", str(path), "-m", "prefixrl.cli", "train"])
    args, _, _ = _validate_launch_command(args)
    assert getattr(args, launcher) and args.num_processes == processes and not args.cpu
    if name == "deepspeed_zero3":
        assert config.deepspeed_config["zero_stage"] == 3 and config.deepspeed_config["zero3_save_16bit_model"]
        # a fixed accumulation count here would clash with the one prefixrl sets from micro_batch_size
        assert "gradient_accumulation_steps" not in config.deepspeed_config
    if name == "fsdp":  # model/ and checkpoints as plain save_pretrained folders
        assert config.fsdp_config["fsdp_state_dict_type"] == "FULL_STATE_DICT"
        assert config.fsdp_config["fsdp_cpu_ram_efficient_loading"] is False


if __name__ == "__main__":  # launched by `launched` above, once per process
    torch.set_num_threads(1)
    _worker(Path(sys.argv[1]), sys.argv[2:])
