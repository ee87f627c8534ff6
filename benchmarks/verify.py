"""The math task's verifier: answers verified per second by the fast path and by math-verify in the
worker processes, and the worst-case time of an adversarial answer (bounded by the timeout).

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/verify.py [--train FILE] [--n 2000] [--workers 2]

Solutions are a paragraph of reasoning ending in a boxed answer: the problem's own gold answer,
verbatim (the fast path), or another problem's gold answer (wrong: math-verify must parse and
compare both, as for most samples on a hard problem). In-process math-verify (no workers, no
timeout) is the reference for the cost of the worker round trip. Adversarial answers: a power
tower sympy never finishes evaluating, and a 1000-term polynomial that takes
longer than the timeout to parse.

--smoke: the same rows at a test's size (50 fast-path answers, 4 math-verify ones, 1 worker, a 1 s
timeout), for tests/test_benchmarks.py; explicit flags still win.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from prefixrl.tasks import load_task
from prefixrl.tasks.math import check_answer

REASONING = "We first rewrite the expression, then simplify each term and collect like terms. " * 4
ADVERSARIAL = {"power tower 9^9^9^9": "\\boxed{9^{9^{9^{9}}}}",
               "1000-term polynomial": "\\boxed{" + "+".join(f"x^{{{i}}}" for i in range(1000)) + "}"}


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", default=str(Path(__file__).parents[1] / "tests" / "data" / "math_problems.jsonl"))
    parser.add_argument("--n", type=int, default=2000, help="answers per fast-path measurement")
    parser.add_argument("--n-slow", type=int, default=300, help="answers per math-verify measurement")
    parser.add_argument("--workers", type=int, default=2, help="workers for the batched math-verify row")
    parser.add_argument("--timeout", type=float, default=5.0, help="verify_timeout_s")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: the test of this script")
    args = parser.parse_args()
    if args.smoke:
        parser.set_defaults(n=50, n_slow=4, workers=1, timeout=1.0)
        args = parser.parse_args()

    problems = load_task("math", train=args.train).problems("train")
    right = [(p, f"{REASONING}The answer is $\\boxed{{{p.answer}}}$.") for p in problems]
    wrong = [(p, f"{REASONING}The answer is $\\boxed{{{q.answer}}}$.") for p, q in zip(problems, problems[1:])]
    fast = [right[i % len(right)] for i in range(args.n)]
    slow = [wrong[i % len(wrong)] for i in range(args.n_slow)]

    rows = []  # (what, answers, seconds)
    one = load_task("math", train=args.train, verify_timeout_s=args.timeout)
    many = load_task("math", train=args.train, verify_timeout_s=args.timeout, verify_workers=args.workers)
    rows.append(("worker start (spawn + warm-up), first call", 1, timed(lambda: one.verify(*slow[0]))))
    many.verify_many(slow[:args.workers])  # start the batch pool's workers outside the timings
    rows.append(("fast path, verify()", len(fast), timed(lambda: [one.verify(p, s) for p, s in fast])))
    rows.append(("math-verify, 1 worker, verify()", len(slow), timed(lambda: [one.verify(p, s) for p, s in slow])))
    rows.append(("math-verify in-process, no timeout (reference)", len(slow),
                 timed(lambda: [check_answer(p.answer, s) for p, s in slow])))
    rows.append((f"math-verify, {args.workers} workers, verify_many()", len(slow),
                 timed(lambda: many.verify_many(slow))))
    assert all(v.reward == 1.0 for v in one.verify_many(right)) and not any(v.reward for v in one.verify_many(wrong))

    worst = []
    for name, text in ADVERSARIAL.items():
        timeouts = one.verifier_stats["timeouts"]
        seconds = timed(lambda: one.verify(problems[0], text))
        outcome = "timeout" if one.verifier_stats["timeouts"] > timeouts else "verdict"
        restart = timed(lambda: one.verify(*slow[0]))  # the next call, paying for a replaced worker
        worst.append((name, seconds, outcome, restart))

    print(f"\n{'path':<52}{'answers':>8}{'seconds':>9}{'answers/s':>11}")
    for what, n, seconds in rows:
        print(f"{what:<52}{n:>8}{seconds:>9.2f}{n / seconds:>11.0f}")
    print(f"\n{'adversarial answer (timeout ' + format(args.timeout, 'g') + ' s)':<36}{'seconds':>9}{'outcome':>9}"
          f"{'next call (worker restart)':>28}")
    for name, seconds, outcome, restart in worst:
        print(f"{name:<36}{seconds:>9.2f}{outcome:>9}{restart:>28.2f}")
    print(f"\nverifier_stats (1-worker task): {one.verifier_stats}")
    one.close()
    many.close()


if __name__ == "__main__":  # the verifier's workers are spawned: they must not rerun this script
    main()
