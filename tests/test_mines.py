"""The `mines` task: many correct walks per problem, an exact verifier that never raises, splits
that never share a problem, and a corpus that shows the safety rule only faintly."""

import itertools
import math
import random
import re

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from prefixrl.models import resolve_model
from prefixrl.tasks import Problem, load_task
from prefixrl.tasks.mines import MOVES, move, safe, safe_moves, walk


@pytest.fixture(scope="module")
def task():
    return load_task("mines")


def render(problem: Problem, ops: str, answer: str | None = None) -> str:
    start, n = (int(x) for x in problem.prompt.rstrip(":").split())
    pairs, _ = walk(start, ops)
    steps = "".join(f" {op}{a}{b}/{n - i - 1}" for i, (op, (a, b)) in enumerate(zip(ops, pairs)))
    end = pairs[-1] if pairs else divmod(start, 10)
    return steps + f" ={answer if answer is not None else f'{end[0]}{end[1]}'}."


def random_safe_walk(problem: Problem, rng: random.Random) -> str:
    start, n = (int(x) for x in problem.prompt.rstrip(":").split())
    (a, b), ops = divmod(start, 10), ""
    for _ in range(n):
        ops += rng.choice(safe_moves(a, b))
        a, b = move(a, b, ops[-1])
    return ops


def test_every_state_has_exactly_two_safe_moves():
    for a, b in itertools.product(range(10), repeat=2):
        assert len(safe_moves(a, b)) == 2, (a, b)


def test_a_problem_of_n_moves_has_exactly_2_to_the_n_correct_walks(task):
    problem = Problem(id="p", prompt="37 6:", answer="", difficulty=6, split="easy")
    correct = [ops for ops in map("".join, itertools.product(MOVES, repeat=6))
               if task.verify(problem, render(problem, ops)).reward == 1.0]
    assert len(correct) == 2 ** 6
    assert all(walk(37, ops)[1] for ops in correct)


def test_splits_disjoint_deterministic_and_inside_the_pretraining_range(task):
    ids = {s: [p.id for p in task.problems(s)] for s in ("train", "heldout", "validation", "easy")}
    assert {s: len(v) for s, v in ids.items()} == {"train": 64, "heldout": 64, "validation": 32, "easy": 64}
    assert len(set().union(*ids.values())) == sum(map(len, ids.values()))
    assert ids == {s: [p.id for p in load_task("mines").problems(s)] for s in ids}
    assert ids["train"] != [p.id for p in load_task("mines", seed=1).problems("train")]
    hard = task.problems("train") + task.problems("heldout") + task.problems("validation")
    assert {p.difficulty for p in hard} <= set(task.hard) and max(task.hard) <= task.max_moves
    with pytest.raises(ValueError, match="validation"):
        task.problems("test")
    with pytest.raises(ValueError, match="pretraining range"):
        load_task("mines", hard=(16, 17), max_moves=16)


def test_any_safe_walk_is_correct_and_its_own_end_is_the_answer(task):
    rng = random.Random(0)
    for problem in task.problems("train")[:16]:
        ops = random_safe_walk(problem, rng)
        verdict = task.verify(problem, render(problem, ops))
        assert verdict.reward == 1.0 and verdict.answer == render(problem, ops)[-3:-1]
        assert task.verify(problem, render(problem, problem.meta["reference"])).reward == 1.0
        assert task.verify(problem, render(problem, ops) + "  \n").reward == 1.0  # trailing space is not an error


def test_every_one_character_change_of_a_correct_solution_scores_zero(task):
    problem = task.problems("train")[0]
    good = render(problem, random_safe_walk(problem, random.Random(1)))
    for i, ch in itertools.product(range(len(good)), " 0123456789ABCDE/=.x"):
        if ch != good[i] and not (i == len(good) - 1 and ch == " "):
            bad = good[:i] + ch + good[i + 1:]
            assert task.verify(problem, bad).reward == 0.0, bad


def test_adversarial_output_never_raises_and_scores_zero(task):
    problem = task.problems("train")[0]
    ops = problem.meta["reference"]
    start, n = (int(x) for x in problem.prompt.rstrip(":").split())
    (a, b) = divmod(start, 10)
    mine = next(op for op in MOVES if not safe(a, b, op))
    rng = random.Random(2)
    cases = ["", " ", ".", " =", " =00.", "\x00", "🙂" * 50, " A" * 400, render(problem, ops) * 2,
             render(problem, ops[:-1]), render(problem, ops + ops[-1]), render(problem, ops, "٣٣"),
             render(problem, mine + ops[1:]), render(problem, ops).replace("/", "/0"),
             re.sub(r"\d", "٣", render(problem, ops), count=1), render(problem, ops)[:-1],
             "".join(rng.choice(" ABCD0123456789/=.") for _ in range(200))]
    cases += ["".join(rng.choice(" ABCD0123456789/=.") for _ in range(rng.randrange(120))) for _ in range(500)]
    for text in cases:
        assert task.verify(problem, text).reward == 0.0, text
    for prompt in ("", "x", "3 :", "٣٣ 4:"):  # a malformed problem is scored 0, never an exception
        assert task.verify(Problem("p", prompt, "", 1, "easy"), render(problem, ops)).reward == 0.0


def test_corpus_is_well_formed_and_safe_at_about_half_plus_rule_bias_over_two():
    fmt = re.compile(r"\d\d \d+:")
    for bias, expected in ((0.2, 0.6), (0.0, 0.5), (1.0, 1.0)):
        task, moves, safe_count = load_task("mines", rule_bias=bias), 0, 0
        for prompt, completion in task.corpus(400, seed=3):
            assert fmt.fullmatch(prompt)
            problem = Problem("p", prompt, "", 0, "easy")
            start = int(prompt.split()[0])
            ops = re.findall(r" ([ABCD])\d\d/", completion)
            (a, b) = divmod(start, 10)
            for op in ops:
                safe_count, moves = safe_count + safe(a, b, op), moves + 1
                a, b = move(a, b, op)
            # the arithmetic is always right: the walk's own pairs with the moves' safety decided by the verifier
            assert completion == render(problem, "".join(ops))
            assert task.verify(problem, completion).reward == float(walk(start, "".join(ops))[1])
        assert safe_count / moves == pytest.approx(expected, abs=0.03), bias


def test_no_move_pattern_blind_to_the_pairs_solves_many_hard_problems(task):
    """A constant move never survives a hard problem; patterns of period <= 4 survive on few, so
    what RL must learn is the rule, not a pattern (the flaw once found in `chain`)."""
    problems = task.problems("train") + task.problems("heldout")
    measure = task.shortcuts(problems)["safe walk"]
    assert measure["constant"] == 0.0 and measure["best pattern"] <= measure["periodic"] <= 0.2
    short = load_task("mines", hard=(2,), n_train=50, n_heldout=25, n_validation=25)
    assert short.shortcuts(short.problems("train"))["safe walk"]["periodic"] == 1.0  # 2 moves: some pattern always fits


@torch.no_grad()
def test_shipped_base_model_executes_moves_and_knows_the_rule_faintly(task):
    """Forced choice on the reference walks of hard problems, one forward pass: given the move,
    the model writes the new pair and the count right (0.9995 a move, README's task table), and
    it puts 0.59 of its probability on the safe moves: it computes the rule, faintly (0.5 is none).
    So hard problems fail on decisions, at about 0.59^n, never on execution."""
    torch.set_num_threads(1)
    path = resolve_model("builtin:mines")
    model, tokenizer = AutoModelForCausalLM.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)
    problems = [p for p in task.problems("train") if p.difficulty == max(task.hard)][:16]
    texts = [p.prompt + render(p, p.meta["reference"]) for p in problems]
    ids = torch.tensor([tokenizer(t)["input_ids"] for t in texts])  # one length: one number of moves
    logp = model(input_ids=ids).logits.log_softmax(-1)
    letter = {op: tokenizer.convert_tokens_to_ids(op) for op in MOVES}
    safe_mass, execution = [], []
    for row, (p, text) in enumerate(zip(problems, texts)):
        (a, b) = divmod(int(p.prompt[:2]), 10)
        for m in re.finditer(r" ([ABCD])(\d\d/\d+)", text[len(p.prompt):]):
            pos = len(p.prompt) + m.start(1)  # char tokenizer: one token a character
            probs = logp[row, pos - 1].exp()
            safe_mass.append(sum(probs[letter[op]].item() for op in safe_moves(a, b)))
            written = range(pos + 1, pos + 1 + len(m.group(2)))
            execution.append(sum(logp[row, j - 1, ids[row, j]].item() for j in written))
            a, b = move(a, b, m.group(1))
    assert 0.55 <= sum(safe_mass) / len(safe_mass) <= 0.65, sum(safe_mass) / len(safe_mass)
    assert math.exp(sum(execution) / len(execution)) >= 0.99


def test_the_mines_headline_config_builds_at_honest_scale():
    """configs/benchmark-mines.yaml is read as written and has room for >= 64 hard training problems
    with traces (its screened pool) and 64 held-out ones, disjoint."""
    from prefixrl.experiment import ExperimentConfig

    cfg = ExperimentConfig.from_yaml("configs/benchmark-mines.yaml")
    task = load_task(cfg.task, **cfg.task_args)
    assert set(cfg.methods) == {"prefixrl", "prefixrl-adaptive", "sft-rl", "rl"} and len(cfg.seeds) == 3
    train, heldout = task.problems("train"), task.problems("heldout")
    assert len(train) >= cfg.screen.limit >= 128 and len(heldout) == cfg.heldout == 64
    assert not {p.id for p in train} & {p.id for p in heldout}


def test_the_validation_split_is_found_by_name_and_by_id(task):
    from prefixrl.tasks import load_problems, problems_by_id

    validation = load_problems(task, "validation")
    assert [p.split for p in validation] == ["validation"] * 32
    assert all(problems_by_id(task)[p.id] == p for p in validation)

    class NoValidation:  # a task of the protocol's three splits only: still found by id
        def problems(self, split):
            if split == "validation":
                raise ValueError(f"unknown split {split!r}")
            return task.problems(split)

    assert problems_by_id(NoValidation()) == {p.id: p for s in ("train", "heldout", "easy") for p in task.problems(s)}
