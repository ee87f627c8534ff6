"""The `minefield` task: two safe moves at every state of a 1,100-state table, 2^n correct walks, an
exact verifier that never raises, and a shipped base that knows nothing of the table."""

import itertools
import re

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from conftest import render_walk, wrong_walks
from prefixrl.models import builtin_task, resolve_model
from prefixrl.tasks import Problem, load_task
from prefixrl.tasks.minefield import FIELD, START, field_safe
from prefixrl.tasks.mines import MOVES, move


@pytest.fixture(scope="module")
def task():
    return load_task("minefield")


def render(problem: Problem, ops: str, answer: str | None = None) -> str:
    return render_walk(problem.prompt, ops, answer)


def safe_walk(problem: Problem, ops: str) -> bool:
    p, (a, b) = START, divmod(int(problem.prompt.split()[0]), 10)
    for op in ops:
        if not field_safe(p, a, b, op):
            return False
        p, (a, b) = a, move(a, b, op)
    return True


def test_every_state_has_one_safe_move_of_each_antipode_pair_and_the_table_is_balanced():
    assert len(FIELD) == 1100
    assert all(safe[0] in "AC" and safe[1] in "BD" for safe in FIELD.values())
    shares = {op: sum(op in s for s in FIELD.values()) / len(FIELD) for op in MOVES}
    assert all(0.45 < s < 0.55 for s in shares.values()), shares


def test_the_verdict_is_the_field_walk_by_enumeration(task):
    """All 4^6 walks of a 6-move problem: correct exactly when every move is safe at (p, a, b), p the
    digit before the pair; 2^6 of them; and the safety depends on p (not on the pair alone)."""
    problem = Problem(id="p", prompt="37 6:", answer="", difficulty=6, split="easy")
    walks = list(map("".join, itertools.product(MOVES, repeat=6)))
    correct = [ops for ops in walks if task.verify(problem, render(problem, ops)).reward == 1.0]
    assert correct == [ops for ops in walks if safe_walk(problem, ops)] and len(correct) == 2 ** 6
    assert any(FIELD[p, 3, 7] != FIELD[START, 3, 7] for p in range(10))


def test_reference_walks_are_correct_and_splits_are_disjoint(task):
    splits = {s: task.problems(s) for s in ("train", "heldout", "validation", "easy")}
    ids = [p.id for ps in splits.values() for p in ps]
    assert len(ids) == len(set(ids)) and len(splits["train"]) == 128 and len(splits["heldout"]) == 64
    assert {p.difficulty for p in splits["train"]} == set(task.hard) == {11, 12, 13}
    for p in splits["train"] + splits["heldout"] + splits["easy"]:
        assert task.verify(p, render(p, p.meta["reference"])) .reward == 1.0


def test_adversarial_output_never_raises_and_scores_zero(task):
    problem = task.problems("train")[0]
    ops = problem.meta["reference"]
    (a, b) = divmod(int(problem.prompt.split()[0]), 10)
    mine = next(op for op in MOVES if not field_safe(START, a, b, op))
    cases = wrong_walks(problem.prompt, ops, mine, seed=3)
    for text in cases:
        assert task.verify(problem, text).reward == 0.0, text
    good = render(problem, ops)
    for i, ch in itertools.product(range(len(good)), " 0123456789ABCDE/=.x"):
        if ch != good[i] and not (i == len(good) - 1 and ch == " "):
            bad = good[:i] + ch + good[i + 1:]
            if task.verify(problem, bad).reward == 1.0:  # only another safe move, written right, may pass
                assert bad.count(" ") == good.count(" ") and safe_walk(problem, re.findall(r" ([ABCD])", bad))
    for prompt in ("", "x", "3 :", "٣٣ 4:"):
        assert task.verify(Problem("p", prompt, "", 1, "easy"), good).reward == 0.0


def test_corpus_is_well_formed_and_shows_no_rule_by_default(task):
    pattern = re.compile(r"( [ABCD]\d\d/\d+)+ =\d\d\.")
    pairs = task.corpus(400, seed=0)
    assert all(pattern.fullmatch(c) for _, c in pairs)
    shown = load_task("minefield", rule_bias=1.0).corpus(50, seed=0)
    assert all(task.verify(Problem("p", p, "", 0, "corpus"), c).reward == 1.0 for p, c in shown)


@torch.no_grad()
def test_shipped_base_executes_the_format_and_knows_nothing_of_the_field(task):
    """Forced choice along the reference walks of hard problems, one forward pass: the shipped base
    (`builtin:minefield`, the `mines` model) puts about half its probability on the field's safe
    moves (it never saw the field): hard problems of 11-13 moves succeed with about 2^-12
    (README's task table: measured by sampling with early rejection)."""
    torch.set_num_threads(1)
    path = resolve_model("builtin:minefield")
    model, tokenizer = AutoModelForCausalLM.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)
    problems = [p for p in task.problems("train") if p.difficulty == 12][:24]
    texts = [p.prompt + render(p, p.meta["reference"]) for p in problems]
    ids = torch.tensor([tokenizer(t)["input_ids"] for t in texts])  # one length: one number of moves
    probs = model(input_ids=ids).logits.softmax(-1)
    letters = [tokenizer.convert_tokens_to_ids(op) for op in MOVES]
    safe_mass, digits_right = [], []
    for row, (p, text) in enumerate(zip(problems, texts)):
        before, (a, b) = START, divmod(int(p.prompt.split()[0]), 10)
        for m in re.finditer(r" ([ABCD])(\d)(\d)/", text[len(p.prompt):]):
            pos = len(p.prompt) + m.start(1)  # char tokenizer: one token a character
            moves = probs[row, pos - 1, letters]
            safe_mass.append(sum(moves[i] for i, op in enumerate(MOVES) if field_safe(before, a, b, op)) / moves.sum())
            digits_right.append(probs[row, pos + 1, ids[row, pos + 2]].item())  # the new digit, computed
            before, (a, b) = a, move(a, b, m.group(1))
    mean_safe = float(sum(safe_mass) / len(safe_mass))
    assert 0.42 <= mean_safe <= 0.58, mean_safe
    assert sum(digits_right) / len(digits_right) > 0.98


def test_builtin_minefield_implies_its_task():
    assert builtin_task("builtin:minefield") == "minefield"


def test_no_single_move_pattern_blind_to_the_pairs_solves_many_hard_problems(task):
    """Some pattern of period <= 4 fits a quarter of the problems, but a different one each time:
    the best single pattern (one habit a policy could learn instead of the table) solves few."""
    measure = task.shortcuts(task.problems("train"))["safe walk"]
    assert measure["constant"] == 0.0
    assert measure["best pattern"] <= 0.1 < measure["periodic"] <= 0.4
