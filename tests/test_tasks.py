import random
import re
import textwrap
import time

import pytest

from conftest import chain_moves, render_chain, render_sort, solve_chain, solve_sort, sort_steps
from prefixrl.tasks import Problem, Task, Verdict, load_problems, load_task, strategy_of
from prefixrl.tasks.chain import RULES, move
from prefixrl.tasks.sort import swap

SPLITS = ("train", "heldout", "easy", "validation")
FORMAT = {"sort": re.compile(r"\d{6} \d+:"), "chain": re.compile(r"\d\d \d+:")}
COMPLETION = {"sort": re.compile(r"( [1-5]:\d{6}/\d+)+ =\d{6}\."),
              "chain": re.compile(r" [PQ]( [LR]\d\d/\d+)+ =\d\d\.")}


@pytest.fixture(params=["sort", "chain"])
def task(request):
    return load_task(request.param)


def solve(task, problem):
    return solve_sort(problem.prompt) if task.name == "sort" else solve_chain(problem.prompt)


# --- problems -------------------------------------------------------------------------------

def test_splits_disjoint_deterministic_unique(task):
    by_split = {s: task.problems(s) for s in SPLITS}
    ids = [p.id for s in SPLITS for p in by_split[s]]
    assert len(ids) == len(set(ids)), "problem ids must be unique across all splits"
    prompts = [p.prompt for s in SPLITS for p in by_split[s]]
    assert len(prompts) == len(set(prompts)), "splits must not share a problem"
    assert all(p.split == s for s in SPLITS for p in by_split[s])
    assert {s: len(v) for s, v in by_split.items()} == {"train": 128, "heldout": 64, "easy": 64, "validation": 32}
    assert {p.difficulty for p in by_split["validation"]} <= set(task.hard)  # hard problems, neither trained on nor held out
    without = load_task(task.name, n_validation=0)  # the validation split came last: the others are as they were
    assert all(without.problems(s) == by_split[s] for s in SPLITS[:3]) and not without.problems("validation")
    again = load_task(task.name)
    assert all(again.problems(s) == by_split[s] for s in SPLITS), "same seed -> same problems"
    other = load_task(task.name, seed=1)
    assert other.problems("train") != by_split["train"], "the seed must matter"
    assert all(FORMAT[task.name].fullmatch(p.prompt) for p in by_split["train"])
    with pytest.raises(ValueError):
        task.problems("test")


def test_hand_written_solution_scores_one(task):
    for split in SPLITS:
        for problem in task.problems(split)[:20]:
            verdict = task.verify(problem, solve(task, problem))
            assert verdict.reward == 1.0, (problem, solve(task, problem))
            assert verdict.answer == problem.answer


def test_chain_both_rules_are_correct(chain_task):
    problem = chain_task.problems("train")[0]
    for strategy in "PQ":
        solution = solve_chain(problem.prompt, strategy)
        assert chain_task.verify(problem, solution).reward == 1.0
    assert chain_task.verify(problem, solve_chain(problem.prompt, "P")).answer == problem.answer


def test_chain_rule_share_judges_each_move_at_the_pair_it_reaches(chain_task):
    problem = Problem(id="x", prompt="37 3:", answer="30", difficulty=3, split="train")
    assert chain_task.rule_share(problem, " P R79/2 R93/1 L30/0 =30.") == 1.0  # P: R, R, then L at (9, 3)
    # L at (3, 7) breaks P and leads to (7, 4), where P says L (R breaks it again), then (4, 3): L follows
    assert chain_task.rule_share(problem, " P L00/2 R00/1 L00/0 =00.") == pytest.approx(1 / 3)
    # Q: L at (3, 7), (7, 4) and (4, 8); a 4th move, past the problem's 3, is not judged
    assert chain_task.rule_share(problem, " Q L00/2 L00/1 L00/0 R00/0 =00.") == 1.0
    assert chain_task.rule_share(problem, " R79/2 =79.") is None and chain_task.rule_share(problem, " P =37.") is None


def test_chain_rules_have_no_fixed_pattern_shortcut(chain_task, monkeypatch):
    """Both rules must be read off the pairs move by move: on the hard problems no rule's moves are
    constant or periodic, and most problems have moves of their own (the measure flags the old Q)."""
    problems = chain_task.problems("train") + chain_task.problems("heldout")
    for strategy, measure in chain_task.shortcuts(problems).items():
        assert measure["constant"] == 0 and measure["periodic"] <= 0.02 and measure["distinct"] >= 0.5, (strategy, measure)
        walks = {"".join(op for op, *_ in chain_moves(p.prompt, strategy)) for p in problems}
        assert len(walks) / len(problems) == pytest.approx(measure["distinct"], abs=0.01)

    monkeypatch.setitem(RULES, "Q", lambda a, b: "L" if (a + b) % 2 == 0 else "R")  # the first, flawed Q
    assert chain_task.shortcuts(problems)["Q"]["constant"] == 1.0


def test_chain_corpus_follows_the_declared_rule_at_rule_bias_of_its_moves():
    """The base model's faint knowledge of the rules comes from here: a move follows the declared
    rule with probability rule_bias, else is a coin flip (rule_bias 1: every walk is a solution)."""
    def agreement(task):
        agree = moves = 0
        for prompt, completion in task.corpus(400, seed=0):
            strategy, steps = completion[1], re.findall(r" ([LR])(\d)(\d)/", completion)
            a, b = divmod(int(prompt.split()[0]), 10)
            for op, x, y in steps:
                agree, moves = agree + (op == RULES[strategy](a, b)), moves + 1
                a, b = int(x), int(y)
        return agree / moves

    assert agreement(load_task("chain", rule_bias=0.25)) == pytest.approx(0.625, abs=0.03)
    assert agreement(load_task("chain", rule_bias=0.0)) == pytest.approx(0.5, abs=0.03)
    always = load_task("chain", rule_bias=1.0)
    for prompt, completion in always.corpus(50, seed=1):
        assert always.verify(Problem("c", prompt, "", 1, "train"), completion).reward == 1.0


def test_corpus_completions_parse(task):
    pairs = task.corpus(200, seed=3)
    assert pairs == task.corpus(200, seed=3) and pairs != task.corpus(200, seed=4)
    for prompt, completion in pairs:
        assert FORMAT[task.name].fullmatch(prompt), prompt
        assert COMPLETION[task.name].fullmatch(completion), completion
        budget = int(prompt.rstrip(":").split()[1])
        problem = Problem(id="x", prompt=prompt, answer="", difficulty=budget, split="train")
        verdict = task.verify(problem, completion)
        assert verdict.answer == completion[completion.rindex("=") + 1:-1]


# --- adversarial output: never raises, scores 0 ------------------------------------------

def _bad_sort_solutions(problem):
    steps = sort_steps(problem.prompt)
    answer = steps[-1][1]
    pos, state, left = steps[2]
    wrong_digits = [*steps[:2], (pos, state[::-1], left), *steps[3:]]
    wrong_count = [*steps[:2], (pos, state, left + 1), *steps[3:]]
    extra = [*steps, (1, swap(answer, 1), 0)]  # the budget is spent: no swap may follow
    digits = problem.prompt.split()[0]
    ascending = next(i + 1 for i in range(5) if digits[i] < digits[i + 1])
    non_descent = [(ascending, swap(digits, ascending), len(steps) - 1)]  # swaps a rising pair
    for left in range(len(steps) - 2, -1, -1):
        state = non_descent[-1][1]
        p = next((i + 1 for i in range(5) if state[i] > state[i + 1]), 1)
        non_descent.append((p, swap(state, p), left))
    unicode_digits = str.maketrans("0123456789", "٠١٢٣٤٥٦٧٨٩")
    return {
        "wrong digits in one step": render_sort(wrong_digits, answer),
        "wrong countdown": render_sort(wrong_count, answer),
        "one step too few": render_sort(steps[:-1], steps[-2][1]),
        "one step too many": render_sort(extra, swap(answer, 1)),
        "position 6": render_sort([(6, digits, len(steps) - 1), *steps[1:]], answer),
        "position 9": render_sort([(9, digits, len(steps) - 1), *steps[1:]], answer),
        "wrong final answer": render_sort(steps, answer[::-1]),
        "swaps a rising pair": render_sort(non_descent, non_descent[-1][1]),
        "unknown marker": " P" + solve_sort(problem.prompt),
        "countdown in other digits": re.sub(r"/(\d+)", lambda m: "/" + m[1].translate(unicode_digits),
                                            solve_sort(problem.prompt)),
    }


def _bad_chain_solutions(problem):
    steps = chain_moves(problem.prompt)
    answer = f"{steps[-1][1]}{steps[-1][2]}"
    op, a, b, left = steps[2]
    wrong_sum = [*steps[:2], (op, a, (b + 1) % 10, left), *steps[3:]]
    wrong_count = [*steps[:2], (op, a, b, left + 1), *steps[3:]]
    a, b = steps[-1][1:3]
    extra = [*steps, (RULES["P"](a, b), *move(a, b, RULES["P"](a, b)), 0)]
    # the first move flipped (arithmetic right), then rule P again: breaks the declared rule once
    a, b = divmod(int(problem.prompt.split()[0]), 10)
    broken = []
    for i, left in enumerate(range(len(steps) - 1, -1, -1)):
        op = RULES["P"](a, b) if i else {"L": "R", "R": "L"}[RULES["P"](a, b)]
        a, b = move(a, b, op)
        broken.append((op, a, b, left))
    unicode_digits = str.maketrans("0123456789", "٠١٢٣٤٥٦٧٨٩")
    return {
        "wrong sum in one move": render_chain("P", wrong_sum, answer),
        "wrong countdown": render_chain("P", wrong_count, answer),
        "one move too few": render_chain("P", steps[:-1], f"{steps[-2][1]}{steps[-2][2]}"),
        "one move too many": render_chain("P", extra, f"{extra[-1][1]}{extra[-1][2]}"),
        "wrong final answer": render_chain("P", steps, f"{(int(answer) + 1) % 100:02d}"),
        "breaks the declared rule": render_chain("P", broken, f"{a}{b}"),
        "declares the other rule": render_chain("Q", steps, answer),
        "unknown marker": render_chain("X", steps, answer),
        "no marker": render_chain("", steps, answer),
        "moves in other digits": re.sub(r"([LR])(\d\d)", lambda m: m[1] + m[2].translate(unicode_digits),
                                        solve_chain(problem.prompt)),
    }


GARBAGE = {
    "empty": "",
    "bytes": bytes(range(256)).decode("latin-1"),
    "random bytes": random.Random(0).randbytes(4096).decode("utf-8", errors="surrogateescape"),
    "unicode": "ß∑ 😀 ١:٢٣/٤ =٥. \u0000\u200b\ufffd",
    "huge digits": " 1:" + "1" * 100_000,
    "huge steps": " 1:123456/7" * 10_000,
    "huge moves": " P" + " L12/3" * 20_000,
    "huge spaces": " " * 100_000,
    "only answer": " =123456.",
}


def test_adversarial_output_scores_zero(task):
    problem = task.problems("train")[0]
    bad = _bad_sort_solutions(problem) if task.name == "sort" else _bad_chain_solutions(problem)
    assert task.verify(problem, solve(task, problem)).reward == 1.0  # the base the cases perturb
    for name, text in {**GARBAGE, **bad}.items():
        t0 = time.time()
        verdict = task.verify(problem, text)
        assert verdict.reward == 0.0, f"{name}: {text[:200]!r}"
        assert verdict.answer is None or isinstance(verdict.answer, str)
        assert time.time() - t0 < 2, f"{name} took too long"


def test_wrong_answer_is_extracted(task):
    problem = task.problems("train")[0]
    text = solve(task, problem)
    wrong = text[:text.rindex("=") + 1] + problem.answer[::-1] + "."
    assert task.verify(problem, wrong) == Verdict(0.0, problem.answer[::-1])
    assert task.verify(problem, "nonsense").answer is None


# --- loading ------------------------------------------------------------------------------

def test_load_builtin_and_unknown():
    task = load_task("sort")
    assert task.name == "sort" and isinstance(task, Task)
    assert len(load_task("chain", n_train=10).problems("train")) == 10
    with pytest.raises(ValueError, match=r"unknown task 'nope'.*\['chain', 'gambles', 'math', 'minefield', 'mines', 'sort'\]"):
        load_task("nope")


def test_load_user_task(tmp_path, monkeypatch):
    (tmp_path / "my_tasks.py").write_text(textwrap.dedent("""
        from prefixrl.tasks import Problem, Verdict

        class EchoTask:
            name = "echo"
            strategy_markers = {"loud": "!"}

            def __init__(self, size=3):
                self.size = size

            def problems(self, split):
                return [Problem(f"echo-{i}", f"{i}:", str(i), 1, split) for i in range(self.size)]

            def verify(self, problem, solution):
                return Verdict(float(solution.strip() == problem.answer), solution.strip())

            def corpus(self, n, seed):
                return [(f"{i}:", f" {i}") for i in range(n)]

        class NotATask:
            name = "half"
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    task = load_task("my_tasks:EchoTask", size=5)
    assert task.name == "echo" and len(task.problems("train")) == 5
    assert task.verify(task.problems("train")[2], " 2").reward == 1.0
    assert strategy_of(task, "2!") == "loud"
    with pytest.raises(ValueError, match="my_tasks:Missing"):
        load_task("my_tasks:Missing")
    with pytest.raises(ValueError, match="no_such_module_xyz:Task"):
        load_task("no_such_module_xyz:Task")
    with pytest.raises(ValueError, match=r"lacks \['strategy_markers', 'problems', 'verify', 'corpus'\]"):
        load_task("my_tasks:NotATask")


def test_strategy_of_chain(chain_task, sort_task):
    problem = chain_task.problems("train")[0]
    assert strategy_of(chain_task, solve_chain(problem.prompt, "P")) == "order"
    assert strategy_of(chain_task, solve_chain(problem.prompt, "Q")) == "carry"
    assert strategy_of(chain_task, " X L12/0 =12.") is None
    assert strategy_of(sort_task, solve_sort(sort_task.problems("train")[0].prompt)) is None


def test_load_problems_from_jsonl(sort_task, tmp_path):
    from prefixrl.files import InputError, write_jsonl

    problems = sort_task.problems("easy")[:3]
    write_jsonl(tmp_path / "p.jsonl", [p.to_dict() for p in problems])
    assert load_problems(sort_task, str(tmp_path / "p.jsonl")) == problems
    assert load_problems(sort_task, "heldout") == sort_task.problems("heldout")
    write_jsonl(tmp_path / "bad.jsonl", [{"id": "x", "prompt": "1 2:"}])
    with pytest.raises(InputError, match="line 1"):
        load_problems(sort_task, str(tmp_path / "bad.jsonl"))
