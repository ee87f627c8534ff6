"""PrefixRL training on a tiny random model: the loss covers only the policy's continuation, the
reward scores prefix + continuation, split metrics, and an end-to-end run that resumes."""

import json
import shutil
from types import SimpleNamespace

import pytest
import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM
from trl import GRPOTrainer

import prefixrl.callbacks as callbacks
import prefixrl.train as train_module
from conftest import record_sampler_params, solve_chain, solve_sort
from prefixrl.flops import FlopsLedger
from prefixrl.models import TinyModelConfig, char_tokenizer, sequence_logprobs, tiny_model
from prefixrl.prefixes import prefixed_problems
from prefixrl.objective import reinforce_loss
from prefixrl.offpolicy import OffPolicyTrainer, OffPolicyTraces
from prefixrl.train import PrefixRLTrainer, TrainConfig, grpo_config, reward_function, train

torch.set_num_threads(1)
SMALL = TinyModelConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                        max_position_embeddings=256)
MAX_LEN = 48


def mixed_rewards(task, problems):
    """The real reward, except that the first sample of each group of 2 always succeeds: a random
    model never solves sort, and only a group with mixed rewards has a nonzero advantage."""
    correct = reward_function(task, problems)

    def reward(completions, **kwargs):
        return [max(r, float(i % 2 == 0)) for i, r in enumerate(correct(completions=completions, **kwargs))]

    return reward


@pytest.fixture(scope="module")
def setup(sort_task, tmp_path_factory):
    tok = char_tokenizer()
    model_dir = tmp_path_factory.mktemp("tiny")
    tiny_model(tok, SMALL).save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    problems = {p.id: p for p in sort_task.problems("train")[:2]}
    traces = [{"problem_id": pid, "completion": solve_sort(p.prompt)} for pid, p in problems.items()]
    return SimpleNamespace(tok=tok, model_dir=model_dir, problems=problems,
                           rows=prefixed_problems(tok, traces, problems))


def make_trainer(setup, reward, out_dir, kind=PrefixRLTrainer, **extra):
    cfg = TrainConfig(steps=1, problems_per_step=2, num_generations=2, max_completion_length=MAX_LEN)
    trainer = kind(model=tiny_model(setup.tok, SMALL), reward_funcs=reward, args=grpo_config(cfg, out_dir),
                              train_dataset=Dataset.from_list(setup.rows), processing_class=setup.tok,
                              flops_ledger=FlopsLedger(), **extra)
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = 1  # set by the training loop, which these tests skip
    return trainer


def test_prefix_is_prompt_and_only_the_continuation_is_trained(setup, sort_task, tmp_path):
    trainer = make_trainer(setup, mixed_rewards(sort_task, setup.problems), tmp_path)
    tok, model = setup.tok, trainer.model
    prefixed = [r for r in setup.rows if r["prefixed"]]
    batch = [dict(r) for r in (prefixed[0], prefixed[4], setup.rows[-1]) for _ in range(2)]
    torch.manual_seed(0)
    out = trainer._generate_and_score_completions(batch)
    assert out["completion_ids"].shape[1] <= MAX_LEN and (out["advantages"].abs() == 0.5).all()
    for i, row in enumerate(batch):
        prompt = out["prompt_ids"][i][out["prompt_mask"][i].bool()].tolist()
        problem = setup.problems[row["problem_id"]]
        assert prompt == tok(problem.prompt + row["prefix"], add_special_tokens=False)["input_ids"]
        assert len(prompt) == len(problem.prompt) + row["prefix_tokens"]  # the prefix sits in the prompt
        mask = out["completion_mask"][i]
        n = int(mask.sum())
        assert mask[:n].all() and not mask[n:].any()  # the sample's own tokens, then padding
        ids = out["completion_ids"][i][:n].tolist()
        assert tok.eos_token_id not in ids[:-1] and (n == MAX_LEN or ids[-1] == tok.eos_token_id)
    tokens = int(out["prompt_mask"].sum() + out["completion_mask"].sum())
    assert trainer.flops_ledger.stages["rollouts"]["inference_tokens"] == tokens
    assert trainer.flops_ledger.stages["updates"]["train_tokens"] == tokens

    def grad_of(loss):
        model.zero_grad(set_to_none=True)
        loss.backward()
        return torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).flatten() for p in model.parameters()])

    ids = torch.cat([out["prompt_ids"], out["completion_ids"]], 1)
    attention = torch.cat([out["prompt_mask"], out["completion_mask"]], 1)
    continuation = torch.cat([torch.zeros_like(out["prompt_mask"]), out["completion_mask"]], 1)

    def reinforce(targets):  # objective.py's formula: -advantage x log p(token) over the masked targets
        logits = model(input_ids=ids, attention_mask=attention).logits[:, :-1]
        logp = logits.log_softmax(-1).gather(-1, ids[:, 1:, None]).squeeze(-1)
        return reinforce_loss(logp, out["advantages"], targets[:, 1:], MAX_LEN)

    # Group-mean advantages sum to zero over a group, whose samples share one prompt, so terms for
    # prompt tokens would cancel: advantages that do not cancel make the comparison below sharp.
    out["advantages"] = torch.tensor([1.0, 0.5, -0.3, 0.2, 0.7, -1.0])
    trainer_grad = grad_of(trainer._compute_loss(model, out))
    assert trainer_grad.abs().sum() > 0
    # the trainer's gradient is REINFORCE on the continuation's tokens; had it also trained the
    # prefix's (or problem's) tokens as targets, the gradient would differ
    assert torch.allclose(grad_of(reinforce(continuation)), trainer_grad, rtol=1e-4, atol=1e-7)
    assert not torch.allclose(grad_of(reinforce(attention)), trainer_grad, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("name", ["sort", "chain"])
def test_reward_scores_prefix_plus_continuation(name, sort_task, chain_task):
    task = {"sort": sort_task, "chain": chain_task}[name]
    problem = task.problems("train")[0]
    trace = solve_sort(problem.prompt) if name == "sort" else solve_chain(problem.prompt)
    assert task.verify(problem, trace).reward == 1.0
    reward = reward_function(task, {problem.id: problem})

    def score(prefixes, continuations):
        return reward(prompts=[problem.prompt + p for p in prefixes], completions=continuations,
                      problem_id=[problem.id] * len(prefixes), prefix=prefixes)

    cuts = range(len(trace) + 1)
    assert score([trace[:h] for h in cuts], [trace[h:] for h in cuts]) == [1.0] * len(cuts)
    inner = range(1, len(trace))
    assert score([""] * len(inner), [trace[h:] for h in inner]) == [0.0] * len(inner)  # continuation alone
    wrong = trace[:-2] + ("1" if trace[-2] == "0" else "0") + "."  # a wrong last digit of the answer
    before = range(len(trace) - 1)  # cuts that leave the wrong digit in the continuation
    assert score([trace[:h] for h in before], [wrong[h:] for h in before]) == [0.0] * len(before)


def test_metrics_split_by_prefixed_groups(setup, sort_task, tmp_path):
    trainer = make_trainer(setup, reward_function(sort_task, setup.problems), tmp_path)
    (pid, problem), (other, _) = setup.problems.items()
    trace = solve_sort(problem.prompt)
    groups = [(True, trace[:40], [trace[40:], " 1:9"]),  # rewards 1, 0
              (False, "", ["", " =1."]),  # 0, 0
              (True, trace[:60], [trace[60:], trace[60:]]),  # 1, 1
              (False, "", [trace, "x"])]  # 1, 0
    inputs, completions = [], []
    for prefixed, prefix, samples in groups:
        for sample in samples:
            inputs.append({"prompt": problem.prompt + prefix, "problem_id": pid, "prefix": prefix, "prefixed": prefixed})
            completions.append(sample)
    rewards = trainer._calculate_rewards(inputs, [x["prompt"] for x in inputs], completions,
                                         [setup.tok(c)["input_ids"] for c in completions])
    assert rewards.squeeze(1).tolist() == [1, 0, 0, 0, 1, 1, 1, 0]
    metrics = trainer._metrics["train"]
    assert metrics["prefixed/reward"] == [0.75] and metrics["prefixed/zero_advantage"] == [0.5]
    assert metrics["unprefixed/reward"] == [0.25] and metrics["unprefixed/zero_advantage"] == [0.5]
    trainer._calculate_rewards(inputs[2:4], [x["prompt"] for x in inputs[2:4]], completions[2:4], [[1], [1]])
    assert metrics["unprefixed/reward"] == [0.25, 0.0] and metrics["unprefixed/zero_advantage"] == [0.5, 1.0]
    assert metrics["prefixed/reward"] == [0.75]  # no prefixed group: nothing logged for them


CFG = TrainConfig(steps=2, problems_per_step=2, num_generations=2, max_completion_length=MAX_LEN, eval_every=1,
                  eval_n=2, save_every=1)


def run_train(setup, task, out_dir):
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(train_module, "reward_function", mixed_rewards)
        return train(task, str(setup.model_dir), setup.rows, out_dir, CFG,
                     eval_problems={"train": list(setup.problems.values()), "heldout": task.problems("heldout")[:2]})


@pytest.fixture(scope="module")
def trained(setup, sort_task, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    assert run_train(setup, sort_task, out) == out / "model"
    return out


def read(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_end_to_end_run(setup, trained):
    metrics = read(trained / "metrics.jsonl")
    steps = [r for r in metrics if "loss" in r]
    assert [r["step"] for r in steps] == [1, 2]
    for r in steps:
        assert torch.isfinite(torch.tensor(r["loss"])) and r["grad_norm"] > 0  # mixed groups: a real gradient
        assert [r[f"{k}/zero_advantage"] for k in ("prefixed", "unprefixed") if f"{k}/reward" in r] in ([0.0], [0.0, 0.0])
    assert steps[0]["flops/total"] < steps[1]["flops/total"]
    evals = read(trained / "eval.jsonl")
    assert [r["step"] for r in evals] == [0, 1, 2]
    assert [r["flops"] for r in evals] == [0, steps[0]["flops/total"], steps[1]["flops/total"]]
    assert all(0 <= r[f"eval/{s}/pass@1"] <= 1 for r in evals for s in ("train", "heldout"))

    ledger = json.loads((trained / "flops.json").read_text())
    rollouts, updates = ledger["stages"]["rollouts"], ledger["stages"]["updates"]
    assert set(ledger["stages"]) == {"rollouts", "updates"} and ledger["total"] == steps[1]["flops/total"]
    assert updates["train_tokens"] == rollouts["inference_tokens"] == steps[1]["num_tokens"]  # prompt + completion
    assert updates["flops"] == 3 * rollouts["flops"] > 0
    checkpoints = trained / "checkpoints"
    assert FlopsLedger(checkpoints / "checkpoint-1" / "flops.json").total == steps[0]["flops/total"]
    assert FlopsLedger(checkpoints / "checkpoint-2" / "flops.json").total == ledger["total"]
    assert json.loads((trained / "manifest.json").read_text())["flops"] == ledger["total"]

    before = AutoModelForCausalLM.from_pretrained(setup.model_dir).state_dict()
    after = AutoModelForCausalLM.from_pretrained(trained / "model").state_dict()
    assert before.keys() == after.keys() and all(torch.isfinite(v).all() for v in after.values())
    moved = [k for k in before if not torch.equal(before[k], after[k])]
    assert "model.norm.weight" in moved and "model.layers.0.mlp.down_proj.weight" in moved


def test_resume_matches_an_uninterrupted_run(setup, sort_task, trained, tmp_path):
    out = tmp_path / "killed"
    shutil.copytree(trained, out)  # a run killed after checkpoint-1 (its logs ran on past it)
    shutil.rmtree(out / "model")
    shutil.rmtree(out / "checkpoints" / "checkpoint-2")
    stale = out / "evals" / "step-2-train" / "stale"  # step 2's evaluation, of the policy the kill lost
    stale.write_text("")
    run_train(setup, sort_task, out)
    assert not stale.exists() and (out / "evals" / "step-2-train").is_dir()  # sampled anew
    assert (out / "evals" / "step-1-train").is_dir()
    assert [r["step"] for r in read(out / "metrics.jsonl")] == [r["step"] for r in read(trained / "metrics.jsonl")]
    assert [r["step"] for r in read(out / "eval.jsonl")] == [0, 1, 2]
    resumed, fresh = (json.loads((d / "flops.json").read_text()) for d in (out, trained))
    assert resumed == fresh  # same seed on CPU: the same tokens, counted once
    final = {k: v for k, v in read(out / "metrics.jsonl")[1].items() if k != "step_time"}
    assert final == {k: v for k, v in read(trained / "metrics.jsonl")[1].items() if k != "step_time"}
    after = AutoModelForCausalLM.from_pretrained(out / "model").state_dict()
    reference = AutoModelForCausalLM.from_pretrained(trained / "model").state_dict()
    assert all(torch.allclose(after[k], reference[k]) for k in reference)


def test_a_run_folder_refuses_other_settings(setup, sort_task, trained, tmp_path):
    """Finished or not, a run is not resumed (or reused) under another config: its numbers would be
    reported as the new config's."""
    from dataclasses import replace

    from prefixrl.files import InputError

    out = tmp_path / "run"
    shutil.copytree(trained, out)
    with pytest.raises(InputError, match=rf"other settings \(lr: {CFG.lr!r} -> {2 * CFG.lr!r}\)"):
        train(sort_task, str(setup.model_dir), setup.rows, out, replace(CFG, lr=2 * CFG.lr))
    assert train(sort_task, str(setup.model_dir), setup.rows, out, replace(CFG, progress_bar=False)) == out / "model"


def all_grads(model):
    return torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).flatten() for p in model.parameters()])


def test_one_backward_per_part_gives_the_batch_gradient_and_each_parts_norm(setup, sort_task, tmp_path):
    trainer = make_trainer(setup, mixed_rewards(sort_task, setup.problems), tmp_path)
    model = trainer.model
    prefixed = [r for r in setup.rows if r["prefixed"]]
    batch = [dict(r) for r in (prefixed[0], setup.rows[-1], prefixed[4]) for _ in range(2)]
    torch.manual_seed(0)
    out = trainer._generate_and_score_completions(batch)
    assert out["is_prefixed"].tolist() == [True, True, False, False, True, True]
    out["advantages"] = torch.tensor([1.0, 0.5, -0.3, 0.2, 0.7, -1.0])  # nonzero for every row

    def grad_of(loss):
        model.zero_grad(set_to_none=True)
        loss.backward()
        return all_grads(model)

    whole_loss = GRPOTrainer._compute_loss(trainer, model, out)  # TRL's one pass over the batch
    whole = grad_of(whole_loss)
    parts = {}
    for name, rows in (("prefixed", out["is_prefixed"]), ("unprefixed", ~out["is_prefixed"])):
        part = {k: v[rows] if isinstance(v, torch.Tensor) and v.dim() else v for k, v in out.items()}
        parts[name] = grad_of(GRPOTrainer._compute_loss(trainer, model, part) * rows.float().mean())
    model.zero_grad(set_to_none=True)
    loss = trainer.compute_loss(model, out)
    loss.backward()  # adds nothing: compute_loss ran both backward passes
    assert torch.allclose(all_grads(model), whole, rtol=1e-4, atol=1e-7)
    assert loss.item() == pytest.approx(whole_loss.item(), rel=1e-5)
    assert torch.allclose(parts["prefixed"] + parts["unprefixed"], whole, rtol=1e-4, atol=1e-7)
    metrics = trainer._metrics["train"]
    for name, grad in parts.items():
        assert metrics[f"{name}/grad_norm"] == [pytest.approx(grad.norm().item(), rel=1e-4)]
        assert metrics[f"{name}/entropy"] and all(0 < e < 5 for e in metrics[f"{name}/entropy"])
    trainer.split_grad_norms = False  # TRL's single pass: the same gradient, no per-part norms
    model.zero_grad(set_to_none=True)
    trainer.compute_loss(model, out).backward()
    assert torch.allclose(all_grads(model), whole, rtol=1e-4, atol=1e-7)
    assert [len(metrics[f"{name}/grad_norm"]) for name in parts] == [1, 1]


@pytest.mark.parametrize("split", [True, False])
def test_rows_with_zero_advantage_are_left_out_of_the_update_and_the_gradient_is_the_same(setup, sort_task,
                                                                                          tmp_path, split):
    """Rows whose advantage is 0 add nothing to the gradient: the update gives them a forward pass
    without gradient (their entropy is still logged) and no backward, and the gradient equals TRL's
    pass over the whole batch; a part whose rows all have advantage 0 logs a gradient norm of 0."""
    trainer = make_trainer(setup, mixed_rewards(sort_task, setup.problems), tmp_path)
    trainer.split_grad_norms = split
    model = trainer.model
    prefixed = [r for r in setup.rows if r["prefixed"]]
    batch = [dict(r) for r in (prefixed[0], setup.rows[-1], prefixed[4]) for _ in range(2)]
    torch.manual_seed(0)
    out = trainer._generate_and_score_completions(batch)
    out["advantages"] = torch.tensor([1.0, 0.0, 0.0, 0.0, 0.7, -1.0])  # the unprefixed rows: none

    model.zero_grad(set_to_none=True)
    whole_loss = GRPOTrainer._compute_loss(trainer, model, out)
    whole_loss.backward()
    whole = all_grads(model)
    seen = []
    hook = model.register_forward_pre_hook(lambda _, args, kwargs: seen.append(kwargs["input_ids"].shape[0]),
                                           with_kwargs=True)
    model.zero_grad(set_to_none=True)
    loss = trainer.compute_loss(model, out)
    loss.backward()
    hook.remove()
    # per part, the rows with advantage 0 (a forward without gradient, for their entropy), then the rest
    assert seen == ([1, 3, 2] if split else [3, 3])
    assert torch.allclose(all_grads(model), whole, rtol=1e-4, atol=1e-7)
    assert loss.item() == pytest.approx(whole_loss.item(), rel=1e-5)
    if split:
        assert trainer._metrics["train"]["unprefixed/grad_norm"] == [0.0]
        assert trainer._metrics["train"]["unprefixed/entropy"]  # logged from the forward without gradient
    trainer.skip_zero_advantage = False  # every row through the model again
    seen.clear()
    hook = model.register_forward_pre_hook(lambda _, args, kwargs: seen.append(kwargs["input_ids"].shape[0]),
                                           with_kwargs=True)
    model.zero_grad(set_to_none=True)
    trainer.compute_loss(model, out).backward()
    hook.remove()
    assert sum(seen) == 6 and torch.allclose(all_grads(model), whole, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("weight", ["is", "luffy"])
def test_off_policy_trace_joins_each_group_with_its_weight(setup, sort_task, tmp_path, weight):
    tok = setup.tok
    traces = {pid: tok(solve_sort(p.prompt), add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
              for pid, p in setup.problems.items()}
    trainer = make_trainer(setup, reward_function(sort_task, setup.problems), tmp_path, kind=OffPolicyTrainer,
                           off_policy=OffPolicyTraces(weight, traces, {}))
    model = trainer.model
    # behaviour log-probs = the policy's own: pi/mu = 1, so `is` must equal REINFORCE on the trace
    behaviour = {pid: sequence_logprobs(model, tok, setup.problems[pid].prompt, ids) for pid, ids in traces.items()}
    trainer.off_policy = OffPolicyTraces(weight, traces, behaviour)
    batch = [dict(r) for r in setup.rows if not r["prefixed"] for _ in range(2)]
    torch.manual_seed(0)
    out = trainer._generate_and_score_completions(batch)
    assert out["off_policy"].tolist() == [False, True, False, True]  # each group's last sample
    for i, row in enumerate(batch):
        ids = out["completion_ids"][i][out["completion_mask"][i].bool()].tolist()
        assert (ids == traces[row["problem_id"]]) == (i % 2 == 1)
    assert out["advantages"].tolist() == [-0.5, 0.5, -0.5, 0.5]  # the random policy fails, the trace succeeds

    ids = torch.cat([out["prompt_ids"], out["completion_ids"]], 1)
    attention = torch.cat([out["prompt_mask"], out["completion_mask"]], 1)
    targets = torch.cat([torch.zeros_like(out["prompt_mask"]), out["completion_mask"]], 1)[:, 1:]
    off = out["off_policy"][:, None]

    def expected_loss():
        logits = model(input_ids=ids, attention_mask=attention).logits[:, :-1]
        logp = logits.log_softmax(-1).gather(-1, ids[:, 1:, None]).squeeze(-1)
        trace_term = logp if weight == "is" else logp.exp() / (logp.exp() + 0.1)
        per_token = torch.where(off, trace_term, logp) * out["advantages"][:, None] * targets
        return -per_token.sum() / (len(batch) * MAX_LEN)

    model.zero_grad(set_to_none=True)
    expected_loss().backward()
    expected = all_grads(model)
    model.zero_grad(set_to_none=True)
    trainer._compute_loss(model, out).backward()
    assert expected.abs().sum() > 0 and torch.allclose(all_grads(model), expected, rtol=1e-4, atol=1e-7)
    if weight == "is":
        assert trainer._metrics["train"]["importance_weight/mean"] == [pytest.approx(1.0, abs=1e-4)]


def test_evaluation_skips_an_empty_problem_set(setup, sort_task, tmp_path, caplog):
    """No held-out problems (e.g. --task math without a heldout= file): the hard ones are evaluated,
    the empty set is left out (no pass@1 of nothing) and the log says so."""
    trainer = SimpleNamespace(accelerator=SimpleNamespace(is_main_process=True))
    cfg = TrainConfig(eval_n=1, max_completion_length=8)
    with caplog.at_level("WARNING", logger="prefixrl.callbacks"):
        evaluator = callbacks.UnprefixedEval(lambda: trainer, sort_task, {"train": list(setup.problems.values()),
                                                "heldout": []}, cfg, tmp_path, FlopsLedger(), [])
    row = evaluator._evaluate(0, tiny_model(setup.tok, SMALL), setup.tok, tmp_path / "evals")
    assert 0 <= row["eval/train/pass@1"] <= 1 and not any("heldout" in key for key in row)
    assert "no heldout problems to evaluate on: evaluating on train only" in caplog.text


def test_eval_every_0_means_no_evaluation_at_all(setup, sort_task, tmp_path):
    """train() itself keeps the rule (not only the CLI): not at step 0, not after the last step."""
    cfg = TrainConfig(steps=1, problems_per_step=2, num_generations=2, max_completion_length=16, eval_every=0,
                      save_every=1, progress_bar=False)
    train(sort_task, str(setup.model_dir), setup.rows, tmp_path, cfg, eval_problems={"train": list(setup.problems.values())})
    assert (tmp_path / "model").is_dir() and not (tmp_path / "eval.jsonl").exists()


def test_evaluation_samples_in_batches_of_eval_batch_size(setup, sort_task, tmp_path, monkeypatch):
    made = record_sampler_params(monkeypatch, callbacks)
    trainer = SimpleNamespace(accelerator=SimpleNamespace(is_main_process=True))
    cfg = TrainConfig(eval_n=1, max_completion_length=8, eval_batch_size=3)
    evaluator = callbacks.UnprefixedEval(lambda: trainer, sort_task, {"train": list(setup.problems.values())}, cfg,
                                            tmp_path, FlopsLedger(), [])
    evaluator._evaluate(0, tiny_model(setup.tok, SMALL), setup.tok, tmp_path / "evals")
    assert [(p.batch_size, p.max_new_tokens) for p in made] == [(3, 8)]
    with pytest.raises(ValueError, match="eval_batch_size"):
        TrainConfig(eval_batch_size=0)


def test_resume_skips_a_half_written_checkpoint(tmp_path):
    """A kill mid-save leaves checkpoint-N without its last files: the one before it is resumed."""
    def checkpoint(step, *files):
        folder = tmp_path / "checkpoints" / f"checkpoint-{step}"
        folder.mkdir(parents=True)
        for name in ("model.safetensors", *files):
            (folder / name).write_text("{}")
        return folder

    assert train_module._last_checkpoint(tmp_path) is None
    checkpoint(2, "trainer_state.json")  # killed before the ledger was written: incomplete
    assert train_module._last_checkpoint(tmp_path) is None
    complete = checkpoint(1, "trainer_state.json", "flops.json")
    checkpoint(10)  # killed while writing the weights
    assert train_module._last_checkpoint(tmp_path) == complete
    assert train_module._last_checkpoint(tmp_path / "nowhere") is None


def test_rollouts_on_cpu_sample_as_trl_does(setup, sort_task, tmp_path):
    """On CPU the trainer's rollouts go through generate_fast's decode loop (sampler "auto"), and from
    the same RNG state they are TRL's own `model.generate` rollouts (sampler "hf"), token for token
    (but for a rare float-rounding tie), each cut after its first <eos>."""
    reward = reward_function(sort_task, setup.problems)
    fast = make_trainer(setup, reward, tmp_path / "fast")
    trl = make_trainer(setup, reward, tmp_path / "hf", sampler="hf")
    assert fast.fast_rollouts and not trl.fast_rollouts
    prompt_ids = [setup.tok(r["prompt"], add_special_tokens=False)["input_ids"] for r in setup.rows[:4]] * 4
    samples = {}
    for name, trainer in (("fast", fast), ("hf", trl)):
        torch.manual_seed(0)
        samples[name], logprobs = trainer._generate_single_turn(prompt_ids, None, {}, 2)
        assert logprobs is None
    same = sum(a == b for a, b in zip(samples["fast"], samples["hf"]))
    assert same >= len(prompt_ids) - 1 and len({len(ids) for ids in samples["hf"]}) > 1
    with pytest.raises(ValueError, match="sampler 'fast' cannot.*half precision"):
        PrefixRLTrainer(model=tiny_model(setup.tok, SMALL), reward_funcs=reward, processing_class=setup.tok,
                        args=grpo_config(TrainConfig(steps=1, problems_per_step=2, num_generations=2, bf16=True),
                                         tmp_path / "bf16"),
                        train_dataset=Dataset.from_list(setup.rows), flops_ledger=FlopsLedger(), sampler="fast")
