"""`prefixrl estimate`: hand-computed ledger values for a small config, the paper configs, N's
sources, agreement with what a real demo run recorded and with what train.py charges per step."""

import json

import pytest
import torch
import yaml
from datasets import Dataset
from typer.testing import CliRunner

from conftest import solve_chain
from prefixrl.cli import app
from prefixrl.estimate import Assumptions, Hardware, estimate_file, load_config, model_params
from prefixrl.files import InputError
from prefixrl.flops import FlopsLedger
from prefixrl.models import TinyModelConfig, char_tokenizer, n_params, tiny_model
from prefixrl.prefixes import prefixed_problems
from prefixrl.train import PrefixRLTrainer, TrainConfig, grpo_config

torch.set_num_threads(1)

SMALL_CONFIG = {
    "task": "chain", "model": "builtin:chain", "params": 1000,
    "sampling": {"max_new_tokens": 100},
    "screen": {"limit": 10, "n": 4, "k": 4},
    "collect": {"max_attempts": 50, "attempts_per_round": 10},
    "train": {"steps": 3, "problems_per_step": 2, "num_generations": 4, "max_completion_length": 100,
              "eval_every": 2, "eval_n": 2},
    "evaluate": {"n": 8, "calibration_n": 4, "calibration_traces": 2},
}
SMALL_ASSUMPTIONS = Assumptions(prompt_tokens=20, generated_share=0.5, hard_share=0.5, attempts=30,
                                solved_share=0.8, heldout=3)


def write_config(tmp_path, config: dict):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def flops_by_part(result) -> dict:
    return {(r["stage"], r["part"].split(":")[0]): r["flops"] for r in result["rows"]}


def test_small_config_equals_hand_computed_ledger_values(tmp_path):
    # every sample: 20 prompt tokens + 0.5 x 100 generated = 70 tokens; N = 1000
    result = estimate_file(write_config(tmp_path, SMALL_CONFIG), SMALL_ASSUMPTIONS)
    assert result["params"] == 1000 and result["params_source"] == "given"
    assert result["counts"] == {"screened": 10, "hard": 5, "solved": 4, "heldout": 3}
    flops = flops_by_part(result)
    assert flops[("screen", "10 problems x 4")] == pytest.approx(5.6e6)  # 2 x 1000 x (10 x 4 x 70)
    assert flops[("collect", "5 hard x 30 attempts")] == pytest.approx(2.1e7)  # 2 x 1000 x (5 x 30 x 70)
    assert flops[("train", "rollouts")] == pytest.approx(3.36e6)  # 2 x 1000 x (3 x 2 x 4 x 70)
    assert flops[("train", "updates")] == pytest.approx(1.008e7)  # 6 x 1000 x 1680
    assert flops[("evaluate", "during training")] == pytest.approx(5.88e6)  # steps 0, 2, 3 x 7 problems x 2
    assert flops[("evaluate", "final")] == pytest.approx(1.568e7)  # 2 policies x 7 problems x 8
    assert flops[("evaluate", "calibration")] == pytest.approx(2.464e7)  # 2 x 2 traces x 11 fractions x 4
    assert result["total"]["flops"] == pytest.approx(sum(flops.values()))
    hw = Hardware()  # updates at 40% of 989 TFLOP/s, sampling at 10%
    hours = {(r["stage"], r["part"].split(":")[0]): r["gpu_hours"] for r in result["rows"]}
    assert hours[("train", "updates")] == pytest.approx(1.008e7 / (989e12 * 0.4) / 3600)
    assert hours[("train", "rollouts")] == pytest.approx(3.36e6 / (989e12 * 0.1) / 3600)
    assert hw.gpu_hours(1.008e7, training=True) == hours[("train", "updates")]


def test_attempts_are_capped_and_the_trace_model_pays_for_collection(tmp_path):
    config = {**SMALL_CONFIG, "trace_model": "Qwen/Qwen3-4B"}
    many = Assumptions(**{**vars(SMALL_ASSUMPTIONS), "attempts": 10_000})
    result = estimate_file(write_config(tmp_path, config), many)
    assert result["trace_params"] == 4_022_468_096 and result["trace_params_source"] == "built-in table"
    # at most the cap (50) per hard problem, charged at the trace model's N
    assert flops_by_part(result)[("collect", "5 hard x 50 attempts")] == pytest.approx(2 * 4_022_468_096 * 5 * 50 * 70)


@pytest.mark.parametrize("name, model, n", [("paper-llama8b", "meta-llama/Llama-3.1-8B-Instruct", 8_030_261_248),
                                            ("paper-qwen3-4b", "Qwen/Qwen3-4B", 4_022_468_096)])
def test_paper_configs(name, model, n):
    path = f"configs/{name}.yaml"
    cfg, raw, ignored = load_config(path)
    assert ignored == [] and raw["task"] == "math" and raw["task_args"]["train"]  # the schema knows every key
    assert (cfg.model, cfg.screen.n, cfg.screen.k, cfg.collect.max_attempts) == (model, 512, 512, 2500)
    assert (cfg.prefixes.cuts_per_trace, cfg.prefixes.low, cfg.prefixes.high, cfg.prefixes.unprefixed_per_problem) == (3, 0.4, 0.8, 1)
    t = cfg.train
    assert (t.steps, t.problems_per_step, t.num_generations, t.lr, t.max_completion_length) == (400, 128, 8, 1e-6, 16384)
    assert (t.loss_type, t.scale_rewards, t.beta, t.temperature, t.eval_temperature) == ("dr_grpo", "none", 0.0, 1.0, 0.7)
    assert (cfg.sampling.temperature, cfg.evaluate.n, cfg.evaluate.temperature) == (1.0, 256, 0.7)
    result = estimate_file(path)
    assert result["params"] == n and result["counts"]["hard"] == 1000
    tokens = 400 * 128 * 8 * (200 + 0.5 * 16384)  # default assumptions
    assert flops_by_part(result)[("train", "updates")] == pytest.approx(6 * n * tokens)


def test_params_sources(tmp_path):
    from prefixrl.models import load_model, resolve_model

    model, _ = load_model(resolve_model("builtin:chain"), device="cpu")
    assert model_params("builtin:chain")[0] == n_params(model)  # from config.json, no weights loaded
    assert model_params("meta-llama/Llama-3.1-8B-Instruct") == (8_030_261_248, "built-in table")
    assert model_params("some/unknown-model", "2.5e9") == (2_500_000_000, "given")
    with pytest.raises(InputError, match="--params"):
        model_params("some/unknown-model")
    config = {k: v for k, v in SMALL_CONFIG.items() if k != "params"}
    assert estimate_file(write_config(tmp_path, config), SMALL_ASSUMPTIONS)["params"] == n_params(model)
    extra = {**config, "task_args": {"train": "data/train.jsonl"}, "train": {**config["train"], "future_knob": 1}}
    assert estimate_file(write_config(tmp_path, extra), SMALL_ASSUMPTIONS)["ignored_keys"] == ["train.future_knob"]
    with pytest.raises(InputError, match="--screened"):
        estimate_file(write_config(tmp_path, {**config, "screen": {"limit": None}}))


# A fresh-clone demo run (commit 44bcb89) recorded these FLOPs, N = 652,800 (builtin:chain). Its config:
RECORDED_CONFIG = {
    "task": "chain", "model": "builtin:chain",
    "sampling": {"temperature": 1.0, "max_new_tokens": 128, "batch_size": 512},
    "screen": {"limit": 48, "n": 128, "k": 128},
    "collect": {"max_attempts": 2500, "attempts_per_round": 256},
    "train": {"steps": 150, "problems_per_step": 16, "num_generations": 8, "max_completion_length": 128,
              "eval_every": 25, "eval_n": 16},
}
RECORDED = {"screen": 713968665600.0, "collect": 10977651916800.0, "rollouts": 2154532454400.0,
            "updates": 6463597363200.0,
            "during training": 466240204800.0,  # the sum of train/evals/*/flops.json
            "final": 262433433600.0}  # the sum of evaluate/*/flops.json


def test_within_10_percent_of_a_recorded_demo_run(tmp_path):
    """With that run's outcomes (47 of 48 problems hard, 1,950 samples paid per hard problem,
    traces for 18) and the chain task's lengths (6-token prompts, samples of ~65% of 128 tokens),
    each stage's estimate is within 10% of what the run recorded: the sample counts are right."""
    a = Assumptions(prompt_tokens=6, generated_share=0.65, hard_share=47 / 48, attempts=1950, solved_share=18 / 47)
    flops = flops_by_part(estimate_file(write_config(tmp_path, RECORDED_CONFIG), a))
    estimated = {"screen": flops[("screen", "48 problems x 128")], "collect": flops[("collect", "47 hard x 1,950 attempts")],
                 "rollouts": flops[("train", "rollouts")], "updates": flops[("train", "updates")],
                 "during training": flops[("evaluate", "during training")], "final": flops[("evaluate", "final")]}
    for stage, value in RECORDED.items():
        assert value / 1.1 < estimated[stage] < value * 1.1, (stage, estimated[stage], value)


def test_train_step_flops_match_what_train_py_charges(chain_task, tmp_path):
    """One rollout batch through PrefixRLTrainer: the estimate of one step, given that batch's
    mean prompt and completion lengths, equals the trainer's ledger (same N, samples, 2ND + 6ND)."""
    tok = char_tokenizer()
    small = TinyModelConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
    model_dir = tmp_path / "tiny"
    tiny_model(tok, small).save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    problems = {p.id: p for p in chain_task.problems("train")[:2]}
    traces = [{"problem_id": pid, "completion": solve_chain(p.prompt)} for pid, p in problems.items()]
    rows = prefixed_problems(tok, traces, problems)
    cfg = TrainConfig(steps=1, problems_per_step=2, num_generations=2, max_completion_length=24)
    trainer = PrefixRLTrainer(model=tiny_model(tok, small), reward_funcs=lambda completions, **_: [0.0] * len(completions),
                              args=grpo_config(cfg, tmp_path / "run"), train_dataset=Dataset.from_list(rows),
                              processing_class=tok, flops_ledger=FlopsLedger())
    batch = [dict(r) for r in (rows[0], rows[-1]) for _ in range(2)]  # a prefixed and an unprefixed problem, 2 samples each
    out = trainer._generate_and_score_completions(batch)
    samples = len(batch)
    prompt, completion = out["prompt_mask"].sum().item() / samples, out["completion_mask"].sum().item() / samples
    config = {**SMALL_CONFIG, "model": str(model_dir), "train": {"steps": 1, "problems_per_step": 2,
              "num_generations": 2, "max_completion_length": 24}}
    config.pop("params")
    result = estimate_file(write_config(tmp_path, config),
                           Assumptions(prompt_tokens=prompt, generated_share=completion / 24, hard_share=0.5))
    assert result["params"] == trainer.n_params
    train = [r for r in result["rows"] if r["stage"] == "train"]
    assert sum(r["flops"] for r in train) == pytest.approx(trainer.flops_ledger.total, rel=1e-9)
    assert trainer.flops_ledger.total > 0


def test_cli_table_and_json(tmp_path):
    path = write_config(tmp_path, SMALL_CONFIG)
    options = ["--prompt-tokens", "20", "--generated-share", "0.5", "--hard-share", "0.5", "--attempts", "30",
               "--solved-share", "0.8", "--heldout", "3"]
    result = CliRunner().invoke(app, ["estimate", str(path), *options, "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["total"]["flops"] == pytest.approx(5.6e6 + 2.1e7 + 3.36e6 + 1.008e7 + 5.88e6 + 1.568e7 + 2.464e7)
    assert data["assumptions"]["attempts"] == 30 and data["hardware"]["peak_tflops"] == 989
    table = CliRunner().invoke(app, ["estimate", str(path), *options, "--train-mfu", "0.5"], env={"COLUMNS": "200"})
    assert table.exit_code == 0 and "total" in table.output and "MFU 50% for updates" in table.output
    bad = CliRunner().invoke(app, ["estimate", str(path), "--generated-share", "1.5"])
    assert bad.exit_code == 2 and "generated_share" in bad.output


def test_eval_every_0_estimates_no_evaluation_during_training(tmp_path):
    config = {**SMALL_CONFIG, "train": {**SMALL_CONFIG["train"], "eval_every": 0}}
    parts = flops_by_part(estimate_file(write_config(tmp_path, config), SMALL_ASSUMPTIONS))
    assert ("evaluate", "during training") not in parts and ("evaluate", "final") in parts


def test_use_vllm_charges_the_old_policy_forward_pass_as_train_py_does(tmp_path):
    """With vLLM rollouts TRL recomputes the old policy's log-probs (its importance-sampling
    correction, on by default): train.py charges one more 2ND pass over the batch, and so does the estimate."""
    from types import SimpleNamespace

    config = {**SMALL_CONFIG, "train": {**SMALL_CONFIG["train"], "use_vllm": True}}
    flops = flops_by_part(estimate_file(write_config(tmp_path, config), SMALL_ASSUMPTIONS))
    assert flops[("train", "old-policy forward (use_vllm)")] == pytest.approx(3.36e6)  # = the rollouts' 2ND
    assert ("train", "old-policy forward (use_vllm)") not in flops_by_part(
        estimate_file(write_config(tmp_path, SMALL_CONFIG), SMALL_ASSUMPTIONS))
    args = grpo_config(TrainConfig(problems_per_step=2, num_generations=4), tmp_path / "run")
    assert args.vllm_importance_sampling_correction  # TRL's default, which train.py's count reads
    trainer = SimpleNamespace(args=args, num_iterations=1, use_vllm=True, beta=0.0,
                              vllm_importance_sampling_correction=args.vllm_importance_sampling_correction)
    assert PrefixRLTrainer._extra_forward_passes(trainer) == 1
