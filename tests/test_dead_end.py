"""Early rejection: `Task.dead_end(problem, partial)` may say True only when no continuation of the
partial solution can be correct; the fast sampler then stops that sample, and every other sample
stays exactly what it would have been."""

import random

import pytest

from conftest import solve_chain, solve_sort
from prefixrl.generate import SamplingParams
from prefixrl.generate_fast import FastSampler
from prefixrl.models import load_model, resolve_model
from prefixrl.tasks import Problem, dead_end_of, load_task, verify_all
from prefixrl.tasks.mines import MOVES, move

TASKS = ("sort", "chain", "mines", "gambles", "minefield")


def correct_solutions(task, problems, rng):
    """Correct solutions of several kinds per problem (both chain rules; random surviving walks)."""
    if task.name == "sort":
        return [(p, solve_sort(p.prompt)) for p in problems]
    if task.name == "chain":
        return [(p, solve_chain(p.prompt, s)) for p in problems for s in "PQ"]
    out = []
    for p in problems:
        start, n = (int(x) for x in p.prompt.rstrip(":").split())
        for _ in range(3):
            (a, b), text, before = divmod(start, 10), "", None
            for i in range(n):
                op = rng.choice([op for op in MOVES if task.survives(p.prompt, i, a, b, op, before)])
                before, (a, b) = a, move(a, b, op)
                text += f" {op}{a}{b}/{n - i - 1}"
            out.append((p, text + f" ={a}{b}."))
    return out


def prefixes(text):
    return [text[:i] for i in range(len(text) + 1)]


@pytest.mark.parametrize("name", TASKS)
def test_no_prefix_of_a_correct_solution_is_a_dead_end(name):
    task = load_task(name)
    problems = task.problems("train")[:20] + task.problems("easy")[:10]
    solutions = correct_solutions(task, problems, random.Random(0))
    assert all(v.reward == 1.0 for v in verify_all(task, solutions))
    for problem, text in solutions:
        assert not any(task.dead_end(problem, cut) for cut in prefixes(text)), (problem.prompt, text)


@pytest.mark.parametrize("name", TASKS)
def test_a_dead_end_is_never_completed_correctly_and_most_wrong_attempts_die_early(name):
    """The corpus's worked attempts are mostly wrong (random decisions): each one whose prefix is
    called a dead end must be wrong as a whole, and most wrong ones must be caught before their end
    (the point: the sampler stops them early). A one-character change of a correct solution, if
    its prefix is dead, must be wrong too."""
    task = load_task(name)
    caught = wrong = 0
    for prompt, completion in task.corpus(300, seed=1):
        problem = Problem(id=prompt, prompt=prompt, answer="", difficulty=0, split="corpus")  # verify reads the prompt
        dead = [i for i, cut in enumerate(prefixes(completion)) if task.dead_end(problem, cut)]
        correct = task.verify(problem, completion).reward == 1.0
        assert not (dead and correct), (prompt, completion, dead[0])
        wrong += not correct
        caught += bool(dead) and dead[0] < len(completion) - 4
    assert wrong >= 20 and caught >= 0.8 * wrong
    rng = random.Random(2)
    for problem, text in correct_solutions(task, task.problems("train")[:10], rng):
        for _ in range(20):
            i = rng.randrange(len(text))
            changed = text[:i] + rng.choice("0123456789 /=.LRPQABCD:") + text[i + 1:]
            if changed != text and any(task.dead_end(problem, cut) for cut in prefixes(changed)):
                assert task.verify(problem, changed).reward == 0.0, (text, changed)


def test_garbage_is_never_a_crash():
    for name in TASKS:
        task = load_task(name)
        problem = task.problems("train")[0]
        for text in ("", " ", "   ", "\u0661\u0662", " P L12/", " 1:", " A12/0 ", "=", " P" + " L12/3" * 500):
            assert task.dead_end(problem, text) in (True, False)


def test_the_sampler_stops_dead_ends_and_every_other_sample_is_unchanged():
    """Same seed, with and without early rejection: every sample that was not stopped is the same,
    token for token; a stopped one is a strict prefix of its full sample, which is wrong; so the
    number of correct samples per problem is identical, at a fraction of the generated tokens."""
    task = load_task("chain")
    model, tok = load_model(resolve_model("builtin:chain"), device="cpu")
    sampler = FastSampler(model, tok, SamplingParams(max_new_tokens=128, batch_size=96))
    problems = task.problems("easy")[:3] + task.problems("train")[:3]
    prompts = [p.prompt for p in problems]
    full = sampler.generate(prompts, 32, seed=5)
    early = sampler.generate(prompts, 32, seed=5, dead_end=dead_end_of(task, problems))
    stopped, near_ties = 0, 0
    for problem, group_full, group_early in zip(problems, full, early):
        for a, b in zip(group_full, group_early):
            if a.token_ids == b.token_ids:
                assert b.logprobs == pytest.approx(a.logprobs, abs=1e-4)  # other batch shapes: float rounding
            elif a.token_ids[:len(b.token_ids)] == b.token_ids:
                stopped += 1
                assert a.text.startswith(b.text) and task.dead_end(problem, b.text)
                assert task.verify(problem, a.text).reward == 0.0
                assert b.logprobs == pytest.approx(a.logprobs[:len(b.logprobs)], abs=1e-4)
            else:  # a draw within float rounding of a token boundary (README, Benchmarks): rare, not never
                near_ties += 1
        if not near_ties:
            assert (sum(task.verify(problem, s.text).reward for s in group_full)
                    == sum(task.verify(problem, s.text).reward for s in group_early))
    assert near_ties <= 1
    tokens = lambda groups: sum(len(s.token_ids) for g in groups for s in g)
    assert stopped > 100 and tokens(early) < 0.6 * tokens(full)
