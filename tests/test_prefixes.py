"""Prefixed problems: cut policies, prefix text, the 3:1 row mix, chat rendering and calibration."""

import json
import random

import pytest
import torch

from conftest import solve_sort
from prefixrl.generate import HFSampler, Sample, SamplingParams
from prefixrl.models import TinyModelConfig, char_tokenizer, tiny_model
from prefixrl.prefixes import (PrefixConfig, calibrate, cut_points, hint_rows, prefix_at,
                               prefixed_problems, render_hint, render_prompt, success_curve, token_offsets)
from prefixrl.tasks import Problem

torch.set_num_threads(1)
TOK = char_tokenizer()  # one token per character: h tokens == h characters
SHORT = Problem(id="sort-312", prompt="312 2:", answer="123", difficulty=2, split="train")
SHORT_TRACE = " 1:132/1 2:123/0 =123."  # steps start at characters 0, 8 and 16; 22 tokens


def points(cfg, text, seed=0):
    return cut_points(cfg, text, token_offsets(TOK, text), random.Random(seed))


def test_short_trace_is_correct(sort_task):
    assert solve_sort(SHORT.prompt) == SHORT_TRACE and sort_task.verify(SHORT, SHORT_TRACE).reward == 1.0


def test_fixed_and_tokens_policies():
    assert points(PrefixConfig(policy="fixed", fractions=[0.0, 0.3, 0.5, 0.8, 1.0]), SHORT_TRACE) == [0, 7, 11, 18, 22]
    assert points(PrefixConfig(policy="tokens", token_counts=[3, 8, 100]), SHORT_TRACE) == [3, 8, 22]


def test_snap_moves_cuts_back_to_a_step_start():
    snap = dict(snap=" ")
    assert points(PrefixConfig(policy="fixed", fractions=[0.3, 0.5, 0.8, 1.0], **snap), SHORT_TRACE) == [0, 8, 16, 16]
    assert points(PrefixConfig(policy="tokens", token_counts=[3, 8, 9, 100], **snap), SHORT_TRACE) == [0, 8, 8, 16]
    text = solve_sort("740365 8:")  # 8 steps of 11 characters, then " =034567."
    snapped = points(PrefixConfig(cuts_per_trace=20, **snap), text, seed=3)
    assert all(h % 11 == 0 and text[h] == " " for h in snapped) and len(set(snapped)) > 1


def test_uniform_policy_range_and_determinism(sort_task):
    text = solve_sort(sort_task.problems("train")[0].prompt)
    n = len(text)
    cfg = PrefixConfig(cuts_per_trace=50, low=0.4, high=0.8)
    drawn = points(cfg, text, seed=0)
    assert len(drawn) == 50 and all(round(0.4 * n) <= h <= round(0.8 * n) for h in drawn)
    assert len(set(drawn)) > 10  # spread over the range, not one point
    assert len(points(PrefixConfig(), text)) == 3
    assert points(cfg, text, seed=0) == drawn and points(cfg, text, seed=1) != drawn


def test_prefix_is_an_exact_character_prefix(sort_task):
    text = solve_sort(sort_task.problems("train")[0].prompt)
    offsets = token_offsets(TOK, text)
    for h in range(len(text) + 1):
        prefix = prefix_at(text, offsets, h)
        assert text.startswith(prefix) and len(TOK(prefix, add_special_tokens=False)["input_ids"]) == h


@pytest.fixture(scope="module")
def two(sort_task):
    problems = sort_task.problems("train")[:2]
    traces = [{"problem_id": p.id, "completion": solve_sort(p.prompt)} for p in problems]
    return {p.id: p for p in problems}, traces


def test_prefixed_problems_mix_and_rows(two):
    problems, traces = two
    rows = prefixed_problems(TOK, traces, problems)
    assert len(rows) == 2 * 3 + 2 * 1  # the paper's 3:1 mix
    prefixed = [r for r in rows if r["prefixed"]]
    assert [r["trace_index"] for r in prefixed] == [0, 0, 0, 1, 1, 1]
    for row in rows:
        assert row["prompt"] == problems[row["problem_id"]].prompt + row["prefix"]
        assert row["prefix_tokens"] == len(row["prefix"]) and row["prefixed"] == (row["prefix"] != "")
    for row in prefixed:
        trace = traces[row["trace_index"]]
        n = len(trace["completion"])
        assert row["problem_id"] == trace["problem_id"] and trace["completion"].startswith(row["prefix"])
        assert round(0.4 * n) <= row["prefix_tokens"] <= round(0.8 * n)
        assert row["prefix_fraction"] == round(row["prefix_tokens"] / n, 4)
    unprefixed = [r for r in rows if not r["prefixed"]]
    assert sorted(r["problem_id"] for r in unprefixed) == sorted(problems)
    assert all(r["prefix_fraction"] == 0.0 and r["trace_index"] is None for r in unprefixed)
    assert prefixed_problems(TOK, traces, problems) == rows  # cut points are fixed by the seed
    assert prefixed_problems(TOK, traces, problems, PrefixConfig(seed=1)) != rows
    only = prefixed_problems(TOK, traces, problems, PrefixConfig(unprefixed_per_problem=0))
    assert only == prefixed


def test_prefixed_problems_rejects_unknown_problem(two):
    problems, traces = two
    with pytest.raises(ValueError, match="sort-nope"):
        prefixed_problems(TOK, traces + [{"problem_id": "sort-nope", "completion": " =1."}], problems)


# --- chat templates ------------------------------------------------------------------------------
CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
# Llama-3 style: every turn's content is trimmed
TRIM = ("{% for m in messages %}<|{{ m['role'] }}|>\n\n{{ m['content'] | trim }}<|eot|>{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>\n\n{% endif %}")
# Qwen3 style: an assistant turn is re-rendered as <think>\n{reasoning}\n</think>\n\n{answer}
QWEN3 = (
    "{%- for message in messages %}"
    "{%- if message.role == 'user' %}{{- '<|im_start|>user\\n' + message.content + '<|im_end|>\\n' }}"
    "{%- else %}{%- set content = message.content %}{%- set reasoning = '' %}"
    "{%- if '</think>' in content %}"
    "{%- set reasoning = content.split('</think>')[0].rstrip('\\n').split('<think>')[-1].lstrip('\\n') %}"
    "{%- set content = content.split('</think>')[-1].lstrip('\\n') %}{%- endif %}"
    "{{- '<|im_start|>assistant\\n<think>\\n' + reasoning.strip('\\n') + '\\n</think>\\n\\n' + content.lstrip('\\n') }}"
    "{{- '<|im_end|>\\n' }}{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}")
GENERATION_PROMPT = {CHATML: "<|im_start|>user\n740365 8:<|im_end|>\n<|im_start|>assistant\n",
                     TRIM: "<|user|>\n\n740365 8:<|eot|><|assistant|>\n\n",
                     QWEN3: "<|im_start|>user\n740365 8:<|im_end|>\n<|im_start|>assistant\n"}
PREFIXES = [" 1:470365/7 2:", "Swap. 1:470365/7 \n", "<think>\nswap the first descent", "<think>ok</think> 1:4",
            "<think>\nok\n</think>\n\n 1:470365/7", "a <think> b"]


def chat_tokenizer(template):
    tok = char_tokenizer()
    tok.chat_template = template
    return tok


@pytest.mark.parametrize("template", [CHATML, TRIM, QWEN3], ids=["chatml", "trim", "qwen3"])
def test_render_prompt_with_chat_template(template):
    tok = chat_tokenizer(template)
    generation_prompt = render_prompt(tok, "740365 8:", "")
    assert generation_prompt == GENERATION_PROMPT[template]  # unprefixed: add_generation_prompt
    assert generation_prompt == tok.apply_chat_template([{"role": "user", "content": "740365 8:"}], tokenize=False,
                                                        add_generation_prompt=True)
    for prefix in PREFIXES:
        # the policy continues its own text exactly where it left off: the prompt it sampled the
        # trace from, then the prefix verbatim (no re-rendered turn, no trimmed or added text)
        assert render_prompt(tok, "740365 8:", prefix) == generation_prompt + prefix


def test_chat_rows_end_with_the_prefix(two):
    problems, traces = two
    for template in (CHATML, TRIM, QWEN3):
        for row in prefixed_problems(chat_tokenizer(template), traces, problems):
            assert row["prompt"].endswith(row["prefix"]) and row["prompt"].startswith("<|")
            assert problems[row["problem_id"]].prompt in row["prompt"]


# --- the hint baseline ---------------------------------------------------------------------------
@pytest.mark.parametrize("template", [CHATML, TRIM, QWEN3], ids=["chatml", "trim", "qwen3"])
def test_hint_sits_in_the_user_turn(template):
    tok = chat_tokenizer(template)
    prompt = render_hint(tok, "740365 8:", " 1:470365/7 2:")
    user_turn = "740365 8:\n\nHint: a correct solution begins with: 1:470365/7 2:"
    # the unprefixed prompt with the hint added to the user's message: it ends with the generation prompt
    assert prompt == GENERATION_PROMPT[template].replace("740365 8:", user_turn)
    # one space after the colon, whether or not the trace starts with one (chat models' rarely do)
    assert render_hint(tok, "740365 8:", "1:470365/7 2:") == prompt
    assert render_hint(tok, "740365 8:", "\n1:4") == GENERATION_PROMPT[template].replace(
        "740365 8:", "740365 8:\n\nHint: a correct solution begins with:\n1:4")


def test_hint_for_a_base_model():
    prompt = render_hint(TOK, "740365 8:", " 1:470365/7 2:")
    assert prompt == "Hint: 1:470365/7 2:\n740365 8:"
    assert render_hint(TOK, "740365 8:", "1:470365/7 2:") == prompt
    assert TOK.unk_token_id not in TOK(prompt, add_special_tokens=False)["input_ids"]  # "\n" is in the vocabulary


def test_hint_rows(two):
    problems, traces = two
    for tok in (TOK, chat_tokenizer(CHATML)):
        rows = prefixed_problems(tok, traces, problems)
        hinted = hint_rows(tok, rows, problems)
        keep = ("problem_id", "prefixed", "prefix_tokens", "prefix_fraction", "trace_index")
        assert [{k: r[k] for k in keep} for r in hinted] == [{k: r[k] for k in keep} for r in rows]
        for row, new in zip(rows, hinted):
            problem = problems[row["problem_id"]]
            if row["prefixed"]:
                assert new["prefix"] == "" and new["hint"] == row["prefix"] != ""  # the reward scores the policy alone
                assert new["prompt"] == render_hint(tok, problem.prompt, row["prefix"])
            else:
                assert new == {**row, "hint": ""}
        assert len({tuple(sorted(r)) for r in hinted}) == 1  # the same columns in every row


# --- calibration ---------------------------------------------------------------------------------
class Counting:
    """A sampler wrapper that records every generate call."""

    def __init__(self, sampler):
        self.sampler, self.params, self.n_params, self.calls = sampler, sampler.params, sampler.n_params, []

    def generate(self, prompts, n, seed, dead_end=None):
        self.calls.append((list(prompts), n, seed))
        return self.sampler.generate(prompts, n, seed)


class Stops:
    """A policy that ends its turn at once: only a complete prefix can then be correct."""

    params, n_params = SamplingParams(max_new_tokens=8), 10

    def generate(self, prompts, n, seed, dead_end=None):
        return [[Sample(text="", token_ids=[TOK.eos_token_id], prompt_tokens=len(p)) for _ in range(n)]
                for p in prompts]


def test_calibrate_rows_and_resume(tmp_path, sort_task, two):
    problems, traces = two
    model = tiny_model(TOK, TinyModelConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                            intermediate_size=64, max_position_embeddings=256)).eval()
    sampler = Counting(HFSampler(model, TOK, SamplingParams(max_new_tokens=8, batch_size=64)))
    fractions = (0.0, 0.5, 1.0)
    calibrate(sort_task, sampler, TOK, traces[:1], problems, tmp_path, fractions=fractions, n=4, quiet=True)
    rows = calibrate(sort_task, sampler, TOK, traces, problems, tmp_path, fractions=fractions, n=4, quiet=True)
    assert len(sampler.calls) == 2  # the second call sampled only the trace the first left undone
    prompts, n, _ = sampler.calls[1]
    full = traces[1]["completion"]
    assert n == 4 and prompts == [problems[traces[1]["problem_id"]].prompt + full[:h]
                                  for h in (0, round(0.5 * len(full)), len(full))]
    assert rows == [json.loads(line) for line in (tmp_path / "calibration.jsonl").read_text().splitlines()]
    assert [(r["trace"], r["problem_id"]) for r in rows] == [(i, t["problem_id"]) for i, t in enumerate(traces)]
    for row in rows:
        assert [p["fraction"] for p in row["points"]] == list(fractions)
        assert all(p["n"] == 4 and 0 <= p["correct"] <= 4 for p in row["points"])
    calibrate(sort_task, sampler, TOK, traces, problems, tmp_path, fractions=fractions, n=4, quiet=True)
    assert len(sampler.calls) == 2  # finished: nothing sampled again

    stopped = calibrate(sort_task, Stops(), TOK, traces, problems, tmp_path / "stops", fractions=fractions, n=4,
                        quiet=True)
    assert [[p["correct"] for p in row["points"]] for row in stopped] == [[0, 0, 4], [0, 0, 4]]
    assert success_curve(stopped) == {0.0: 0.0, 0.5: 0.0, 1.0: 1.0}


def test_success_curve_by_hand():
    rows = [{"points": [{"fraction": 0.0, "n": 4, "correct": 1}, {"fraction": 0.5, "n": 4, "correct": 2}]},
            {"points": [{"fraction": 0.0, "n": 2, "correct": 0}, {"fraction": 0.5, "n": 8, "correct": 8}]}]
    assert success_curve(rows) == {0.0: 0.125, 0.5: 0.75}


def test_adaptive_fractions_pick_the_shortest_prefix_in_the_band():
    from prefixrl.prefixes import adaptive_fractions

    def row(trace, rates):
        return {"trace": trace, "points": [{"fraction": f, "n": 10, "correct": round(r * 10)} for f, r in rates]}

    calibration = [row(0, [(0.0, 0.0), (0.5, 0.3), (0.8, 0.9)]),  # 0.5 is the first in [0.2, 0.8]
                   row(1, [(0.0, 0.0), (0.5, 0.1), (0.8, 0.9)]),  # none inside: shortest above
                   row(2, [(0.0, 0.0), (0.5, 0.0), (1.0, 0.1)])]  # all below: the longest
    assert adaptive_fractions(calibration, (0.2, 0.8)) == {0: 0.5, 1: 0.8, 2: 1.0}


def test_adaptive_policy_needs_a_calibration(sort_task):
    from prefixrl.models import char_tokenizer
    from prefixrl.prefixes import PrefixConfig, prefixed_problems

    problem = sort_task.problems("train")[0]
    trace = {"problem_id": problem.id, "completion": solve_sort(problem.prompt)}
    with pytest.raises(ValueError, match="calibration"):
        prefixed_problems(char_tokenizer(), [trace], {problem.id: problem}, PrefixConfig(policy="adaptive"))
    calibration = [{"trace": 0, "points": [{"fraction": 0.5, "n": 4, "correct": 2}]}]
    rows = prefixed_problems(char_tokenizer(), [trace], {problem.id: problem}, PrefixConfig(policy="adaptive"),
                             calibration=calibration)
    # the chosen cut fills every prefixed slot: the 3:1 mix stays
    assert [r["prefix_fraction"] for r in rows if r["prefixed"]] == [pytest.approx(0.5, abs=0.02)] * 3
    assert len([r for r in rows if not r["prefixed"]]) == 1
