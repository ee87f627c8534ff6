"""Success rates of a `mines` base model without thousands of samples: sequential importance
sampling (SIS) over safe walks (README, Tasks: `mines`).

    python benchmarks/mines_sis.py builtin:mines '{}' runs/mines-sis.json      # rates, success vs prefix
    python benchmarks/mines_sis.py --traces builtin:mines runs/task-properties/mines   # traces for regime.py
    python benchmarks/mines_sis.py builtin:gambles '{}' out.json --task gambles        # the same for `gambles`
    python benchmarks/mines_sis.py --traces builtin:gambles runs/probe-gambles --task gambles --problems 32
    python benchmarks/mines_sis.py builtin:mines '{}' out.json --smoke          # tiny: tests/test_benchmarks.py


At each move, the model's distribution over the move letter is read; a safe move is drawn in
proportion to it and the run's weight is multiplied by the safe moves' total probability; every
other token (space, digits, counter, answer, <eos>) is forced and its probability multiplied in.
The mean weight is the probability that one sample at temperature T is correct.

--smoke (either mode): 2 problems per split and 4 SIS runs each, 1 problem for the prefix curve;
with --traces, 2 problems of 8 runs (unless --problems says otherwise).
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np
import torch

from prefixrl.models import encode_prompt, load_model, resolve_model
from prefixrl.tasks import load_task
from prefixrl.tasks.gambles import SURE
from prefixrl.tasks.mines import MOVES, move, safe


@torch.no_grad()
def sis(model, tok, prompt, start, n_moves, done_ops="", runs=64, temperature=1.0, seed=0, task=None):
    """Per-run log weights, safe-mass per step and forced-token logprob per step, from the state
    after `done_ops` (a prefix of moves, given as context). A move is safe by `mines`' window, or
    for a `gambles` task by its survival at that index (the sure move, or a lucky gamble)."""
    def ok_at(index, a, b, op):  # the task's own verdict on one move (mines' window by default)
        return task.survives(prompt, index, a, b, op) if task is not None else safe(a, b, op)
    g = torch.Generator().manual_seed(seed)
    ids_of = {c: tok.convert_tokens_to_ids(c) for c in "0123456789ABCD /=."}
    move_ids = torch.tensor([ids_of[op] for op in MOVES])
    base = encode_prompt(tok, prompt)
    (a0, b0) = divmod(start, 10)
    text = ""
    for i, op in enumerate(done_ops):
        a0, b0 = move(a0, b0, op)
        text += f" {op}{a0}{b0}/{n_moves - i - 1}"
    states = [(a0, b0)] * runs
    texts = [text] * runs
    left = n_moves - len(done_ops)
    logw = torch.zeros(runs)
    safe_mass, forced, sure_mass = [], [], []
    pending = [len(text)] * runs  # index in text from which tokens are forced (after the last chosen op)
    for step in range(left + 1):
        final = step == left
        tail = [t + (" =" + f"{s[0]}{s[1]}." if final else " ") for t, s in zip(texts, states)]
        ids = torch.tensor([base + [ids_of[c] for c in t] + ([tok.eos_token_id] if final else []) for t in tail])
        logp = (model(input_ids=ids).logits.float() / temperature).log_softmax(-1)
        start_pos = len(base) + torch.tensor(pending)
        L = ids.shape[1]
        lp_tok = logp[:, :-1].gather(-1, ids[:, 1:, None]).squeeze(-1)  # lp of token t+1 at position t
        mask = torch.arange(L - 1)[None, :] >= (start_pos[:, None] - 1)
        f = (lp_tok * mask).sum(1)
        logw += f
        forced.append(f.mean().item())
        if final:
            break
        probs = logp[:, -1].exp()[:, move_ids]  # next token after the space: the move letter
        index = len(done_ops) + step
        ok = torch.tensor([[ok_at(index, a, b, op) for op in MOVES] for a, b in states], dtype=torch.float)
        mass = (probs * ok).sum(1)
        safe_mass.append(mass.mean().item())
        sure = torch.tensor([list(MOVES).index(SURE[a, b]) for a, b in states])
        sure_mass.append(probs.gather(1, sure[:, None]).mean().item() / probs.sum(1).mean().item())
        logw += mass.clamp_min(1e-30).log()
        choice = torch.multinomial(probs * ok + 1e-30 * ok, 1, generator=g).squeeze(1)
        for r in range(runs):
            op = list(MOVES)[choice[r]]
            a, b = move(*states[r], op)
            states[r] = (a, b)
            pending[r] = len(texts[r]) + 2  # forced from the token after the op
            texts[r] += f" {op}{a}{b}/{left - step - 1}"
    sis.sure_mass = sure_mass  # gambles: the policy's share on the sure move, per step
    return logw, safe_mass, forced, texts


def main(argv):
    task_name = "mines"
    if "--task" in argv:
        i = argv.index("--task")
        task_name, argv = argv[i + 1], argv[:i] + argv[i + 2:]
    smoke = "--smoke" in argv
    argv = [a for a in argv if a != "--smoke"]
    n_problems, runs, n_curve = (2, 4, 1) if smoke else (24, 16, 12)
    model_path = resolve_model(argv[1])
    task = load_task(task_name, **(json.loads(argv[2]) if len(argv) > 2 else {}))
    model, tok = load_model(model_path, device="cpu")
    t0 = time.time()
    out = {}
    for split in ("easy", "train"):
        ps, masses, execs, sures = [], [], [], []
        for p in task.problems(split)[:n_problems]:
            start, n = (int(x) for x in p.prompt.rstrip(":").split())
            logw, sm, fr, _ = sis(model, tok, p.prompt, start, n, runs=runs, task=task)
            sures.append(np.mean(sis.sure_mass))
            ps.append(logw.exp().mean().item())
            masses.append(np.mean(sm))
            execs.append(np.exp(np.mean(fr[:-1])) if len(fr) > 1 else float("nan"))
        ps = np.array(ps)
        zero = (1 - ps) ** 512  # chance that 512 samples hold no success
        found = zero * (1 - (1 - ps) ** 1988)  # ... and that the rest of 2,500 attempts hold one
        out[split] = {"pass@1": ps.mean(), "median": float(np.median(ps)), "safe_mass": float(np.mean(masses)),
                      "sure_share": float(np.mean(sures)),
                      "exec_per_move": float(np.nanmean(execs)),
                      "chance": float(np.mean([task.chance(p) for p in task.problems(split)[:len(ps)]])),
                      "share_pass512_0": float(zero.mean()),
                      "share_trace_2500_of_those": float(found.mean() / max(zero.mean(), 1e-9)),
                      "mean_attempts_to_trace": float(np.mean(1 / np.maximum(ps, 1e-9)))}
        print(split, out[split], f"{time.time() - t0:.0f}s", flush=True)
    # success vs prefix fraction, from safe walks drawn by SIS (stand-ins for rejection-sampled traces)
    curve = {}
    for p in task.problems("train")[:n_curve]:
        start, n = (int(x) for x in p.prompt.rstrip(":").split())
        _, _, _, texts = sis(model, tok, p.prompt, start, n, runs=1, seed=7, task=task)
        ops = "".join(ch for ch in texts[0] if ch in "ABCD")
        for frac in (0.0, 0.25, 0.5, 0.75, 0.9):
            k = round(frac * n)
            logw, *_ = sis(model, tok, p.prompt, start, n, done_ops=ops[:k], runs=runs, task=task)
            curve.setdefault(frac, []).append(logw.exp().mean().item())
    out["prefix_curve"] = {f: float(np.mean(v)) for f, v in curve.items()}
    print("success vs prefix (moves done fraction):", out["prefix_curve"], f"{time.time() - t0:.0f}s")
    json.dump(out, open(argv[3] if len(argv) > 3 else "/dev/stdout", "w"), indent=1, default=float)


def write_traces(model_name: str, out: str, n_problems: int = 16, runs: int = 64, task_name: str = "mines") -> None:
    """Stand-ins for rejection-sampled traces, for `benchmarks/regime.py`: per hard training
    problem, `runs` SIS draws and one resampled in proportion to its weight (importance
    resampling approximates the base model's distribution over its correct walks). Writes
    OUT/screen/hard.jsonl and OUT/collect/traces.jsonl, where regime.py reads them."""
    from pathlib import Path

    from prefixrl.files import write_jsonl

    model, tok = load_model(resolve_model(model_name), device="cpu")
    task = load_task(task_name)
    problems, traces = task.problems("train")[:n_problems], []
    for i, p in enumerate(problems):
        start, n = (int(x) for x in p.prompt.rstrip(":").split())
        logw, _, _, texts = sis(model, tok, p.prompt, start, n, runs=runs, seed=100 + i, task=task)
        pick = torch.multinomial((logw - logw.max()).exp(), 1, generator=torch.Generator().manual_seed(i)).item()
        end = texts[pick].rsplit(" ", 1)[1][1:3]  # the last move's pair
        completion = texts[pick] + f" ={end}."
        assert task.verify(p, completion).reward == 1.0, completion
        traces.append({"problem_id": p.id, "prompt": p.prompt, "completion": completion, "source": "sis-resampled"})
    for stage in ("screen", "collect"):
        (Path(out) / stage).mkdir(parents=True, exist_ok=True)
    write_jsonl(Path(out) / "screen" / "hard.jsonl", [p.to_dict() for p in problems])
    write_jsonl(Path(out) / "collect" / "traces.jsonl", traces)


if __name__ == "__main__":
    if sys.argv[1] == "--traces":
        def flag(name, default):
            return sys.argv[sys.argv.index(name) + 1] if name in sys.argv else default
        smoke = "--smoke" in sys.argv
        write_traces(sys.argv[2], sys.argv[3], n_problems=int(flag("--problems", 2 if smoke else 16)),
                     runs=8 if smoke else 64, task_name=flag("--task", "mines"))
    else:
        main(sys.argv)

