"""The FLOPs and GPU-hours of each stage of a run, from its config, before running it.

    prefixrl estimate configs/paper-llama8b.yaml [--json]

Every number is the ledger's (flops.py: 2·N·D for every token read or generated at inference,
6·N·D for every token trained on) applied to the samples the config implies: screening
(problems x n), rejection sampling (hard problems x attempts), training (steps x problems x n,
as train.py charges them: rollouts 2·N·D and updates 6·N·D over prompt, prefix and
continuation, plus 2·N·D per extra forward pass: the reference model's with a KL penalty, the old
policy's with vLLM rollouts), and evaluation (unprefixed evaluations during training, the final
one of the base and trained policies, and the success-vs-prefix calibration, as the demo runs them).

What a config cannot say is an `Assumptions` field, printed with the result: the mean prompt
length, the mean generated length as a share of the maximum, how many screened problems are
hard, how many attempts rejection sampling pays per hard problem, and so on. N comes from the
`params:` key (or --params), else from a local model folder's config.json, else from a small
table of known models (nothing can be downloaded here). GPU-hours are FLOPs / (peak x MFU),
with one MFU for training and a lower one for generation (decoding is memory-bound).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path

import yaml

from prefixrl.files import InputError
from prefixrl.flops import inference_flops, train_flops

# N with every parameter counted (models.n_params), from each model's config.json built on the meta device
KNOWN_PARAMS = {
    "meta-llama/Llama-3.1-8B-Instruct": 8_030_261_248,
    "meta-llama/Llama-3.1-8B": 8_030_261_248,
    "Qwen/Qwen3-4B": 4_022_468_096,
    "Qwen/Qwen3-4B-Base": 4_022_468_096,
}
CALIBRATION_FRACTIONS = 11  # prefixes.calibrate's grid: 0, 0.1, ..., 1.0 of each trace


@dataclass
class Assumptions:
    """What the config cannot say. Defaults are for hard competition math at 16k tokens."""

    prompt_tokens: float = 200  # P: mean tokens of a rendered problem (chat template included)
    generated_share: float = 0.5  # mean generated tokens as a share of the max (hard problems run long)
    hard_share: float = 0.25  # share of screened problems with pass@k = 0 (the paper does not report it)
    attempts: float = 650  # mean samples paid per hard problem in rejection sampling (paper, Llama: ~650)
    solved_share: float = 1.0  # share of hard problems rejection sampling finds a trace for
    heldout: int = 60  # held-out problems available (AIME 2025 + HMMT Feb 2025: 30 + 30)
    screened: int | None = None  # problems screened (default: the config's screen.limit)

    def __post_init__(self):
        for name in ("generated_share", "hard_share", "solved_share"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"Assumptions.{name} must lie in [0, 1], got {getattr(self, name)}")
        if self.prompt_tokens < 0 or self.attempts < 0 or self.heldout < 0:
            raise ValueError("Assumptions.prompt_tokens, attempts and heldout must be >= 0")


@dataclass
class Hardware:
    name: str = "H100 SXM"
    peak_tflops: float = 989.0  # dense bf16
    train_mfu: float = 0.40  # updates (forward + backward)
    generate_mfu: float = 0.10  # sampling: memory-bound decoding with vLLM-sized batches

    def __post_init__(self):
        if self.peak_tflops <= 0 or not (0 < self.train_mfu <= 1 and 0 < self.generate_mfu <= 1):
            raise ValueError("Hardware needs peak_tflops > 0 and MFUs in (0, 1]")

    def gpu_hours(self, flops: float, training: bool) -> float:
        return flops / (self.peak_tflops * 1e12 * (self.train_mfu if training else self.generate_mfu)) / 3600


def load_config(path: str | Path):
    """(DemoConfig, raw dict, ignored keys): keys the schema does not know (e.g. a task's
    `task_args`, `params`) are set aside and reported, not errors: the estimate needs none."""
    from prefixrl.demo import DemoConfig
    from prefixrl.pipeline import build_config, resolve_config

    path = resolve_config(path)
    raw = yaml.safe_load(path.read_text()) or {}
    if not isinstance(raw, dict):
        raise InputError(f"{path}: expected a mapping of config keys")
    known, ignored = _known_only(DemoConfig, raw, "")
    return build_config(DemoConfig, known, str(path)), raw, ignored


def _known_only(cls, raw: dict, where: str) -> tuple[dict, list[str]]:
    by_name = {f.name: f for f in fields(cls)}
    known, ignored = {}, []
    for key, value in raw.items():
        if key not in by_name:
            ignored.append(where + key)
            continue
        default = by_name[key].default_factory() if callable(by_name[key].default_factory) else None
        if hasattr(default, "__dataclass_fields__") and isinstance(value, dict):
            value, deeper = _known_only(type(default), value, f"{where}{key}.")
            ignored += deeper
        known[key] = value
    return known, ignored


def model_params(model: str, override: float | str | None = None) -> tuple[int, str]:
    """(N, where it came from) for a model name or folder, without loading its weights."""
    from prefixrl.models import count_params_from_config, resolve_model

    if override is not None:
        return int(float(override)), "given"
    folder = Path(resolve_model(model))
    if (folder / "config.json").is_file():
        return count_params_from_config(str(folder)), str(folder / "config.json")
    if model in KNOWN_PARAMS:
        return KNOWN_PARAMS[model], "built-in table"
    raise InputError(f"cannot count the parameters of {model!r}: no local config.json, and not one of "
                     f"{sorted(KNOWN_PARAMS)}; give --params N (or a `params:` key in the config)")


def estimate(cfg, n_params: int, a: Assumptions | None = None, hw: Hardware | None = None,
             trace_params: int | None = None) -> dict:
    """FLOPs and GPU-hours per stage for a DemoConfig `cfg`. Returns {"counts", "rows", "total"};
    each row is one stage's part with its samples, tokens per sample, tokens, FLOPs, GPU-hours."""
    a, hw = a or Assumptions(), hw or Hardware()
    screened = a.screened if a.screened is not None else cfg.screen.limit
    if screened is None:
        raise InputError("the config screens every problem of its split (screen.limit is unset): "
                         "say how many with --screened N")
    hard = screened * a.hard_share
    solved = hard * a.solved_share
    heldout = min(a.heldout, solved)  # the demo evaluates at most as many held-out problems as it trains on
    t = cfg.train
    rows = []

    def add(stage, part, samples, max_new, n, training=False):
        # P + G per sample; a prefixed sample's prefix + continuation counts as one whole
        # solution (the demo's ledger bears this out: its rollouts average the length of screening's samples)
        per_sample = a.prompt_tokens + a.generated_share * max_new
        tokens = samples * per_sample
        flops = train_flops(n, tokens) if training else inference_flops(n, tokens)
        rows.append({"stage": stage, "part": part, "samples": samples, "tokens_per_sample": per_sample,
                     "tokens": tokens, "flops": flops, "gpu_hours": hw.gpu_hours(flops, training)})

    max_new = cfg.sampling.max_new_tokens
    add("screen", f"{screened:,.0f} problems x {cfg.screen.n}", screened * cfg.screen.n, max_new, n_params)
    paid = min(a.attempts, -(-cfg.collect.max_attempts // cfg.collect.attempts_per_round)
               * cfg.collect.attempts_per_round)  # a capped problem pays for its last round whole
    add("collect", f"{hard:,.0f} hard x {paid:,.0f} attempts", hard * paid, max_new, trace_params or n_params)
    samples = t.steps * t.problems_per_step * t.num_generations
    part = f"{t.steps} steps x {t.problems_per_step} x {t.num_generations}"
    add("train", f"rollouts: {part}", samples, t.max_completion_length, n_params)
    add("train", f"updates: {part}", samples, t.max_completion_length, n_params, training=True)
    if t.beta:  # train.py's reference forward pass
        add("train", "reference forward (beta > 0)", samples, t.max_completion_length, n_params)
    if t.use_vllm:  # train.py's old-policy forward pass: TRL's importance-sampling correction of vLLM's samples
        add("train", "old-policy forward (use_vllm)", samples, t.max_completion_length, n_params)
    problems = solved + heldout
    # train.py evaluates at step 0, every eval_every steps, and after the last step if not just done;
    # eval_every 0: never
    evals = (1 + t.steps // t.eval_every + (t.steps % t.eval_every > 0)) if t.eval_every else 0
    if evals:
        add("evaluate", f"during training: {evals} x {problems:,.0f} problems x {t.eval_n}",
            evals * problems * t.eval_n, t.max_completion_length, n_params)
    e = cfg.evaluate
    add("evaluate", f"final: 2 policies x {problems:,.0f} problems x {e.n}", 2 * problems * e.n, max_new, n_params)
    traces = min(e.calibration_traces, solved)
    add("evaluate", f"calibration: 2 policies x {traces:,.0f} traces x {CALIBRATION_FRACTIONS} x {e.calibration_n}",
        2 * traces * CALIBRATION_FRACTIONS * e.calibration_n, max_new, n_params)
    counts = {"screened": screened, "hard": hard, "solved": solved, "heldout": heldout}
    total = {key: sum(r[key] for r in rows) for key in ("tokens", "flops", "gpu_hours")}
    return {"counts": counts, "rows": rows, "total": total}


def estimate_file(path: str | Path, a: Assumptions | None = None, hw: Hardware | None = None,
                  params: float | None = None, trace_params: float | None = None) -> dict:
    """`estimate` for a config file, with everything a reader needs to check it (JSON-ready)."""
    cfg, raw, ignored = load_config(path)
    a, hw = a or Assumptions(), hw or Hardware()
    n, source = model_params(cfg.model, params if params is not None else raw.get("params"))
    result = {"config": str(path), "model": cfg.model, "params": n, "params_source": source}
    trace_n = None
    if cfg.trace_model:
        trace_n, trace_source = model_params(cfg.trace_model, trace_params)
        result.update(trace_model=cfg.trace_model, trace_params=trace_n, trace_params_source=trace_source)
    result.update(estimate(cfg, n, a, hw, trace_n))
    ignored = [key for key in ignored if key != "params"]  # read just above
    notes = []
    if cfg.method not in ("prefixrl", "prefixrl-only", "rl", "hint"):
        notes.append(f"method {cfg.method!r}: only its RL stage is estimated (not SFT, traces in groups, "
                     "re-calibration or a different group size)")
    notes.append("2·N·D counts no attention FLOPs (the ledger's convention, the paper's): at contexts of "
                 "thousands of tokens they add about 10-30% more")
    return {**result, "assumptions": asdict(a), "hardware": asdict(hw), "ignored_keys": ignored, "notes": notes}


def print_estimate(result: dict, console) -> None:
    from rich.table import Table

    hw = result["hardware"]
    table = Table(title=f"{result['config']}: {result['model']}, N = {result['params']:.3g} ({result['params_source']})")
    for column in ("stage", "what", "tokens/sample", "tokens", "FLOPs", "GPU-hours"):
        table.add_column(column, justify="left" if column in ("stage", "what") else "right")
    for r in result["rows"]:
        table.add_row(r["stage"], r["part"], f"{r['tokens_per_sample']:,.0f}", f"{r['tokens']:.3g}",
                      f"{r['flops']:.3g}", _hours(r["gpu_hours"]))
    total = result["total"]
    table.add_row("total", "", "", f"{total['tokens']:.3g}", f"{total['flops']:.3g}", _hours(total["gpu_hours"]),
                  style="bold")
    console.print(table)
    a, c = result["assumptions"], result["counts"]
    console.print(f"GPU-hours at {hw['peak_tflops']:g} TFLOP/s ({hw['name']}), MFU {hw['train_mfu']:.0%} for updates, "
                  f"{hw['generate_mfu']:.0%} for sampling.")
    console.print(f"Assumed: prompts of {a['prompt_tokens']:g} tokens; samples generate {a['generated_share']:.0%} of "
                  f"their max tokens (a prefix + its continuation as much as a whole sample); {a['hard_share']:.0%} of "
                  f"{c['screened']:,.0f} screened problems hard ({c['hard']:,.0f}); {a['attempts']:g} attempts paid per "
                  f"hard problem; traces for {a['solved_share']:.0%} ({c['solved']:,.0f}); {c['heldout']:,.0f} held-out "
                  "problems. Change them with the options (prefixrl estimate --help).")
    for note in result["notes"]:
        console.print(f"Note: {note}")
    if result["ignored_keys"]:
        console.print(f"Not used by the estimate: {', '.join(result['ignored_keys'])}")


def _hours(hours: float) -> str:
    return f"{hours:,.0f}" if hours >= 10 else f"{hours:.2g}"
