"""`prefixrl export verl`: the prefixed training set in verl's Parquet format, with its reward.

    prefixrl export verl runs/demo/prefixes/train.jsonl --task chain --out runs/verl

verl (github.com/verl-project/verl) trains on Parquet rows of `data_source`, `prompt` (chat
messages), `ability`, `reward_model` {style, ground_truth} and `extra_info` (as its
examples/data_preprocess/gsm8k.py writes them), renders `prompt` with the chat template and a
generation prompt, and scores responses with `compute_score(data_source, solution_str,
ground_truth, extra_info)` from a file named by custom_reward_function.path.

Two things PrefixRL needs, and how they map onto verl:
- The prefix is an unfinished assistant turn: the policy continues it. verl always renders with
  add_generation_prompt=True, which would close the prefix's turn and open a new one. So each
  row's `prompt` is one message holding the prompt prefixrl rendered (the model's own template,
  then the prefix verbatim: prefixes.render_prompt), and verl renders it verbatim with an identity
  template, `actor_rollout_ref.model.custom_chat_template="{{ messages[0].content }}"` (the
  rollout workers apply it; verl's driver-side length filter does not, so it counts a few
  template tokens too many). The real messages (the problem as the user's turn, the prefix as
  the assistant's) are kept in extra_info["messages"]. Checked with verl 0.9.1: its dataset reads
  the files and its rollout tokenizer (the Continuous Token builders) gives prefixrl's prompt ids.
- The reward scores prefix + continuation: reward.py prepends extra_info["prefix"] to verl's
  response and verifies with the task's own verifier. extra_info also keeps the problem id,
  prefix fraction, prefix tokens and trace index, so verl's logs can be split by them.

Files: train.parquet (every row), val.parquet (each problem once, unprefixed: the paper's
training reward), heldout.parquet (with --heldout: those problems, rendered with --model's
tokenizer), reward.py, and run_verl.sh (the paper's recipe as a verl command).
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from prefixrl.files import InputError, atomic_write_bytes, atomic_write_text
from prefixrl.models import encode_prompt
from prefixrl.tasks import Problem, Task, task_args

IDENTITY_TEMPLATE = "{{ messages[0].content }}"
MESSAGES = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))
SCHEMA = pa.schema([
    ("data_source", pa.string()),
    ("prompt", MESSAGES),  # one message: the fully rendered prompt, ending with the prefix
    ("ability", pa.string()),
    ("reward_model", pa.struct([("style", pa.string()), ("ground_truth", pa.string())])),
    ("extra_info", pa.struct([
        ("split", pa.string()), ("index", pa.int64()), ("task", pa.string()),
        ("task_args", pa.string()),  # JSON: the options the reward loads the task with
        ("problem_id", pa.string()),
        ("problem", pa.string()),  # Problem.to_dict() as JSON: what the task's verifier needs
        ("prefix", pa.string()), ("prefixed", pa.bool_()), ("prefix_fraction", pa.float64()),
        ("prefix_tokens", pa.int64()), ("trace_index", pa.int64()),
        ("messages", MESSAGES),  # the chat: the problem (user), the prefix (unfinished assistant turn)
    ])),
])


def verl_row(task: Task, problem: Problem, prompt: str, prefix: str, split: str, index: int,
             row: dict | None = None) -> dict:
    """One verl row. `prompt` is the rendered prompt the policy continues; it ends with `prefix`."""
    if not prompt.endswith(prefix):
        raise InputError(f"row {index} ({problem.id}): its prompt does not end with its prefix")
    row = row or {}
    messages = [{"role": "user", "content": problem.prompt}]
    if prefix:
        messages.append({"role": "assistant", "content": prefix})  # unfinished: the policy continues it
    return {
        "data_source": f"prefixrl/{task.name}",
        "prompt": [{"role": "user", "content": prompt}],
        "ability": task.name,
        "reward_model": {"style": "rule", "ground_truth": problem.answer},
        "extra_info": {"split": split, "index": index, "task": task.name,
                       "task_args": json.dumps(_portable(task_args(task))), "problem_id": problem.id,
                       "problem": json.dumps(problem.to_dict()), "prefix": prefix, "prefixed": bool(prefix),
                       "prefix_fraction": float(row.get("prefix_fraction", 0.0)),
                       "prefix_tokens": int(row.get("prefix_tokens", 0)), "trace_index": row.get("trace_index"),
                       "messages": messages},
    }


def _portable(args: dict) -> dict:
    """Task options with the files and folders (a saved `datasets` one) they name made absolute: verl's
    reward workers run elsewhere."""
    return {k: str(Path(v).resolve()) if isinstance(v, str) and Path(v).exists() else v for k, v in args.items()}


def export_verl(rows: list[dict], task: Task, problems: dict[str, Problem], out: str | Path,
                heldout: list[tuple[Problem, str]] | None = None, model: str = "MODEL", tokenizer=None) -> dict:
    """Write train.parquet, val.parquet (each problem once, unprefixed), heldout.parquet (given
    (problem, rendered prompt) pairs), reward.py and run_verl.sh into `out`; returns row counts.
    With the policy's `tokenizer`, run_verl.sh's max_prompt_length is the longest prompt's token
    count (verl drops longer prompts); without it, the longest prefix + 1,024 for the problem."""
    out = Path(out)
    missing = sorted({r["problem_id"] for r in rows} - set(problems))
    if missing:
        raise InputError(f"{len(missing)} training rows name problems task {task.name!r} does not have, "
                         f"e.g. {missing[:3]}: export with the --task the rows were made for")
    train = [verl_row(task, problems[r["problem_id"]], r["prompt"], r["prefix"], "train", i, r)
             for i, r in enumerate(rows)]
    first: dict[str, dict] = {}  # each problem's first row
    for r in rows:
        first.setdefault(r["problem_id"], r)
    # the unprefixed prompt is the rendered prompt without its prefix (as train.py's prefix NLL reads it)
    val = [verl_row(task, problems[pid], r["prompt"][:len(r["prompt"]) - len(r["prefix"])], "", "val", i)
           for i, (pid, r) in enumerate(first.items())]
    files = {"train.parquet": train, "val.parquet": val}
    if heldout:
        files["heldout.parquet"] = [verl_row(task, p, prompt, "", "heldout", i)
                                    for i, (p, prompt) in enumerate(heldout)]
    for name, table in files.items():
        _write_parquet(out / name, table)
    atomic_write_text(out / "reward.py", Path(__file__).with_name("verl_reward.py").read_text())
    if tokenizer is not None:
        prompts = [row["prompt"][0]["content"] for table in files.values() for row in table]
        max_prompt_length = max(len(encode_prompt(tokenizer, prompt)) for prompt in prompts)
    else:
        max_prompt_length = max((int(r.get("prefix_tokens", 0)) for r in rows), default=0) + 1024
    atomic_write_text(out / "run_verl.sh", run_script(out, model, max_prompt_length, heldout=bool(heldout)))
    (out / "run_verl.sh").chmod(0o755)
    return {name: len(table) for name, table in files.items()}


def _write_parquet(path: Path, rows: list[dict]) -> None:
    buffer = pa.BufferOutputStream()
    pq.write_table(pa.Table.from_pylist(rows, schema=SCHEMA), buffer)
    atomic_write_bytes(path, buffer.getvalue().to_pybytes())


def run_script(out: Path, model: str, max_prompt_length: int, heldout: bool = False) -> str:
    """The paper's recipe as a verl command: REINFORCE with a group-mean baseline (GRPO's
    advantage without std scaling, Dr. GRPO's loss sum, no KL), 8 samples, 128 problems per step,
    one update per batch, lr 1e-6, 400 steps, 16k tokens, evaluation at temperature 0.7."""
    data = out.resolve()
    val = f"[{data}/val.parquet,{data}/heldout.parquet]" if heldout else f"{data}/val.parquet"
    return f"""#!/usr/bin/env bash
# PrefixRL on verl, written by `prefixrl export verl`. MODEL must be the policy whose tokenizer rendered
# the prompts. The options compose with verl 0.9.1's ppo_trainer config; GPUs, parallelism and micro-batch
# sizes: append them (e.g. trainer.n_gpus_per_node=8). With another verl version, check that the first
# rollout's prompt ends with the prefix (actor_rollout_ref.rollout.trace.token2text=True).
set -euo pipefail
MODEL=${{MODEL:-{model}}}
python3 -m verl.trainer.main_ppo \\
  data.train_files={data}/train.parquet \\
  data.val_files={val} \\
  data.train_batch_size=128 \\
  data.max_prompt_length={max_prompt_length} \\
  data.max_response_length=16384 \\
  data.filter_overlong_prompts=True \\
  actor_rollout_ref.model.path="$MODEL" \\
  ++actor_rollout_ref.model.custom_chat_template='"{IDENTITY_TEMPLATE}"' \\
  algorithm.adv_estimator=grpo \\
  algorithm.norm_adv_by_std_in_grpo=False \\
  algorithm.use_kl_in_reward=False \\
  actor_rollout_ref.actor.use_kl_loss=False \\
  actor_rollout_ref.actor.entropy_coeff=0 \\
  actor_rollout_ref.actor.loss_agg_mode=seq-mean-token-sum-norm \\
  actor_rollout_ref.actor.optim.lr=1e-6 \\
  actor_rollout_ref.actor.ppo_mini_batch_size=128 \\
  actor_rollout_ref.actor.ppo_epochs=1 \\
  actor_rollout_ref.rollout.name=vllm \\
  actor_rollout_ref.rollout.n=8 \\
  actor_rollout_ref.rollout.temperature=1.0 \\
  actor_rollout_ref.rollout.val_kwargs.do_sample=True \\
  actor_rollout_ref.rollout.val_kwargs.temperature=0.7 \\
  actor_rollout_ref.rollout.val_kwargs.n=16 \\
  custom_reward_function.path={data}/reward.py \\
  custom_reward_function.name=compute_score \\
  trainer.total_training_steps=400 \\
  trainer.test_freq=50 \\
  "$@"
"""
