"""Collect's sampling throughput against a bare `model.generate` loop, same model, batch and lengths.

    python benchmarks/sampling.py [--model builtin:sort] [--task sort] [--problems 8] [--attempts 256]

Both sides generate problems x attempts samples in batches of --batch-size at temperature 1 with
the KV cache on; collect additionally records log-probs, verifies every sample and writes its
round log. Prints samples/s, generated tokens/s, the ratio (target: collect >= 0.9 of bare) and
the achieved FLOP/s (2·N·D, prompt tokens included) against this machine's measured fp32 ceiling.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from prefixrl.generate import HFSampler, SamplingParams
from prefixrl.models import load_model, resolve_model
from prefixrl.tasks import load_task
from prefixrl.traces import CollectConfig, collect

CPU_FP32_CEILING = 75e9  # FLOP/s: measured fp32 matmul ceiling of the 2-core dev machine


def bare_generate(model, tokenizer, prompts: list[str], n: int, params: SamplingParams) -> tuple[int, int, int]:
    """(samples, generated tokens, prompt tokens) from a plain generate loop."""
    flat = [p for p in prompts for _ in range(n)]
    samples = generated = read = 0
    for start in range(0, len(flat), params.batch_size):
        batch = flat[start:start + params.batch_size]
        enc = tokenizer(batch, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
        torch.manual_seed(start)
        with torch.no_grad():
            out = model.generate(**enc, do_sample=True, temperature=params.temperature, top_k=0,
                                 max_new_tokens=params.max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                                 eos_token_id=tokenizer.eos_token_id)
        new = out[:, enc["input_ids"].shape[1]:]
        generated += int((new != tokenizer.pad_token_id).sum())
        read += int(enc["attention_mask"].sum())
        samples += len(batch)
    return samples, generated, read


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="builtin:sort")
    parser.add_argument("--task", default="sort")
    parser.add_argument("--problems", type=int, default=8)
    parser.add_argument("--attempts", type=int, default=256, help="samples per problem")
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    task = load_task(args.task)
    model, tokenizer = load_model(resolve_model(args.model))
    params = SamplingParams(temperature=1.0, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size)
    sampler = HFSampler(model, tokenizer, params)
    problems = task.problems("train")[:args.problems]
    bare_generate(model, tokenizer, [problems[0].prompt], 8, params)  # warm-up

    # alternate the two sides and keep each one's best run: the other core's load varies
    bare_s = collect_s = float("inf")
    cfg = CollectConfig(max_attempts=args.attempts, traces_per_problem=10**9, attempts_per_round=args.attempts)
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        samples, generated, read = bare_generate(model, tokenizer, [p.prompt for p in problems], args.attempts, params)
        bare_s = min(bare_s, time.perf_counter() - t0)
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            collect(task, sampler, problems, tmp, cfg, source=args.model, quiet=True)
            collect_s = min(collect_s, time.perf_counter() - t0)
            rows = json.loads((Path(tmp) / "collect.json").read_text())["per_problem"]
    c_samples = sum(r["samples"] for r in rows)
    c_generated = sum(r["generated_tokens"] for r in rows)
    c_read = sum(r["prompt_tokens"] for r in rows)

    n = sampler.n_params
    print(f"\nmodel {args.model} ({n / 1e6:.2f} M params), {len(problems)} problems x {args.attempts} samples, "
          f"batch {args.batch_size}, max {args.max_new_tokens} new tokens, {torch.get_num_threads()} threads\n")
    print(f"| {'':15} | {'samples/s':>10} | {'gen tok/s':>10} | {'GFLOP/s':>8} | {'MFU':>6} |")
    print(f"|{'-' * 17}|{'-' * 12}|{'-' * 12}|{'-' * 10}|{'-' * 8}|")
    for name, s, g, r, secs in (("bare generate", samples, generated, read, bare_s),
                                ("collect", c_samples, c_generated, c_read, collect_s)):
        flops_per_s = 2 * n * (g + r) / secs
        print(f"| {name:15} | {s / secs:10,.0f} | {g / secs:10,.0f} | {flops_per_s / 1e9:8.2f} | "
              f"{flops_per_s / CPU_FP32_CEILING:6.1%} |")
    print(f"\ncollect / bare (generated tokens/s): {(c_generated / collect_s) / (generated / bare_s):.2f}  (target >= 0.9)")


if __name__ == "__main__":
    main()
