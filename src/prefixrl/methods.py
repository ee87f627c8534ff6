"""Every method, one record each: PrefixRL, its ablations and the paper's baselines.

    prefixrl train MODEL --task chain --data runs/prefixes/train.jsonl --traces runs/traces/traces.jsonl \
        --method sft-rl --out runs/sft-rl

All share `train.train` (TRL's GRPOTrainer with the same objective, batch and evaluation); they
differ only in their training rows, a stage before RL, or the one sample per group that a trace
replaces (engine.run_method reads the record and does the rest). Nothing here imports torch: the
CLI's help, the experiment config's check and the report read these records.

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

from dataclasses import dataclass


@dataclass(frozen=True)
class Method:
    name: str
    summary: str
    rows: str  # the training rows it keeps: all | prefixed | unprefixed | hint (the prefix moved into the prompt)
    uses_traces: bool = False  # reads the traces themselves, besides the rows cut from them
    charged_collection: bool = True  # pays the trace collection's FLOPs (False: never sees a trace)
    one_process: str | None = None  # why it cannot run under `accelerate launch` (its own stage: every process
    # would do it alone, writing the same files); None: it can
    stage: str | None = None  # before or beside RL: sft (SFT on the traces) | behaviour (the traces' log-probs,
    # offpolicy.py) | adaptive (re-calibrated prefixes, adaptive.py)
    off_policy_weight: str | None = None  # is | luffy: the trace's token weight (offpolicy.OffPolicyTraces.weight)
    num_generations: int | None = None  # samples per problem, fixed by the method (None: TrainConfig's)


_BEHAVIOUR = "every process would compute the behaviour log-probs of every trace alone"
METHODS = {m.name: m for m in (
    Method("prefixrl", "3 prefixed : 1 unprefixed problems", rows="all"),
    Method("prefixrl-only", "prefixed problems only", rows="prefixed"),
    Method("rl", "unprefixed problems, 8 samples each", rows="unprefixed", charged_collection=False),
    Method("rl-n64", "unprefixed problems, 64 samples each", rows="unprefixed", charged_collection=False,
           num_generations=64),
    Method("sft-rl", "SFT on the traces, then rl", rows="unprefixed", uses_traces=True, stage="sft",
           one_process="its SFT stage would run in every process, each writing the same sft/ folder"),
    Method("offpolicy-is", "the trace in each group, token-level importance weights", rows="unprefixed",
           uses_traces=True, stage="behaviour", off_policy_weight="is", one_process=_BEHAVIOUR),
    Method("luffy", "the trace in each group, LUFFY's shaped weights", rows="unprefixed", uses_traces=True,
           stage="behaviour", off_policy_weight="luffy", one_process=_BEHAVIOUR),
    Method("hint", "the prefix as a hint in the user turn", rows="hint"),
    Method("prefixrl-adaptive", "prefixrl, prefixes re-chosen as the policy improves, a growing trace pool",
           rows="all", uses_traces=True, stage="adaptive",
           one_process="its calibration and trace pool are not shared between processes"),
)}


def method(name: str) -> Method:
    """The record of method `name`; an unknown name is an error that lists the known ones."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}: choose one of {', '.join(METHODS)}")
    return METHODS[name]


def select_rows(rows: list[dict], name: str, tokenizer=None, problems: dict | None = None) -> list[dict]:
    """The training rows a method uses: all methods read one data file (`prefixrl prefixes`)."""
    keeps = method(name).rows
    if keeps == "hint":
        from prefixrl.prefixes import hint_rows  # (it renders prompts with the tokenizer: torch)

        selected = hint_rows(tokenizer, rows, problems)
    else:
        selected = [r for r in rows if keeps == "all" or bool(r["prefixed"]) == (keeps == "prefixed")]
    if not selected:
        raise ValueError(f"method {name!r} found no rows to train on ({METHODS[name].summary})")
    return selected
