"""Stage 3: prefixed problems, cut from correct traces in the policy's own tokens.

A prefixed problem is the problem followed by the first h tokens of a correct trace (h: prefix
length in policy tokens); the policy continues it, and the reward is scored on prefix +
continuation. `calibrate` measures the policy's success rate conditioned on prefixes at a grid
of fractions of each trace: the "success vs prefix fraction" curve. The `hint` baseline shows the
same prefixes in the user turn instead (`hint_rows`), and the policy writes a whole solution.
"""

from __future__ import annotations

import random
from dataclasses import replace
from pathlib import Path

from prefixrl.config import PrefixConfig
from prefixrl.files import AppendLog, InputError, progress_bar
from prefixrl.generate import Sampler, stable_seed
from prefixrl.models import encode_prompt
from prefixrl.objective import rewards
from prefixrl.tasks import Problem, Task


def with_context_limit(cfg: PrefixConfig, model, max_completion_length: int) -> PrefixConfig:
    """cfg, with max_prompt_length (if unset) what the policy's context window leaves for the
    prompt after max_completion_length generated tokens."""
    window = getattr(model.config, "max_position_embeddings", None)
    if cfg.max_prompt_length is not None or window is None:
        return cfg
    if window <= max_completion_length:
        raise ValueError(f"max_completion_length {max_completion_length} leaves no room for a prompt in the "
                         f"policy's context window of {window} tokens: generate fewer tokens")
    return replace(cfg, max_prompt_length=window - max_completion_length)


def token_offsets(tokenizer, text: str) -> list[tuple[int, int]]:
    """Character span of each policy token of `text` (cuts are made in the policy's tokens)."""
    return tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]


def prefix_at(text: str, offsets: list[tuple[int, int]], h: int) -> str:
    """The text of the first h tokens: an exact character prefix of the trace."""
    return text[:offsets[h - 1][1]] if h > 0 else ""


def fit_prefix(tokenizer, problem_prompt: str, text: str, offsets: list[tuple[int, int]], h: int,
               cfg: PrefixConfig, name: str) -> int:
    """h, if the rendered problem followed by the trace's first h policy tokens fits in
    cfg.max_prompt_length tokens. A longer prompt is refused with an InputError naming `name` (the
    trace), or, with on_too_long="truncate", given a shorter cut: the prefix keeps its first tokens.
    The joined prompt is counted as the policy reads it (a tokenizer may merge tokens across the
    join: its length is not the problem's plus the prefix's)."""
    limit = cfg.max_prompt_length
    if limit is None:
        return h

    def length(h: int) -> int:
        return len(encode_prompt(tokenizer, render_prompt(tokenizer, problem_prompt, prefix_at(text, offsets, h))))

    head = length(0)
    if head > limit:
        raise InputError(f"{name}: the rendered problem alone is {head} tokens, over max_prompt_length {limit}: "
                         "generate fewer tokens (max_completion_length) or leave the problem out")
    full = length(h)
    if full <= limit:
        return h
    if cfg.on_too_long == "error":
        raise InputError(
            f"{name}: the prefixed prompt would be {full} tokens (problem {head} + prefix {h}), over "
            f"max_prompt_length {limit} (as given, or the policy's context window less max_completion_length): "
            "cut such prefixes shorter with --on-too-long truncate (PrefixConfig.on_too_long), or generate "
            "fewer tokens (max_completion_length)")
    h = min(h, limit - head)
    while h > 0 and length(h) > limit:  # a merge across the join can still leave it one token over
        h -= 1
    return h


def cut_points(cfg: PrefixConfig, text: str, offsets: list[tuple[int, int]], rng: random.Random) -> list[int]:
    """Prefix lengths h (in policy tokens) for one trace, per the cut policy."""
    n = len(offsets)
    if cfg.policy == "uniform":
        points = [round(rng.uniform(cfg.low, cfg.high) * n) for _ in range(cfg.cuts_per_trace)]
    elif cfg.policy == "fixed":
        points = [round(f * n) for f in cfg.fractions]
    else:
        points = [min(count, n) for count in cfg.token_counts]
    if cfg.snap:
        # h: a token index where a step begins (its text starts with the separator)
        starts = [i for i, (a, _) in enumerate(offsets) if text.startswith(cfg.snap, a)] or [0]
        points = [max((s for s in starts if s <= h), default=starts[0]) for h in points]
    return points


def adaptive_fractions(calibration: list[dict], band: tuple[float, float]) -> dict[int, float]:
    """Per trace, the shortest prefix fraction whose measured success rate lies in `band` (the
    informative middle: neither all-fail nor all-pass groups). A trace with no point in the band
    gets the shortest fraction above it, or, if every point is below it, the longest."""
    chosen = {}
    for row in calibration:
        points = sorted((p["fraction"], p["correct"] / p["n"]) for p in row["points"])
        inside = [f for f, rate in points if band[0] <= rate <= band[1]]
        above = [f for f, rate in points if rate > band[1]]
        chosen[row["trace"]] = inside[0] if inside else above[0] if above else points[-1][0]
    return chosen


def render_prompt(tokenizer, problem_prompt: str, prefix: str = "") -> str:
    """The prompt the policy continues, the one every stage samples and trains from (screen,
    collect, calibrate, train, evaluate; tokenized by models.encode_prompt): the prompt it answers
    from (base models: the problem; chat models: the chat template's generation prompt, whatever
    it opens, e.g. "<think>\n"), then the prefix verbatim, just as if the policy had written the
    prefix itself. (Re-rendering the prefix as an assistant turn with continue_final_message does
    not: Qwen3-style templates drop a <think> block from an assistant turn's text or insert an empty
    <think></think> before it, Llama-3-style ones trim its leading space.)"""
    if not getattr(tokenizer, "chat_template", None):
        return problem_prompt + prefix
    messages = [{"role": "user", "content": problem_prompt}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) + prefix


HINT = "Hint: a correct solution begins with:"
BASE_HINT = "Hint:"  # a base model reads no instructions; the short marker leaves its context to the solution


def render_hint(tokenizer, problem_prompt: str, hint: str) -> str:
    """The `hint` baseline's prompt (BREAD-style): the prefix is shown as a hint in the user's turn,
    and the policy answers from the generation prompt, writing a whole solution of its own. Base
    models: `BASE_HINT` and the hint on a line of their own before the problem."""
    hint = hint if hint[:1].isspace() else " " + hint  # one space after the colon, unless the trace has one
    if not getattr(tokenizer, "chat_template", None):
        return f"{BASE_HINT}{hint}\n{problem_prompt}"
    messages = [{"role": "user", "content": f"{problem_prompt}\n\n{HINT}{hint}"}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def prefixed_problems(tokenizer, traces: list[dict], problems: dict[str, Problem],
                      cfg: PrefixConfig | None = None, calibration: list[dict] | None = None,
                      shortened: list[dict] | None = None) -> list[dict]:
    """Training rows: `cuts_per_trace` prefixed rows per trace and `unprefixed_per_problem` plain
    rows per problem with a trace. Each row keeps its problem id, prefix fraction and prefix
    token count (after fit_prefix), so every metric can be split by them. Traces are text,
    whichever model wrote them: they are cut in this tokenizer's (the policy's) tokens.
    `shortened`: if given, gets {trace, problem_id, cut, kept} for each prefix that on_too_long
    "truncate" cut shorter (see shortening_report)."""
    cfg = cfg or PrefixConfig()
    if cfg.policy == "adaptive":
        if calibration is None:
            raise ValueError("the adaptive cut policy needs a calibration (prefixrl prefixes --calibrate-n N)")
        fractions = adaptive_fractions(calibration, cfg.band)
    rows, with_trace = [], []
    for index, trace in enumerate(traces):
        pid = trace["problem_id"]
        if pid not in problems:
            raise ValueError(f"trace {index} is for problem {pid!r}, which is not among the problems given")
        if pid not in with_trace:
            with_trace.append(pid)
        rng = random.Random(stable_seed(cfg.seed, f"{pid}:{index}"))  # cut points drawn once, then fixed
        text = trace["completion"]
        offsets = token_offsets(tokenizer, text)
        if cfg.policy == "adaptive":
            if index not in fractions:
                continue  # not calibrated: no prefix for this trace
            points = [round(fractions[index] * len(offsets))] * cfg.cuts_per_trace  # keeps the mix's ratio
        else:
            points = cut_points(cfg, text, offsets, rng)
        for cut in points:
            h = fit_prefix(tokenizer, problems[pid].prompt, text, offsets, cut, cfg, f"trace {index} (problem {pid!r})")
            if h < cut and shortened is not None:
                shortened.append({"trace": index, "problem_id": pid, "cut": cut, "kept": h})
            prefix = prefix_at(text, offsets, h)
            rows.append(_row(tokenizer, problems[pid], prefix, h, h / max(1, len(offsets)), index))
    for pid in with_trace:
        fit_prefix(tokenizer, problems[pid].prompt, "", [], 0, cfg, f"problem {pid!r}")  # the plain prompt must fit too
        rows += [_row(tokenizer, problems[pid], "", 0, 0.0, None)] * cfg.unprefixed_per_problem
    return rows


def shortening_report(shortened: list[dict], rows: list[dict], limit: int | None) -> str:
    """What on_too_long="truncate" did, in one line ('' if nothing): prefixes cut shorter, and the
    rows that now repeat another cut of the same trace (two cuts past the limit both end at it,
    so that prefix is trained on twice)."""
    if not shortened:
        return ""
    seen, repeated = set(), 0
    for row in rows:
        key = (row["trace_index"], row["prefix_tokens"])
        if row["prefixed"]:
            repeated += key in seen
            seen.add(key)
    return (f"--on-too-long truncate shortened {len(shortened)} of {sum(r['prefixed'] for r in rows)} prefixes to fit "
            f"max_prompt_length {limit} (traces {sorted({s['trace'] for s in shortened})[:10]}); {repeated} "
            "prefixed rows now repeat another cut of their trace")


def _row(tokenizer, problem: Problem, prefix: str, h: int, fraction: float, trace_index: int | None) -> dict:
    return {"prompt": render_prompt(tokenizer, problem.prompt, prefix), "problem_id": problem.id,
            "prefix": prefix, "prefixed": h > 0, "prefix_tokens": h, "prefix_fraction": round(fraction, 4),
            "trace_index": trace_index}


def hint_rows(tokenizer, rows: list[dict], problems: dict[str, Problem]) -> list[dict]:
    """The `hint` method's rows from `prefixed_problems`' rows: each prefix moves into the prompt as
    a hint and `prefix` becomes "", so the reward scores the policy's own text alone, which must be
    a whole solution. The split columns stay, so metrics split hinted / unhinted groups alike;
    unprefixed rows pass through (with hint "": every row needs the same columns)."""
    hinted = []
    for row in rows:
        if row["prefixed"]:
            prompt = render_hint(tokenizer, problems[row["problem_id"]].prompt, row["prefix"])
            hinted.append({**row, "prompt": prompt, "prefix": "", "hint": row["prefix"]})
        else:
            hinted.append({**row, "hint": ""})
    return hinted


def calibrate(task: Task, sampler: Sampler, tokenizer, traces: list[dict], problems: dict[str, Problem],
              out_dir: str | Path, fractions: tuple[float, ...] = tuple(i / 10 for i in range(11)),
              *, n: int, seed: int = 0, quiet: bool = False, cfg: PrefixConfig | None = None) -> list[dict]:
    """Success rate of n samples conditioned on each prefix fraction of each trace (resumable:
    one line of `calibration.jsonl` per trace), the prefixes held to cfg's prompt limit as the
    rows' are (fit_prefix)."""
    cfg = cfg or PrefixConfig()
    log = AppendLog(Path(out_dir) / "calibration.jsonl")
    done = {row["trace"] for row in log.rows}
    with progress_bar(disable=quiet) as bar:
        bar_id = bar.add_task("calibrate", total=len(traces), completed=len(done), rate="")
        for index, trace in enumerate(traces):
            if index in done:
                continue
            problem, text = problems[trace["problem_id"]], trace["completion"]
            offsets = token_offsets(tokenizer, text)
            points = [fit_prefix(tokenizer, problem.prompt, text, offsets, round(f * len(offsets)), cfg,
                                 f"trace {index} (problem {problem.id!r})") for f in fractions]
            cuts = [(prefix_at(text, offsets, h), h) for h in points]
            samples = sampler.generate([render_prompt(tokenizer, problem.prompt, prefix) for prefix, _ in cuts], n,
                                       seed=stable_seed(seed, f"{trace['problem_id']}:{index}"))
            rows = []
            for fraction, (prefix, h), group in zip(fractions, cuts, samples):
                correct = sum(r > 0 for r in rewards(task, [(problem, prefix, s.text) for s in group]))
                rows.append({"fraction": fraction, "prefix_tokens": h, "n": n, "correct": correct,
                             "tokens": sum(s.tokens for s in group)})  # read + generated: its FLOPs
            log.append({"trace": index, "problem_id": problem.id, "points": rows})
            bar.update(bar_id, advance=1)
    return log.rows


def success_curve(rows: list[dict]) -> dict[float, float]:
    """Mean success rate over traces at each prefix fraction."""
    by_fraction: dict[float, list[float]] = {}
    for row in rows:
        for point in row["points"]:
            by_fraction.setdefault(point["fraction"], []).append(point["correct"] / point["n"])
    return {f: sum(v) / len(v) for f, v in sorted(by_fraction.items())}

