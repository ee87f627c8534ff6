"""Sampling throughput on CPU: the fast decode loop (generate_fast.FastSampler) against transformers'
`model.generate` (HFSampler) and against a bare decode loop over the transformers forward with its
DynamicCache, same model, prompts, batch, lengths and seeds, in one process; the fast loop with early
rejection (the task's `dead_end` stops a sample once no continuation can be correct: the same
correct samples, fewer tokens); `collect` on the fast sampler (early rejection, scoring and round
logs included); and the GEMM bound at the model's shapes.

    python benchmarks/sampling.py [--model builtin:chain] [--task chain] [--problems 8] [--attempts 256]

Every path generates problems x attempts samples in batches of --batch-size at temperature 1 with
a KV cache; the paths are run in turn --repeats times and each keeps its best time (the machine
is shared: only ratios within one run mean anything). Prints samples/s, generated tokens/s,
GFLOP/s (2·N·D, prompt tokens included), the share of the GEMM bound (the same 2·N FLOPs per
token done as bare GEMMs of one decode step at this batch) and the ratios (target: fast >= 2x the
bare loop).

--smoke: every path at a test's size (2 problems x 8 samples, batch 16, 32 new tokens, one repeat),
for tests/test_benchmarks.py; explicit flags still win.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import DynamicCache

from prefixrl.generate import HFSampler, SamplingParams
from prefixrl.generate_fast import Decoder, FastSampler
from prefixrl.models import encode_prompt, load_model, resolve_model
from prefixrl.tasks import dead_end_of, load_task
from prefixrl.traces import CollectConfig, collect


def counts(samples) -> tuple[int, int, int]:
    """(samples, generated tokens, prompt tokens) of a sampler's output."""
    flat = [s for group in samples for s in group]
    return len(flat), sum(len(s.token_ids) for s in flat), sum(s.prompt_tokens for s in flat)


@torch.inference_mode()
def bare_loop(model, tokenizer, prompts: list[str], n: int, params: SamplingParams, seed: int) -> tuple[int, int, int]:
    """A plain decode loop over the transformers forward and DynamicCache: what is left of
    `generate` without its logits processors, stopping criteria and bookkeeping."""
    flat = [p for p in prompts for _ in range(n)]
    samples = generated = read = 0
    for start in range(0, len(flat), params.batch_size):
        batch = flat[start:start + params.batch_size]
        enc = tokenizer.pad({"input_ids": [encode_prompt(tokenizer, t) for t in batch]}, padding_side="left",
                            return_tensors="pt")
        mask = enc["attention_mask"]
        positions = (mask.cumsum(1) - 1).clamp(min=0)
        torch.manual_seed(seed + start)
        cache = DynamicCache(config=model.config)
        logits = model(input_ids=enc["input_ids"], attention_mask=mask, position_ids=positions, cache=cache,
                       use_cache=True, logits_to_keep=1).logits[:, -1]
        finished = torch.zeros(len(batch), dtype=torch.bool)
        lengths = torch.zeros(len(batch), dtype=torch.long)
        for step in range(params.max_new_tokens):
            token = torch.multinomial((logits / params.temperature).softmax(-1), 1).squeeze(1)
            token = token.masked_fill(finished, tokenizer.pad_token_id)
            lengths += ~finished
            finished |= token == tokenizer.eos_token_id
            if finished.all():
                break
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
            positions = positions[:, -1:] + 1
            logits = model(input_ids=token[:, None], attention_mask=mask, position_ids=positions,
                           cache=cache, use_cache=True).logits[:, -1]
        samples, generated = samples + len(batch), generated + int(lengths.sum())
        read += int(enc["attention_mask"].sum())
    return samples, generated, read


@torch.inference_mode()
def gemm_bound(model, batch: int, n_params: int, repeats: int = 50) -> float:
    """FLOP/s of one decode step's GEMMs at `batch` rows (every projection and the head, fused as the
    fast loop fuses them), counted as 2·N per token as the table counts: what the arithmetic allows."""
    decoder = Decoder(model)
    weights = [w for layer in decoder.layers for w in (layer.qkv_w, layer.o_w, layer.gate_up_w, layer.down_w)]
    weights.append(decoder.lm_head)
    inputs = [torch.randn(batch, w.shape[1]) for w in weights]
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for x, w in zip(inputs, weights):
            F.linear(x, w)
        best = min(best, time.perf_counter() - t0)
    return 2 * n_params * batch / best


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="builtin:chain")
    parser.add_argument("--task", default="chain")
    parser.add_argument("--problems", type=int, default=8)
    parser.add_argument("--attempts", type=int, default=256, help="samples per problem")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: the test of this script")
    args = parser.parse_args()
    if args.smoke:
        parser.set_defaults(problems=2, attempts=8, batch_size=16, max_new_tokens=32, repeats=1)
        args = parser.parse_args()

    task = load_task(args.task)
    model, tokenizer = load_model(resolve_model(args.model), device="cpu")
    params = SamplingParams(temperature=1.0, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size)
    hf, fast = HFSampler(model, tokenizer, params), FastSampler(model, tokenizer, params)
    problems = task.problems("train")[:args.problems]
    prompts = [p.prompt for p in problems]
    cfg = CollectConfig(max_attempts=args.attempts, traces_per_problem=10**9, attempts_per_round=args.attempts)

    def run_collect():
        with tempfile.TemporaryDirectory() as tmp:
            collect(task, fast, problems, tmp, cfg, source=args.model, quiet=True)
            rows = json.loads((Path(tmp) / "collect.json").read_text())["per_problem"]
        return tuple(sum(r[k] for r in rows) for k in ("samples", "generated_tokens", "prompt_tokens"))

    kept = {}  # each sampler's samples: the same seeds, so the same samples up to float-rounding ties

    def sampled(name, sampler, dead_end=None):
        kept[name] = sampler.generate(prompts, args.attempts, seed=0, dead_end=dead_end)
        return counts(kept[name])

    paths = {"model.generate": lambda: sampled("hf", hf),
             "bare HF loop": lambda: bare_loop(model, tokenizer, prompts, args.attempts, params, seed=0),
             "fast loop": lambda: sampled("fast", fast),
             "fast, early stop": lambda: sampled("early", fast, dead_end_of(task, problems)),
             "collect (fast)": run_collect}
    fast.generate(prompts[:1], 8, seed=0), hf.generate(prompts[:1], 8, seed=0)  # warm-up
    best = {name: (float("inf"), None) for name in paths}
    for _ in range(args.repeats):  # in turn, so a burst of load on the other core hits every path alike
        for name, path in paths.items():
            t0 = time.perf_counter()
            result = path()
            best[name] = min(best[name], (time.perf_counter() - t0, result), key=lambda x: x[0])
    bound = gemm_bound(model, args.batch_size, fast.n_params)

    n = fast.n_params
    print(f"\nmodel {args.model} ({n / 1e6:.2f} M params), {len(problems)} problems x {args.attempts} samples, "
          f"batch {args.batch_size}, max {args.max_new_tokens} new tokens, {torch.get_num_threads()} threads, "
          f"best of {args.repeats}\n")
    print(f"| {'path':16} | {'samples/s':>10} | {'gen tok/s':>10} | {'GFLOP/s':>8} | {'of GEMM bound':>13} |")
    print(f"|{'-' * 18}|{'-' * 12}|{'-' * 12}|{'-' * 10}|{'-' * 15}|")
    rate = {}
    for name, (secs, (samples, generated, read)) in best.items():
        flops_per_s = 2 * n * (generated + read) / secs
        rate[name] = samples / secs
        print(f"| {name:16} | {samples / secs:10,.0f} | {generated / secs:10,.0f} | {flops_per_s / 1e9:8.2f} | "
              f"{flops_per_s / bound:13.0%} |")
    print(f"\nGEMM bound at batch {args.batch_size}: {bound / 1e9:.1f} GFLOP/s")
    print(f"fast / bare HF loop (samples/s): {rate['fast loop'] / rate['bare HF loop']:.2f}  (target >= 2)")
    print(f"fast / model.generate (samples/s): {rate['fast loop'] / rate['model.generate']:.2f}")
    print(f"fast with early stop / fast loop (samples/s): {rate['fast, early stop'] / rate['fast loop']:.2f}  "
          f"(the task's dead_end: the same correct samples, fewer tokens)")
    print(f"collect (fast, early stop) / fast loop (samples/s): {rate['collect (fast)'] / rate['fast loop']:.2f}")
    correct = {name: sum(task.verify(p, s.text).reward for p, group in zip(problems, kept[name]) for s in group)
               for name in ("fast", "early")}
    print(f"correct samples, fast loop / with early stop: {correct['fast']:.0f} / {correct['early']:.0f}")
    pairs = [(a.token_ids, b.token_ids) for ga, gb in zip(kept["hf"], kept["fast"]) for a, b in zip(ga, gb)]
    print(f"fast loop's samples identical to model.generate's (same seeds): {sum(a == b for a, b in pairs)} "
          f"of {len(pairs)}")


if __name__ == "__main__":
    main()
