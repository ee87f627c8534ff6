"""The `gambles` task: a sure move at every pair, gambles that survive by the problem's own luck, an
exact verifier that never raises, and a verdict that is a fixed function of the walk."""

import itertools
import re

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from conftest import render_walk, wrong_walks
from prefixrl.models import resolve_model
from prefixrl.tasks import Problem, load_task
from prefixrl.tasks.gambles import SURE, survives
from prefixrl.tasks.mines import MOVES, move


@pytest.fixture(scope="module")
def task():
    return load_task("gambles")


def render(problem: Problem, ops: str, answer: str | None = None) -> str:
    return render_walk(problem.prompt, ops, answer)


def lives(problem: Problem, ops: str) -> bool:
    (a, b) = divmod(int(problem.prompt.split()[0]), 10)
    for i, op in enumerate(ops):
        if not survives(problem.prompt, i, a, b, op):
            return False
        a, b = move(a, b, op)
    return True


def test_one_sure_move_per_pair_no_letter_much_more_often_than_a_quarter(task):
    assert len(SURE) == 100 and set(SURE.values()) == set(MOVES)
    shares = task.shortcuts(task.problems("train"))["sure move"]
    assert all(0.2 <= s <= 0.3 for s in shares.values()), shares


def test_the_sure_walk_is_always_correct_and_gambles_survive_about_half(task):
    hard = task.problems("train") + task.problems("heldout")
    assert all(task.verify(p, render(p, p.meta["reference"])).reward == 1.0 for p in hard)
    coins = [survives(p.prompt, i, a, b, op) for p in hard[:20] for i in range(16)
             for a, b in itertools.product(range(10), repeat=2) for op in MOVES if op != SURE[a, b]]
    assert 0.48 < sum(coins) / len(coins) < 0.52


def test_a_gambles_luck_is_the_problems_own(task):
    """The same move at the same index and pair survives on one problem and not on another: what a
    trace's lucky moves teach holds for its own problem only."""
    a, b, op = 3, 7, next(o for o in MOVES if o != SURE[3, 7])
    verdicts = {survives(p.prompt, 0, a, b, op) for p in task.problems("train")[:20]}
    assert verdicts == {True, False}


def test_verdicts_match_enumeration_and_the_walks_own_end_is_the_answer(task):
    problem = Problem(id="p", prompt="37 6:", answer="", difficulty=6, split="easy")
    correct = [ops for ops in map("".join, itertools.product(MOVES, repeat=6))
               if task.verify(problem, render(problem, ops)).reward == 1.0]
    assert correct == [ops for ops in map("".join, itertools.product(MOVES, repeat=6)) if lives(problem, ops)]
    assert 2 ** 6 < len(correct) < 4 ** 6  # many correct walks: the sure one and the lucky ones
    verdict = task.verify(problem, render(problem, correct[-1]))
    assert verdict.answer == render(problem, correct[-1])[-3:-1]


def test_adversarial_output_never_raises_and_scores_zero(task):
    problem = task.problems("train")[0]
    ops = problem.meta["reference"]
    (a, b) = divmod(int(problem.prompt.split()[0]), 10)
    dead = next(op for op in MOVES if not survives(problem.prompt, 0, a, b, op))
    cases = wrong_walks(problem.prompt, ops, dead, seed=2)
    for text in cases:
        assert task.verify(problem, text).reward == 0.0, text
    good = render(problem, ops)
    for i, ch in itertools.product(range(len(good)), " 0123456789ABCDE/=.x"):
        if ch != good[i] and not (i == len(good) - 1 and ch == " "):
            bad = good[:i] + ch + good[i + 1:]
            assert task.verify(problem, bad).reward == 0.0, bad  # a pair, count or answer no longer adds up
    for prompt in ("", "x", "3 :", "٣٣ 4:"):
        assert task.verify(Problem("p", prompt, "", 1, "easy"), good).reward == 0.0


@torch.no_grad()
def test_shipped_base_model_prefers_gambles_as_documented(task):
    """Forced choice on the sure walks of hard problems, one forward pass: the shipped base
    (`builtin:gambles`, the `mines` model) puts about 0.21 of its probability on the sure move
    (README's task table), so a move survives with about 0.21 + 0.79 / 2 = 0.6 and a hard problem
    of n moves with about 0.6^n: pass@512 = 0 on most, a trace within 2,500 attempts on many."""
    torch.set_num_threads(1)
    path = resolve_model("builtin:gambles")
    model, tokenizer = AutoModelForCausalLM.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)
    problems = [p for p in task.problems("train") if p.difficulty == max(task.hard)][:16]
    texts = [p.prompt + render(p, p.meta["reference"]) for p in problems]
    ids = torch.tensor([tokenizer(t)["input_ids"] for t in texts])  # one length: one number of moves
    probs = model(input_ids=ids).logits.softmax(-1)
    letter = {op: tokenizer.convert_tokens_to_ids(op) for op in MOVES}
    sure = []
    for row, (p, text) in enumerate(zip(problems, texts)):
        for m in re.finditer(r" ([ABCD])\d\d/", text[len(p.prompt):]):
            pos = len(p.prompt) + m.start(1)  # char tokenizer: one token a character
            moves = probs[row, pos - 1, list(letter.values())]
            sure.append((moves[list(MOVES).index(m.group(1))] / moves.sum()).item())  # the walk's moves are the sure ones
    assert 0.15 <= sum(sure) / len(sure) <= 0.27, sum(sure) / len(sure)


def test_builtin_gambles_implies_its_task():
    """The shipped base is the `mines` model, but `builtin:gambles` means the gambles task."""
    from prefixrl.models import builtin_task

    assert builtin_task("builtin:gambles") == "gambles" and builtin_task("builtin:mines") == "mines"
    assert builtin_task("builtin:chain-q") == "chain" and builtin_task("runs/some-model") is None


def test_the_gambles_headline_config_builds_at_honest_scale():
    """configs/benchmark-gambles.yaml is read as written, with room for >= 64 hard training problems
    with traces (its screened pool) and 64 held-out ones, disjoint."""
    from prefixrl.experiment import ExperimentConfig

    cfg = ExperimentConfig.from_yaml("configs/benchmark-gambles.yaml")
    task = load_task(cfg.task, **cfg.task_args)
    train, heldout = task.problems("train"), task.problems("heldout")
    assert cfg.task == "gambles" and len(cfg.seeds) == 3 and cfg.sft.sweep_lr
    assert len(train) >= cfg.screen.limit >= 128 and len(heldout) == cfg.heldout == 64
    assert not {p.id for p in train} & {p.id for p in heldout}
