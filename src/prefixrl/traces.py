"""Stage 2: the store of verified correct off-policy traces, filled by rejection sampling or import.

    prefixrl collect MODEL --task sort --problems runs/screen/hard.jsonl --out runs/traces
    prefixrl import runs/traces --task sort --file old_rollouts.jsonl

`collect` samples each problem in rounds until it has m verified-correct traces or hits the cap
on attempts (the paper: the first correct one, at most 2,500). Every round is one line of
`rounds.jsonl`, written whole, so a run killed at any moment restarts where it stopped, with the
same random numbers, and never loses a trace. `traces.jsonl` (the store) and `collect.json`
(per-problem attempts, tokens, FLOPs, wall time) are rewritten atomically from that log.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from prefixrl.files import AppendLog, InputError, atomic_write_text, iter_jsonl, progress_bar, read_jsonl, write_jsonl
from prefixrl.flops import FlopsLedger, inference_flops
from prefixrl.generate import Sampler, stable_seed
from prefixrl.runinfo import write_manifest
from prefixrl.tasks import Problem, Task


@dataclass
class CollectConfig:
    max_attempts: int = 2500  # cap on samples per problem (paper: 2,500)
    traces_per_problem: int = 1  # m: stop a problem once it has this many correct traces
    attempts_per_round: int = 64  # samples per problem per round (a kill loses at most one round)
    seed: int = 0

    def __post_init__(self):
        for name in ("max_attempts", "traces_per_problem", "attempts_per_round"):
            if getattr(self, name) < 1:
                raise ValueError(f"CollectConfig.{name} must be >= 1, got {getattr(self, name)}")


@dataclass
class ProblemProgress:
    samples: int = 0  # samples generated (and paid for)
    attempts: int = 0  # samples up to and including the last trace kept (the paper's "attempts")
    prompt_tokens: int = 0
    generated_tokens: int = 0
    wall_time_s: float = 0.0
    traces: int = 0


def collect(task: Task, sampler: Sampler, problems: list[Problem], out_dir: str | Path,
            cfg: CollectConfig | None = None, source: str = "", quiet: bool = False) -> list[dict]:
    """Rejection-sample traces for `problems`; returns the trace store's rows."""
    cfg = cfg or CollectConfig()
    out_dir = Path(out_dir)
    start = time.time()
    log = AppendLog(out_dir / "rounds.jsonl")
    progress = {p.id: ProblemProgress() for p in problems}
    for row in log.rows:
        for event in row["events"]:
            _apply(progress[event["id"]], event)

    def finished(p: Problem) -> bool:
        prog = progress[p.id]
        return prog.traces >= cfg.traces_per_problem or prog.samples >= cfg.max_attempts

    per_call = max(1, sampler.params.batch_size // cfg.attempts_per_round)
    with progress_bar(disable=quiet) as bar:
        bar_id = bar.add_task("collect", total=len(problems), completed=sum(map(finished, problems)),
                              rate=_rate_text(progress, 0.0))
        while todo := [p for p in problems if not finished(p)]:
            group = todo[:per_call]
            t0 = time.time()
            key = f"{group[0].id}:{progress[group[0].id].samples}:{len(group)}"
            samples = sampler.generate([p.prompt for p in group], cfg.attempts_per_round, seed=stable_seed(cfg.seed, key))
            wall = (time.time() - t0) / len(group)
            events = [_round_event(task, p, s, progress[p.id], cfg, wall, source, sampler) for p, s in zip(group, samples)]
            log.append({"events": events})  # one line per round: a kill never splits a round
            for event in events:
                _apply(progress[event["id"]], event)
            rate = sum(len(s) for s in samples) / max(time.time() - t0, 1e-9)
            bar.update(bar_id, completed=sum(map(finished, problems)), rate=_rate_text(progress, rate))
    traces = [t for row in log.rows for event in row["events"] for t in event["traces"]]
    write_jsonl(out_dir / "traces.jsonl", traces)
    summary = _summary(problems, progress, sampler.n_params)
    ledger = FlopsLedger(out_dir / "flops.json")
    ledger.stages = {}
    ledger.add("collect", n_params=sampler.n_params,
               inference_tokens=sum(p.prompt_tokens + p.generated_tokens for p in progress.values()))
    atomic_write_text(out_dir / "collect.json", json.dumps(summary, indent=2))
    write_manifest(out_dir, stage="collect", config={"task": task.name, **asdict(cfg), "source": source,
                   "sampling": vars(sampler.params)}, seed=cfg.seed, flops=summary["flops"],
                   wall_time_s=time.time() - start)
    return traces


def _round_event(task: Task, problem: Problem, samples, prog: ProblemProgress, cfg: CollectConfig,
                 wall: float, source: str, sampler: Sampler) -> dict:
    samples = samples[:cfg.max_attempts - prog.samples]
    traces, attempts = [], prog.attempts
    for i, sample in enumerate(samples):
        if prog.traces + len(traces) >= cfg.traces_per_problem:
            break
        if task.verify(problem, sample.text).reward > 0:
            attempts = prog.samples + i + 1
            traces.append({"problem_id": problem.id, "prompt": problem.prompt, "completion": sample.text,
                           "token_ids": sample.token_ids, "logprobs": sample.logprobs, "origin": "collect",
                           "source": source, "attempt": attempts, "sampling": vars(sampler.params)})
    if not traces and prog.samples + len(samples) >= cfg.max_attempts:
        attempts = cfg.max_attempts  # unsolved: all attempts spent
    return {"id": problem.id, "samples": len(samples), "attempts": attempts,
            "prompt_tokens": sum(s.prompt_tokens for s in samples),
            "generated_tokens": sum(len(s.token_ids) for s in samples), "wall_time_s": wall, "traces": traces}


def _apply(prog: ProblemProgress, event: dict) -> None:
    prog.samples += event["samples"]
    prog.attempts = max(prog.attempts, event["attempts"])
    prog.prompt_tokens += event["prompt_tokens"]
    prog.generated_tokens += event["generated_tokens"]
    prog.wall_time_s += event["wall_time_s"]
    prog.traces += len(event["traces"])


def _rate_text(progress: dict[str, ProblemProgress], samples_per_s: float) -> str:
    solved = sum(p.traces > 0 for p in progress.values())
    return f"solved {solved}  {samples_per_s:,.0f} attempts/s"


def _summary(problems: list[Problem], progress: dict[str, ProblemProgress], n_params: int) -> dict:
    rows = []
    for p in problems:
        prog = progress[p.id]
        tokens = prog.prompt_tokens + prog.generated_tokens
        rows.append({"id": p.id, "solved": prog.traces > 0, **asdict(prog),
                     "flops": inference_flops(n_params, tokens)})
    solved = [r for r in rows if r["solved"]]
    return {"problems": len(rows), "solved": len(solved), "share_solved": len(solved) / max(1, len(rows)),
            "mean_attempts_solved": sum(r["attempts"] for r in solved) / max(1, len(solved)),
            "flops": sum(r["flops"] for r in rows), "per_problem": rows}


# --- the store: load, import ------------------------------------------------------------------

TEXT_COLUMNS = ("completion", "solution", "text")  # first one present is the trace text


def load_traces(path: str | Path) -> list[dict]:
    return read_jsonl(path, required=("problem_id", "prompt", "completion"))


def import_traces(task: Task, store: str | Path, source_file: str | Path, source: str = "import",
                  problem_column: str = "problem_id") -> dict:
    """Verify records from JSONL, Parquet or a saved `datasets` folder and add the correct, new ones
    to the store. Returns {"added", "rejected": [{"line", "reason"}...]}; the store is rewritten
    atomically, so a failure leaves it as it was."""
    problems = {p.id: p for split in ("train", "heldout", "easy") for p in task.problems(split)}
    store = Path(store)
    traces = load_traces(store) if store.exists() else []
    seen = {(t["problem_id"], t["completion"]) for t in traces}
    added, rejected = 0, []
    for line, record in _read_records(source_file):
        reason = record if isinstance(record, InputError) else None
        if reason is None:
            trace, reason = _to_trace(task, problems, record, problem_column, source)
            if trace is not None and (trace["problem_id"], trace["completion"]) in seen:
                trace, reason = None, "duplicate of a trace already in the store"
            if trace is not None:
                seen.add((trace["problem_id"], trace["completion"]))
                traces.append(trace)
                added += 1
                continue
        rejected.append({"line": line, "reason": str(reason)})
    write_jsonl(store, traces)
    return {"file": str(source_file), "added": added, "rejected": rejected, "store": str(store)}


def _to_trace(task: Task, problems: dict[str, Problem], record: dict, problem_column: str,
              source: str) -> tuple[dict | None, str | None]:
    pid = record.get(problem_column)
    if pid is None:
        return None, f"no '{problem_column}' field (name the column with --problem-column)"
    if str(pid) not in problems:
        return None, f"unknown problem id {pid!r} for task '{task.name}'"
    column = next((c for c in TEXT_COLUMNS if isinstance(record.get(c), str)), None)
    if column is None:
        return None, f"no trace text: expected one of the fields {list(TEXT_COLUMNS)}"
    problem, text = problems[str(pid)], record[column]
    if task.verify(problem, text).reward <= 0:
        return None, "the trace fails verification (its answer or steps are wrong)"
    # imported traces are text: token ids and behaviour log-probs are unknown here
    return {"problem_id": problem.id, "prompt": problem.prompt, "completion": text, "token_ids": None,
            "logprobs": None, "origin": "import", "source": str(record.get("source") or source),
            "attempt": None, "sampling": None}, None


def _read_records(path: str | Path):
    """(line or row number, record or InputError) from JSONL, Parquet or a `datasets` folder."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file or folder")
    if path.is_dir() or path.suffix == ".parquet":
        import datasets

        ds = datasets.load_from_disk(str(path)) if path.is_dir() else datasets.Dataset.from_parquet(str(path))
        if isinstance(ds, datasets.DatasetDict):
            raise InputError(f"{path}: holds several splits {list(ds)}; import one split's folder")
        yield from enumerate(ds, 1)
    else:
        yield from iter_jsonl(path)
