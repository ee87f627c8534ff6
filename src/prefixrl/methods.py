"""Every method on one engine: PrefixRL, its ablations and the paper's baselines.

    prefixrl train MODEL --task chain --data runs/prefixes/train.jsonl --traces runs/traces/traces.jsonl \
        --method sft-rl --out runs/sft-rl

All share `train.train` (TRL's GRPOTrainer with the same objective, batch and evaluation); they
differ only in their training rows, a stage before RL, or the one sample per group that a trace
replaces:

| method | trains on |
|---|---|
| prefixrl | 3 prefixed : 1 unprefixed rows (the paper's mix) |
| prefixrl-only | prefixed rows only (back-generalization) |
| rl | unprefixed rows, 8 samples per problem |
| rl-n64 | unprefixed rows, 64 samples per problem |
| sft-rl | SFT on the traces (TRL SFTTrainer), then `rl` from the SFT model |
| offpolicy-is | unprefixed groups whose last sample is the trace, weighted by pi/mu per token |
| luffy | the same groups, the trace weighted by LUFFY's shaping pi/(pi + 0.1) |
| hint | the prefix given in the user turn as a hint (BREAD-style), not as the answer's start |
| prefixrl-adaptive | prefixrl with prefixes re-chosen from the policy's measured success (adaptive.py) |
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

from transformers import AutoTokenizer

from prefixrl.flops import FlopsLedger
from prefixrl.models import encode_prompt, load_model, n_params, sequence_logprobs
from prefixrl.adaptive import AdaptiveConfig, AdaptivePrefixes
from prefixrl.prefixes import PrefixConfig, hint_rows, render_prompt
from prefixrl.runinfo import model_fingerprint, rows_fingerprint, run_folder
from prefixrl.tasks import Problem, Task, problems_by_id, task_args
from prefixrl.train import OffPolicyTraces, TrainConfig, train, world_size

METHODS = {
    "prefixrl": "3 prefixed : 1 unprefixed problems",
    "prefixrl-only": "prefixed problems only",
    "rl": "unprefixed problems, 8 samples each",
    "rl-n64": "unprefixed problems, 64 samples each",
    "sft-rl": "SFT on the traces, then rl",
    "offpolicy-is": "the trace in each group, token-level importance weights",
    "luffy": "the trace in each group, LUFFY's shaped weights",
    "hint": "the prefix as a hint in the user turn",
    "prefixrl-adaptive": "prefixrl, prefixes re-chosen as the policy improves, a growing trace pool",
}
USES_TRACES = {"sft-rl", "offpolicy-is", "luffy", "prefixrl-adaptive"}  # besides the rows cut from them
TRACE_FREE = {"rl", "rl-n64"}  # never see a trace: not charged the collection FLOPs
# work outside the shared RL loop, which every process would do alone, writing the same files
ONE_PROCESS = {"sft-rl": "its SFT stage would run in every process, each writing the same sft/ folder",
               "offpolicy-is": "every process would compute the behaviour log-probs of every trace alone",
               "luffy": "every process would compute the behaviour log-probs of every trace alone",
               "prefixrl-adaptive": "its calibration and trace pool are not shared between processes"}


def select_rows(rows: list[dict], method: str, tokenizer=None, problems: dict[str, Problem] | None = None) -> list[dict]:
    """The training rows a method uses: all methods read one data file (`prefixrl prefixes`)."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}: choose one of {', '.join(METHODS)}")
    if method == "hint":
        selected = hint_rows(tokenizer, rows, problems)
    elif method in ("prefixrl", "prefixrl-adaptive"):
        selected = rows
    elif method == "prefixrl-only":
        selected = [r for r in rows if r["prefixed"]]
    else:
        selected = [r for r in rows if not r["prefixed"]]
    if not selected:
        raise ValueError(f"method {method!r} found no rows to train on ({METHODS[method]})")
    return selected


def run_method(method: str, task: Task, model_path: str, rows: list[dict], out_dir: str | Path,
               cfg: TrainConfig | None = None, traces: list[dict] | None = None,
               eval_problems: dict[str, list[Problem]] | None = None, prior_flops: FlopsLedger | None = None,
               sft_cfg=None, prefix_cfg: PrefixConfig | None = None, adaptive_cfg: AdaptiveConfig | None = None
               ) -> Path:
    """Train `method` from `model_path` into out_dir (resumable); returns the trained model's folder.
    The folder is the method's: a rerun with another method, model, rows or traces is refused."""
    if method in ONE_PROCESS and world_size() > 1:  # before anything runs
        raise ValueError(f"method {method!r} runs in one process ({ONE_PROCESS[method]}); launch it without "
                         "accelerate (or with --num_processes 1)")
    identity = {"task": task.name, "task_args": task_args(task), "method": method,
                "model": model_fingerprint(model_path), "_model_path": model_path, "rows": rows_fingerprint(rows),
                "traces": rows_fingerprint(traces) if method in USES_TRACES else None}
    main = int(os.environ.get("RANK", "0")) == 0  # one lock per run, taken by its main process
    with run_folder(out_dir, "train", identity, lock=main):
        return _run_method(method, task, model_path, rows, Path(out_dir), cfg, traces, eval_problems, prior_flops,
                           sft_cfg, prefix_cfg, adaptive_cfg)


def _run_method(method, task, model_path, rows, out_dir, cfg, traces, eval_problems, prior_flops, sft_cfg,
                prefix_cfg, adaptive_cfg) -> Path:
    cfg = cfg or TrainConfig()
    problems = problems_by_id(task)
    problems.update({p.id: p for ps in (eval_problems or {}).values() for p in ps})
    if method in USES_TRACES and not traces:
        raise ValueError(f"method {method!r} trains on the traces themselves: pass them (--traces traces.jsonl)")
    tokenizer = AutoTokenizer.from_pretrained(model_path)  # the hint rows need only the tokenizer
    selected = select_rows(rows, method, tokenizer, problems)
    wanted = {r["problem_id"] for r in selected}
    if method in USES_TRACES:
        traces = [t for t in traces if t["problem_id"] in wanted]
        if not traces:
            raise ValueError(f"method {method!r}: none of the traces given is for a training problem: pass the "
                             f"traces the training rows were cut from")
    if method == "rl-n64":
        cfg = replace(cfg, num_generations=64)
    if method == "sft-rl":
        from prefixrl.generate import SamplingParams
        from prefixrl.sft import SFTStageConfig, sft

        sft_cfg = sft_cfg or SFTStageConfig()
        validation = validation_problems(task, sft_cfg.validation_problems) if sft_cfg.sweep_lr else None
        eval_params = SamplingParams(temperature=cfg.eval_temperature, max_new_tokens=cfg.max_completion_length,
                                     batch_size=cfg.eval_batch_size, backend=cfg.sampler)  # as the RL stage evaluates
        model_path = str(sft(task, model_path, traces, problems, out_dir / "sft", sft_cfg, prior_flops,
                             validation, eval_params))
        prior_flops = FlopsLedger(out_dir / "sft" / "flops.json")
    off_policy = None
    if method in ("offpolicy-is", "luffy"):
        ledger = FlopsLedger()
        if prior_flops:
            ledger.merge(prior_flops)
        prior_flops = ledger
        off_policy = off_policy_traces(model_path, traces, problems,
                                       "is" if method == "offpolicy-is" else "luffy", cfg, prior_flops)
    adaptive = None
    if method == "prefixrl-adaptive":
        adaptive = AdaptivePrefixes(task, problems, traces,
                                    prefix_cfg or PrefixConfig(), adaptive_cfg or AdaptiveConfig(), out_dir,
                                    cfg.max_completion_length, cfg.eval_batch_size)
    return train(task, model_path, selected, out_dir, cfg, eval_problems=eval_problems, prior_flops=prior_flops,
                 off_policy=off_policy, adaptive=adaptive)


def validation_problems(task: Task, n: int) -> list[Problem]:
    """The first n problems of the task's "validation" split: hard problems neither trained on nor
    held out, on which the sft-rl baseline's SFT is tuned."""
    try:
        return task.problems("validation")[:n]
    except ValueError as err:
        raise ValueError(f"task {task.name!r} has no validation split ({err}), which sft-rl's SFT sweep tunes on: "
                         "set sft.sweep_lr to [] to train a fixed lr and epochs instead") from err


def off_policy_traces(model_path: str, traces: list[dict], problems: dict[str, Problem], weight: str,
                      cfg: TrainConfig, ledger: FlopsLedger) -> OffPolicyTraces:
    """One trace per problem (its first), in the policy's tokens with <eos>, and the behaviour
    policy's log-probs of its tokens: those recorded at collection when the policy tokenizes the
    trace exactly as the sampler did; otherwise (imported traces, another tokenizer) the starting
    policy's own log-probs (at the rollout temperature, as TRL scores the policy) stand in for the
    unknown behaviour policy, at the charge of one forward pass (pi/mu then starts at 1, as if the
    policy had sampled the trace)."""
    model, tokenizer = load_model(model_path, device="cpu")
    token_ids, logprobs = {}, {}
    for trace in traces:
        pid = trace["problem_id"]
        if pid in token_ids:
            continue
        ids = tokenizer(trace["completion"], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        if len(ids) > cfg.max_completion_length:
            raise ValueError(f"the trace for problem {pid!r} has {len(ids)} tokens, more than "
                             f"max_completion_length={cfg.max_completion_length}: raise it, or drop the trace")
        recorded = trace.get("logprobs")
        if recorded and list(trace.get("token_ids") or []) == ids and len(recorded) == len(ids):
            logprobs[pid] = list(recorded)
        else:
            prompt = render_prompt(tokenizer, problems[pid].prompt)  # the unprefixed row's, as the trainer's
            logprobs[pid] = sequence_logprobs(model, tokenizer, prompt, ids, cfg.temperature)
            ledger.add("behaviour_forward", n_params=n_params(model),
                       inference_tokens=len(encode_prompt(tokenizer, prompt)) + len(ids))
        token_ids[pid] = ids
    return OffPolicyTraces(weight=weight, token_ids=token_ids, behaviour_logprobs=logprobs,
                           is_truncation=cfg.is_truncation, luffy_gamma=cfg.luffy_gamma)

