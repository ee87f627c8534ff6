"""`prefixrl-adaptive` (beyond the paper): prefixes cut where the policy's success is informative,
re-chosen as it improves, from a trace pool that grows with the policy's own correct answers.

Every `every` steps, for each problem: take its latest trace in the pool (the policy's own once it
has solved the problem unprefixed, else the off-policy trace), measure the current policy's
success rate at prefix fractions 0, 0.1, ..., 1, and cut at the shortest fraction whose rate lies in
the band (default 0.2-0.8): groups there have mixed rewards, so a gradient. As the policy improves
the chosen prefixes shrink, down to none. Training rows keep their slots; only their prompts
change. The calibration samples are charged to the run's FLOPs ledger.

The trainer reads it through trainer.LiveRows (`current`, `solved`), given at construction; as a
callback it re-calibrates on the policy the Trainer hands every callback.
"""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

from transformers import TrainerCallback

from prefixrl.config import AdaptiveConfig
from prefixrl.files import AppendLog, read_jsonl, write_jsonl
from prefixrl.flops import FlopsLedger
from prefixrl.generate import SamplingParams, sampler_for
from prefixrl.models import n_params
from prefixrl.prefixes import PrefixConfig, calibrate, prefixed_problems, with_context_limit
from prefixrl.tasks import Problem, Task


class TracePool:
    """Per problem, its correct traces in the order found: off-policy ones, then the policy's own
    (kept in trace_pool.jsonl, so a resumed run has them)."""

    def __init__(self, traces: list[dict], path: Path):
        self.log = AppendLog(path)
        self.by_problem: dict[str, list[str]] = {}
        for trace in traces + self.log.rows:
            self.by_problem.setdefault(trace["problem_id"], []).append(trace["completion"])

    def add(self, problem_id: str, completion: str, step: int) -> None:
        if problem_id in self.by_problem and completion not in self.by_problem[problem_id]:
            self.by_problem[problem_id].append(completion)
            self.log.append({"problem_id": problem_id, "completion": completion, "step": step, "origin": "policy"})

    def latest(self) -> list[dict]:
        return [{"problem_id": pid, "completion": found[-1]} for pid, found in self.by_problem.items()]


class AdaptivePrefixes(TrainerCallback):
    """Re-chooses every row's prefix every `cfg.every` steps (see the module docstring)."""

    def __init__(self, task: Task, problems: dict[str, Problem], traces: list[dict], prefix_cfg: PrefixConfig,
                 cfg: AdaptiveConfig, out_dir: Path, max_new_tokens: int, batch_size: int = 512):
        self.task, self.problems, self.cfg, self.max_new_tokens = task, problems, cfg, max_new_tokens
        self.batch_size = batch_size  # sequences per generation batch (TrainConfig.eval_batch_size)
        # the calibration's grid reaches the whole trace, and the policy picks the cut, so a prefix past
        # the context window is cut (and measured) at the longest that fits instead of refused
        self.prefix_cfg = replace(prefix_cfg, policy="adaptive", band=tuple(cfg.band), on_too_long="truncate")
        self.folder, self.traces = Path(out_dir) / "adaptive", traces
        self.current: list[dict] = []  # by slot: the rows in force (trainer.LiveRows)
        self.ledger: FlopsLedger | None = None

    def start(self, kept_step: int, ledger: FlopsLedger | None = None) -> int:
        """Forget what a killed run did after its checkpoint; returns the step whose rows are current.
        `ledger`: where the re-calibrations during training are charged."""
        self.ledger = ledger
        for path in self.folder.glob("step-*"):
            if int(path.name.split("-")[1]) > kept_step:
                shutil.rmtree(path)
        # answers found while generating step s are logged at global_step s - 1
        AppendLog(self.folder / "trace_pool.jsonl").keep(lambda row: row["step"] < kept_step)
        self.log = AppendLog(self.folder / "adaptive.jsonl")
        self.log.keep(lambda row: row["step"] <= kept_step)
        self.pool = TracePool(self.traces, self.folder / "trace_pool.jsonl")
        return max(kept_step, 0) // self.cfg.every * self.cfg.every

    def solved(self, problem_id: str, completion: str, step: int) -> None:
        """A correct unprefixed answer of the policy: it joins the pool (with grow_pool)."""
        if self.cfg.grow_pool:
            self.pool.add(problem_id, completion, step)

    def rows(self, model, tokenizer, step: int, ledger: FlopsLedger) -> list[dict]:
        """The rows chosen at `step`: from its calibration on disk if it ran before (a resumed run),
        else by calibrating now."""
        folder = self.folder / f"step-{step}"
        fresh = not (folder / "traces.jsonl").exists()
        if fresh:
            write_jsonl(folder / "traces.jsonl", self.pool.latest())  # the traces this choice cuts from
        traces = read_jsonl(folder / "traces.jsonl")
        was_training = model.training
        model.eval()
        params = SamplingParams(max_new_tokens=self.max_new_tokens, batch_size=self.batch_size)
        sampler = sampler_for(model, tokenizer, params)
        prefix_cfg = with_context_limit(self.prefix_cfg, model, self.max_new_tokens)
        calibration = calibrate(self.task, sampler, tokenizer, traces, self.problems, folder, n=self.cfg.n,
                                seed=step, quiet=True, cfg=prefix_cfg)
        model.train(was_training)
        rows = prefixed_problems(tokenizer, traces, self.problems, prefix_cfg, calibration=calibration)
        if fresh:
            ledger.add("calibration", n_params=n_params(model),
                       inference_tokens=sum(p["tokens"] for row in calibration for p in row["points"]))
            prefixed = [r for r in rows if r["prefixed"]]
            self.log.append({"step": step, "rows": len(rows), "prefixed": len(prefixed),
                             "mean_fraction": sum(r["prefix_fraction"] for r in prefixed) / max(len(prefixed), 1),
                             "policy_traces": len(self.pool.log.rows)})
        return [{**row, "slot": i} for i, row in enumerate(rows)]

    def on_step_end(self, args, state, control, model=None, processing_class=None, **kwargs):
        if state.global_step % self.cfg.every == 0:  # (one process: the Trainer's model is the policy itself)
            self.current = self.rows(model, processing_class, state.global_step, self.ledger)
