"""The GPU check: the CUDA, bf16 and FSDP training paths on tiny models, and their throughput.

    bash benchmarks/gpu_check.sh                   # on a CUDA machine (installs carried wheels first)
    python benchmarks/gpu_check.py --smoke         # the same checks on CPU, small (tests/test_benchmarks.py)

Prepared so that the first session with a GPU runs it at once (about 3-5 minutes on one H200, 8 at
most). Each check trains the shipped `chain` policy on prefixed problems (rule-following traces of
16 easy problems, where a group holds successes and failures; the demo's 3 cuts + 1 unprefixed copy
per trace) and checks what must hold on any device: the loss is finite, the weights moved, the
FLOPs ledger counted the steps. Throughput is measured on a randomly initialised Llama of about
25 M parameters (the chain tokenizer) at the demo's shapes: sampling (samples/s, GFLOP/s at 2·N·D)
in fp32 and bf16, and a GRPO step (s/step).
Prints a table and writes OUT/gpu_check.md and OUT/gpu_check.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from prefixrl.files import read_jsonl, write_jsonl
from prefixrl.generate import HFSampler, SamplingParams
from prefixrl.models import TinyModelConfig, load_model, n_params, resolve_model, tiny_model
from prefixrl.prefixes import PrefixConfig, prefixed_problems, render_prompt
from prefixrl.tasks import load_task
from prefixrl.tasks.chain import RULES, move
from prefixrl.train import TrainConfig, train

ROOT = Path(__file__).resolve().parents[1]
BIG = TinyModelConfig(hidden_size=512, num_hidden_layers=8, num_attention_heads=8, intermediate_size=1376,
                      max_position_embeddings=256)
SMALL = TinyModelConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128,
                        max_position_embeddings=256)


def rule_trace(prompt: str) -> str:
    """A correct `chain` solution: strategy P, every move by P's rule."""
    start, n_moves = map(int, prompt.rstrip(":").split())
    (a, b), steps = divmod(start, 10), []
    for left in range(n_moves - 1, -1, -1):
        op = RULES["P"](a, b)
        a, b = move(a, b, op)
        steps.append(f" {op}{a}{b}/{left}")
    return " P" + "".join(steps) + f" ={a}{b}."


def weights(path) -> dict[str, torch.Tensor]:
    return {k: v.float().cpu() for k, v in load_model(str(path), device="cpu")[0].state_dict().items()}


def check_run(name: str, run: Path, base: Path, seconds: float, steps: int, must_move: bool = True) -> dict:
    """What must hold after any training path: finite losses, moved weights (where some group had a
    reward), a ledger of every step."""
    metrics = [r for r in read_jsonl(run / "metrics.jsonl") if "loss" in r]
    before, after = weights(base), weights(run / "model")
    moved = max((after[k] - before[k]).abs().max().item() for k in before)
    flops = json.loads((run / "flops.json").read_text())["total"]
    ok = len(metrics) == steps and all(torch.isfinite(torch.tensor(r["loss"])) for r in metrics) \
        and (moved > 0 or not must_move) and flops > 0
    return {"check": name, "ok": ok, "steps": len(metrics), "s/step": seconds / max(len(metrics), 1),
            "max |dw|": moved, "flops": flops}


def train_path(name: str, rows: list[dict], base: Path, out: Path, cfg: TrainConfig, must_move: bool = True) -> dict:
    folder = out / name.replace(" ", "-")
    start = time.perf_counter()
    train(load_task("chain"), str(base), rows, folder, cfg)
    return check_run(name, folder, base, time.perf_counter() - start, cfg.steps, must_move)


def fsdp_path(rows_file: Path, base: Path, out: Path, cfg: TrainConfig) -> dict:
    """`prefixrl train` under `accelerate launch` with the shipped FSDP config, on every visible GPU."""
    gpus = torch.cuda.device_count()
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
               str(ROOT / "configs" / "accelerate" / "fsdp.yaml"), "--num_processes", str(gpus),
               "-m", "prefixrl.cli", "train", str(base), "--task", "chain", "--data", str(rows_file),
               "--out", str(out / "fsdp"), "--steps", str(cfg.steps), "--problems-per-step",
               str(cfg.problems_per_step), "--num-generations", str(cfg.num_generations),
               "--max-completion-length", str(cfg.max_completion_length), "--eval-every", "0", "--bf16"]
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        return {"check": f"fsdp x{gpus} (bf16)", "ok": False, "error": result.stderr[-2000:]}
    return check_run(f"fsdp x{gpus} (bf16)", out / "fsdp", base, seconds, cfg.steps)


def sampling_throughput(model_dir: Path, prompts: list[str], n: int, dtype: torch.dtype, tokens: int) -> dict:
    model, tokenizer = load_model(str(model_dir), dtype=dtype)
    sampler = HFSampler(model, tokenizer, SamplingParams(max_new_tokens=tokens, batch_size=len(prompts) * n))
    rendered = [render_prompt(tokenizer, p) for p in prompts]
    sampler.generate(rendered[:2], 2, seed=0)  # warm-up: kernels, allocator
    sync()
    start = time.perf_counter()
    samples = [s for group in sampler.generate(rendered, n, seed=1) for s in group]
    sync()
    seconds = time.perf_counter() - start
    read = sum(s.tokens for s in samples)
    return {"check": f"sampling {str(dtype).removeprefix('torch.')}", "ok": True, "samples/s": len(samples) / seconds,
            "GFLOP/s": 2 * n_params(model) * read / seconds / 1e9}


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "runs/gpu_check")))
    parser.add_argument("--smoke", action="store_true", help="small and short: the CPU check of this script")
    args = parser.parse_args()
    if not args.smoke and not torch.cuda.is_available():
        sys.exit("no CUDA device: run on a GPU machine, or pass --smoke for the small CPU version")
    args.out.mkdir(parents=True, exist_ok=True)
    task = load_task("chain")
    policy = resolve_model("builtin:chain")
    _, tokenizer = load_model(policy, device="cpu")
    problems = {p.id: p for p in task.problems("easy")[:16]}  # 2-5 moves: groups with and without reward
    traces = [{"problem_id": pid, "completion": rule_trace(p.prompt)} for pid, p in problems.items()]
    rows = prefixed_problems(tokenizer, traces, problems, PrefixConfig())
    write_jsonl(args.out / "rows.jsonl", rows)
    cfg = TrainConfig(steps=2 if args.smoke else 4, problems_per_step=4 if args.smoke else 16,
                      num_generations=4 if args.smoke else 8, max_completion_length=128, eval_every=0,
                      save_every=10**6, progress_bar=False)
    big = args.out / "big"
    tiny_model(tokenizer, SMALL if args.smoke else BIG).save_pretrained(big)
    tokenizer.save_pretrained(big)

    results = [{"check": "device", "ok": True, "torch": torch.__version__,
                "name": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"}]
    results.append(train_path("train fp32", rows, Path(policy), args.out, cfg))
    if not args.smoke:  # bf16 autocast and FSDP are the GPU paths
        results.append(train_path("train bf16", rows, Path(policy), args.out, replace(cfg, bf16=True)))
        results.append(fsdp_path(args.out / "rows.jsonl", Path(policy), args.out, cfg))
    prompts = [p.prompt for p in problems.values()]
    n = 4 if args.smoke else 32  # 16 problems x 32 = 512 samples per call
    for dtype in (torch.float32, torch.bfloat16):
        results.append(sampling_throughput(big, prompts, n, dtype, 32 if args.smoke else 128))
    # timing: a random model earns no reward, so its weights need not move
    results.append(train_path(f"step {n_params(load_model(str(big), device='cpu')[0]) / 1e6:.2g} M", rows, big,
                              args.out, cfg, must_move=False))
    report(results, args.out)


def report(results: list[dict], out: Path) -> None:
    keys = ["check", "ok"] + sorted({k for r in results for k in r} - {"check", "ok", "error"})
    fmt = lambda v: f"{v:.3g}" if isinstance(v, float) else ("" if v is None else str(v))  # noqa: E731
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(fmt(r.get(k)) for k in keys) + " |" for r in results]
    text = "\n".join(lines) + "\n"
    (out / "gpu_check.md").write_text(text)
    (out / "gpu_check.json").write_text(json.dumps(results, indent=2))
    print(text)
    for r in results:
        if r.get("error"):
            print(f"{r['check']} failed:\n{r['error']}")
    if not all(r["ok"] for r in results):
        sys.exit(1)


if __name__ == "__main__":
    main()
