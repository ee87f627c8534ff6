"""Shared helpers: hand-written correct solutions for the built-in tasks and a deterministic fake
sampler (the `Sampler` protocol of prefixrl.generate) for the sort task."""

from __future__ import annotations

import os
import random
import zlib

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing in the tests may be downloaded

import pytest
import torch

from prefixrl.generate import Sample, SamplingParams
from prefixrl.models import char_tokenizer
from prefixrl.tasks.chain import RULES, move
from prefixrl.tasks.sort import swap


def sort_steps(prompt: str) -> list[tuple[int, str, int]]:
    """(position, digits after the swap, swaps left) of a correct sort solution: always swap the
    first descending neighbour pair."""
    digits, budget = prompt.rstrip(":").split()
    state, steps = digits, []
    for left in range(int(budget) - 1, -1, -1):
        pos = next(i + 1 for i in range(len(state) - 1) if state[i] > state[i + 1])
        state = swap(state, pos)
        steps.append((pos, state, left))
    return steps


def render_walk(prompt: str, ops: str, answer: str | None = None) -> str:
    """A `mines`-format solution (mines, gambles, minefield) of the moves `ops` from the prompt's start,
    every pair and count written right; the answer is the walk's own end unless given."""
    from prefixrl.tasks.mines import move as mines_move

    start, n = (int(x) for x in prompt.rstrip(":").split())
    (a, b), steps = divmod(start, 10), ""
    for i, op in enumerate(ops):
        a, b = mines_move(a, b, op)
        steps += f" {op}{a}{b}/{n - i - 1}"
    return steps + f" ={answer if answer is not None else f'{a}{b}'}."


def wrong_walks(prompt: str, ops: str, first_mine: str, seed: int) -> list[str]:
    """Wrong `mines`-format solutions built from the correct walk `ops`: garbage, cut or doubled walks,
    a first move that is a mine, other digits and counts, and 500 random strings of the format's
    characters (for the walk tasks' adversarial-verifier tests)."""
    import re

    rng = random.Random(seed)
    good = render_walk(prompt, ops)
    cases = ["", " ", ".", " =", " =00.", "\x00", "🙂" * 50, " A" * 400, good * 2,
             render_walk(prompt, ops[:-1]), render_walk(prompt, ops + ops[-1]), render_walk(prompt, ops, "٣٣"),
             render_walk(prompt, first_mine + ops[1:]), good.replace("/", "/0"),
             re.sub(r"\d", "٣", good, count=1), good[:-1]]
    return cases + ["".join(rng.choice(" ABCD0123456789/=.") for _ in range(rng.randrange(120))) for _ in range(500)]


def render_sort(steps, answer: str) -> str:
    return "".join(f" {pos}:{state}/{left}" for pos, state, left in steps) + f" ={answer}."


def solve_sort(prompt: str) -> str:
    steps = sort_steps(prompt)
    return render_sort(steps, steps[-1][1])


def chain_moves(prompt: str, strategy: str = "P") -> list[tuple[str, int, int, int]]:
    """(move, a, b, moves left) of a solution that follows the rule of `strategy` ("P" or "Q")."""
    start, n_moves = prompt.rstrip(":").split()
    (a, b), steps = divmod(int(start), 10), []
    for left in range(int(n_moves) - 1, -1, -1):
        op = RULES[strategy](a, b)
        a, b = move(a, b, op)
        steps.append((op, a, b, left))
    return steps


def render_chain(strategy: str, steps, answer: str) -> str:
    return f" {strategy}" + "".join(f" {op}{a}{b}/{left}" for op, a, b, left in steps) + f" ={answer}."


def solve_chain(prompt: str, strategy: str = "P") -> str:
    steps = chain_moves(prompt, strategy)
    return render_chain(strategy, steps, f"{steps[-1][1]}{steps[-1][2]}")


EOS_ID = 1


class FakeSortSampler:
    """Deterministic stand-in for a model on the sort task: each sample is a correct solution with
    probability `p_correct` (0 for prompts in `unsolvable`), otherwise swaps at random positions.
    Records every call; raises KeyboardInterrupt on call number `interrupt_on` (1-based)."""

    def __init__(self, p_correct: float = 1 / 40, unsolvable: tuple[str, ...] = (),
                 interrupt_on: int | None = None, batch_size: int = 32):
        self.p_correct, self.unsolvable, self.interrupt_on = p_correct, set(unsolvable), interrupt_on
        self.params = SamplingParams(max_new_tokens=64, batch_size=batch_size)
        self.n_params = 1000
        self.tokenizer = char_tokenizer()  # a base model's: the stages' prompts are the problems
        self.calls: list[tuple[list[str], int, int]] = []

    def generate(self, prompts: list[str], n: int, seed: int, dead_end=None) -> list[list[Sample]]:
        if self.interrupt_on is not None and len(self.calls) + 1 == self.interrupt_on:
            raise KeyboardInterrupt
        self.calls.append((list(prompts), n, seed))
        return [[self._sample(prompt, seed, j) for j in range(n)] for prompt in prompts]

    def _sample(self, prompt: str, seed: int, j: int) -> Sample:
        rng = random.Random(zlib.crc32(f"{seed}|{prompt}|{j}".encode()))
        p = 0.0 if prompt in self.unsolvable else self.p_correct
        if rng.random() < p:
            text = solve_sort(prompt)
        else:
            digits, budget = prompt.rstrip(":").split()
            state, steps = digits, []
            for left in range(int(budget) - 1, -1, -1):
                pos = rng.randint(1, len(digits) - 1)
                state = swap(state, pos)
                steps.append((pos, state, left))
            if state == "".join(sorted(digits)):  # a lucky random walk: spoil its answer
                state = state[::-1]
            text = render_sort(steps, state)
        token_ids = [ord(ch) for ch in text] + [EOS_ID]
        logprobs = [-rng.expovariate(2.0) for _ in token_ids]
        return Sample(text=text, token_ids=token_ids, prompt_tokens=len(prompt), logprobs=logprobs)


@pytest.fixture(scope="session")
def sort_task():
    from prefixrl.tasks import load_task

    return load_task("sort")


@pytest.fixture(scope="session")
def chain_task():
    from prefixrl.tasks import load_task

    return load_task("chain")


def record_sampler_params(monkeypatch, module) -> list[SamplingParams]:
    """The SamplingParams of every sampler `module` makes with `sampler_for` from now on (the sampler still works)."""
    made, inner = [], module.sampler_for

    def recording(model, tokenizer, params, backend=None):
        made.append(params)
        return inner(model, tokenizer, params, backend)

    monkeypatch.setattr(module, "sampler_for", recording)
    return made


@pytest.fixture
def cpu_threads():
    """Two threads (CI has two cores) unless OMP_NUM_THREADS says otherwise; restored after."""
    before = torch.get_num_threads()
    wanted = os.environ.get("OMP_NUM_THREADS", "")
    torch.set_num_threads(int(wanted) if wanted.isdigit() and int(wanted) > 0 else min(2, os.cpu_count() or 1))
    yield
    torch.set_num_threads(before)
