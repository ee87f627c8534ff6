"""The training loop's callbacks: metrics.jsonl, the progress bar, the FLOPs budget, and the
unprefixed evaluation (pass@1 on the hard training problems and held-out ones, prefix NLL, prefix
reliance) every `eval_every` steps."""

from __future__ import annotations

import logging
import tempfile
from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING

from accelerate.utils import broadcast_object_list
from transformers import ProgressCallback, Trainer, TrainerCallback

from prefixrl.evaluate import score_problems
from prefixrl.files import AppendLog
from prefixrl.flops import FlopsLedger
from prefixrl.generate import SamplingParams, sampler_for
from prefixrl.models import sequence_logprobs
from prefixrl.reliance import prefix_reliance
from prefixrl.tasks import Problem, Task

if TYPE_CHECKING:
    from prefixrl.train import TrainConfig

logger = logging.getLogger(__name__)


class MetricsLog(TrainerCallback):
    """Every logged step as one line of metrics.jsonl (always on, whatever report_to says)."""

    def __init__(self, log: AppendLog):
        self.log = log

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and state.is_world_process_zero and not any(k.startswith("eval_") for k in logs):
            self.log.append({"step": state.global_step, **logs})  # (evaluations are in eval.jsonl)


class BarOnly(ProgressCallback):
    """transformers' progress bar without the dict of logs it writes under the bar every step."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        pass


class FlopsBudget(TrainerCallback):
    """Stops training once the ledger reaches the budget: compute-matched runs end at equal FLOPs."""

    def __init__(self, ledger: FlopsLedger, budget: float):
        self.ledger, self.budget = ledger, budget

    def on_step_end(self, args, state, control, **kwargs):
        if self.ledger.total >= self.budget:
            control.should_training_stop = True


class UnprefixedEval(TrainerCallback):
    """Every `every` steps, on unprefixed problems: pass@1 on the hard training problems and on
    held-out ones, the share of each strategy marker in the answers, and the policy's mean NLL of
    the training prefixes (does it come to imitate them?).

    With several processes, each runs the same evaluation (same seeds: same samples) on the whole
    policy, so that sharded weights (ZeRO-3, FSDP) can be gathered; only the main process writes."""

    def __init__(self, trainer_ref, task: Task, problem_sets: dict[str, list[Problem]], cfg: TrainConfig,
                 out_dir: Path, ledger: FlopsLedger, prefix_rows: list[dict], reliance_rows: list[dict] = ()):
        self.trainer_ref, self.task, self.cfg, self.reliance_rows = trainer_ref, task, cfg, list(reliance_rows)
        self.out_dir, self.ledger, self.prefix_rows = out_dir, ledger, prefix_rows
        self.main = trainer_ref().accelerator.is_main_process
        # an empty set has no pass@1 (e.g. --task math without a heldout= file): evaluate the others
        self.problem_sets = {name: problems for name, problems in problem_sets.items() if problems}
        empty = sorted(set(problem_sets) - set(self.problem_sets))
        if empty and self.main:
            rest = " and ".join(self.problem_sets)
            logger.warning("no %s problems to evaluate on%s", " or ".join(empty),
                           f": evaluating on {rest} only" if rest else "")
        self.log = AppendLog(out_dir / "eval.jsonl") if self.main else None
        done = [[row["step"] for row in self.log.rows] if self.main else None]
        self.done = set(broadcast_object_list(done)[0])  # every process skips the same steps

    def on_step_end(self, args, state, control, **kwargs):
        if self.cfg.eval_every and state.global_step % self.cfg.eval_every == 0:
            self.evaluate(state.global_step)

    def evaluate(self, step: int) -> dict:
        if step in self.done:
            return {}
        trainer = self.trainer_ref()
        # the other processes score into a folder of their own, thrown away afterwards
        folder = nullcontext(self.out_dir / "evals") if self.main else tempfile.TemporaryDirectory()
        with trainer.full_model() as model, folder as evals:
            row = self._evaluate(step, model, trainer.processing_class, Path(evals))
        self.done.add(step)
        if self.main:
            self.log.append(row)
        if self.cfg.report_to != "none":  # to the trackers as eval/hard/pass@1 ...: the Trainer's own log,
            # not GRPOTrainer's, which would take the step's pending training metrics with it
            should_log = trainer.control.should_log  # logging resets it: the step's own log must still happen
            Trainer.log(trainer, {"eval_" + k.removeprefix("eval/"): v for k, v in row.items()
                                  if k.startswith("eval/")})
            trainer.control.should_log = should_log
        return row

    def _evaluate(self, step: int, model, tokenizer, evals: Path) -> dict:
        was_training = model.training
        model.eval()
        sampler = sampler_for(model, tokenizer, SamplingParams(
            temperature=self.cfg.eval_temperature, max_new_tokens=self.cfg.max_completion_length,
            batch_size=self.cfg.eval_batch_size), backend=self.cfg.sampler)
        row, unprefixed = {"step": step, "flops": self.ledger.total}, {}
        for name, problems in self.problem_sets.items():
            scores = score_problems(self.task, sampler, problems, self.cfg.eval_n, evals / f"step-{step}-{name}",
                                    seed=self.cfg.seed * 100_003 + step, quiet=True)
            samples = sum(r["n"] for r in scores)
            unprefixed.update({r["id"]: r["correct"] / r["n"] for r in scores})
            row[f"eval/{name}/pass@1"] = sum(r["correct"] for r in scores) / samples
            for strategy in self.task.strategy_markers:
                row[f"eval/{name}/strategy/{strategy}"] = sum(r["strategies"].get(strategy, 0) for r in scores) / samples
        if self.prefix_rows:
            row["eval/prefix_nll"] = self._prefix_nll(model, tokenizer)
        if self.reliance_rows and self.cfg.reliance_n:
            problems = {p.id: p for ps in self.problem_sets.values() for p in ps}
            row.update(prefix_reliance(self.task, sampler, self.reliance_rows, problems, unprefixed,
                                       self.cfg.reliance_n, seed=self.cfg.seed * 100_003 + step))
        model.train(was_training)
        return row

    def _prefix_nll(self, model, tokenizer) -> float:
        """Mean negative log-likelihood per prefix token, given the problem's prompt."""
        total, count = 0.0, 0
        for r in self.prefix_rows:
            ids = tokenizer(r["prefix"], add_special_tokens=False)["input_ids"]
            logprobs = sequence_logprobs(model, tokenizer, r["prompt"][:-len(r["prefix"])], ids)
            total, count = total - sum(logprobs), count + len(logprobs)
        return total / max(count, 1)
