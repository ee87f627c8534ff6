"""Chat models and traces from other models: every stage samples and trains from one rendered
prompt with one tokenization (BOS once), thinking templates, traces from another tokenizer cut in
the policy's tokens, and prompts held to the context window. All tokenizers are built offline."""

import pytest
import torch
from datasets import Dataset
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast
from trl import GRPOTrainer
from typer.testing import CliRunner

from conftest import solve_sort
from prefixrl.cli import app
from prefixrl.evaluate import score_problems
from prefixrl.files import InputError, read_jsonl, write_jsonl
from prefixrl.flops import FlopsLedger
from prefixrl.generate import HFSampler, Sample, SamplingParams
from prefixrl.models import TinyModelConfig, char_tokenizer, encode_prompt, sequence_logprobs, tiny_model
from prefixrl.prefixes import (PrefixConfig, calibrate, prefix_at, prefixed_problems, render_prompt, token_offsets,
                               with_context_limit)
from prefixrl.sft import sft_examples
from prefixrl.tasks import Problem
from prefixrl.traces import CollectConfig, collect
from prefixrl.train import PrefixRLTrainer, TrainConfig, grpo_config

torch.set_num_threads(1)
SMALL = TinyModelConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                        max_position_embeddings=256)
CORPUS = ["Let me add 12 and 30. The sum is 42, so the answer is 42.",
          "To solve this, multiply 6 by 7 and get 42; the answer is \\boxed{42}.",
          "What is 12 + 30? Think step by step, then give the final answer."] * 20
# Llama-3 style: the template writes the BOS itself, and trims each turn's text
LLAMA3 = ("{{- bos_token }}{%- for m in messages %}"
          "{{- '<|start_header_id|>' + m['role'] + '<|end_header_id|>\\n\\n' + m['content'] | trim + '<|eot_id|>' }}"
          "{%- endfor %}{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}"
          "{%- endif %}")
# Qwen3 / R1-distill style thinking: the generation prompt opens <think>, an assistant turn loses its <think> block
THINKING = ("{%- for m in messages %}{%- set content = m.content %}{%- if m.role == 'assistant' %}"
            "{%- set content = content.split('</think>')[-1].lstrip('\\n') %}{%- endif %}"
            "{{- '<|im_start|>' + m.role + '\\n' + content + '<|im_end|>\\n' }}{%- endfor %}"
            "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n<think>\\n' }}{%- endif %}")
LLAMA_SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
QWEN_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"]


def bpe_tokenizer(specials, vocab_size, eos, pad, bos=None, template=None) -> PreTrainedTokenizerFast:
    """A byte-level BPE trained on CORPUS; `bos`: the tokenizer adds it to every text (Llama-3's does)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                                        show_progress=False))
    if bos:
        tok.post_processor = processors.TemplateProcessing(single=f"{bos} $A",
                                                           special_tokens=[(bos, tok.token_to_id(bos))])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=bos, eos_token=eos, pad_token=pad,
                                   padding_side="left")
    fast.chat_template = template
    return fast


def llama3(template=LLAMA3):
    return bpe_tokenizer(LLAMA_SPECIALS, 400, "<|eot_id|>", "<|end_of_text|>", "<|begin_of_text|>", template)


def thinking():
    return bpe_tokenizer(QWEN_SPECIALS, 300, "<|im_end|>", "<|endoftext|>", template=THINKING)


TOKENIZERS = {"char": char_tokenizer, "llama3-base": lambda: llama3(None), "llama3-chat": llama3, "thinking": thinking}
BOS_COUNT = {"char": 0, "llama3-base": 1, "llama3-chat": 1, "thinking": 0}  # BOS once where the model has one
PROBLEM = Problem(id="add-1", prompt="What is 12 + 30?", answer="42", difficulty=1, split="train")
TRACE = "Let me add 12 and 30.\n</think>\n\nThe sum is 42, so the answer is \\boxed{42}."


def ids_read_by_sampler(tok, model, prompts: list[str]) -> list[list[int]]:
    """The token ids HFSampler hands to model.generate, padding removed."""
    seen = []
    generate = model.generate

    def spy(**kwargs):
        seen.extend(ids[mask.bool()].tolist() for ids, mask in zip(kwargs["input_ids"], kwargs["attention_mask"]))
        return generate(**kwargs)

    model.generate = spy
    HFSampler(model, tok, SamplingParams(max_new_tokens=2, batch_size=8)).generate(prompts, 1, seed=0)
    return seen


@pytest.mark.parametrize("name", list(TOKENIZERS))
def test_the_trainer_and_the_sampler_read_the_same_ids_with_bos_once(name, tmp_path):
    tok = TOKENIZERS[name]()
    rows = prefixed_problems(tok, [{"problem_id": PROBLEM.id, "completion": TRACE}], {PROBLEM.id: PROBLEM},
                             PrefixConfig(policy="fixed", fractions=[0.5]))
    prompts = [r["prompt"] for r in rows]  # one prefixed, one unprefixed
    model = tiny_model(tok, SMALL)
    cfg = TrainConfig(steps=1, problems_per_step=2, num_generations=2, max_completion_length=2)
    trainer = PrefixRLTrainer(model=model, reward_funcs=lambda completions, **_: [0.0] * len(completions),
                              args=grpo_config(cfg, tmp_path), train_dataset=Dataset.from_list(rows),
                              processing_class=tok, flops_ledger=FlopsLedger())
    out = trainer._generate_and_score_completions([dict(r) for r in rows for _ in range(2)])
    trained = [ids[mask.bool()].tolist() for ids, mask in zip(out["prompt_ids"][::2], out["prompt_mask"][::2])]
    sampled = ids_read_by_sampler(tok, model, prompts)
    assert trained == sampled == [encode_prompt(tok, p) for p in prompts]
    for ids, prompt in zip(trained, prompts):
        assert ids.count(tok.bos_token_id) == BOS_COUNT[name] and (ids[0] == tok.bos_token_id) == bool(BOS_COUNT[name])
        assert tok.decode(ids, skip_special_tokens=False) == (tok.bos_token if name == "llama3-base" else "") + prompt
    if tok.chat_template:  # a chat prompt reads as the template's own tokenization, prefix appended
        messages = [{"role": "user", "content": PROBLEM.prompt}]
        template_ids = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)["input_ids"]
        assert trained[1] == template_ids
        assert trained[0] == template_ids + tok(rows[0]["prefix"], add_special_tokens=False)["input_ids"]
    # off-policy traces' behaviour log-probs (offpolicy-is, luffy) are read after the same ids
    answer = tok(" 42", add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([trained[1] + answer])).logits[0, len(trained[1]) - 1:-1]
    expected = logits.log_softmax(-1).gather(-1, torch.tensor(answer)[:, None]).squeeze(-1).tolist()
    assert sequence_logprobs(model, tok, prompts[1], answer) == pytest.approx(expected, abs=1e-5)
    # TRL's own tokenization adds special tokens to a text prompt: a second BOS after Llama-3's template
    trl_ids = GRPOTrainer._tokenize_prompts(trainer, prompts)[0]
    assert (trl_ids != trained) == (name == "llama3-chat")
    if name == "llama3-chat":
        assert trl_ids[0][:2] == [tok.bos_token_id] * 2


@pytest.mark.parametrize("name", list(TOKENIZERS))
def test_sft_examples_start_from_the_same_prompt_ids(name):
    tok = TOKENIZERS[name]()
    example = sft_examples(tok, [{"problem_id": PROBLEM.id, "completion": TRACE}], {PROBLEM.id: PROBLEM})[0]
    prompt_ids = example["input_ids"][:example["completion_mask"].index(1)]
    assert prompt_ids == encode_prompt(tok, render_prompt(tok, PROBLEM.prompt))
    assert example["input_ids"].count(tok.bos_token_id) == BOS_COUNT[name]


def test_a_thinking_template_ends_with_the_prefix_in_policy_tokens():
    tok = thinking()
    generation_prompt = render_prompt(tok, PROBLEM.prompt)
    assert generation_prompt.endswith("<|im_start|>assistant\n<think>\n")
    head = encode_prompt(tok, generation_prompt)
    trace_ids = tok(TRACE, add_special_tokens=False)["input_ids"]
    offsets = token_offsets(tok, TRACE)
    assert tok.convert_tokens_to_ids("</think>") in trace_ids  # the cut runs through the think block and past it
    for h in range(len(trace_ids) + 1):
        prefix = prefix_at(TRACE, offsets, h)
        prompt = render_prompt(tok, PROBLEM.prompt, prefix)
        assert prompt == generation_prompt + prefix and TRACE.startswith(prefix)
        assert encode_prompt(tok, prompt) == head + trace_ids[:h]  # the tokens the prefix was cut at
    # why not continue_final_message: this template drops an assistant turn's <think> block
    prefix = prefix_at(TRACE, offsets, len(trace_ids) - 3)
    with pytest.raises(ValueError, match="final message"):
        tok.apply_chat_template([{"role": "user", "content": PROBLEM.prompt}, {"role": "assistant", "content": prefix}],
                                tokenize=False, continue_final_message=True)


def test_a_trace_written_by_another_tokenizer_is_cut_in_the_policys_tokens():
    policy, writer = thinking(), llama3()
    text = writer.decode(writer(TRACE, add_special_tokens=False)["input_ids"])  # arrives as text
    assert text == TRACE
    policy_ids = policy(text, add_special_tokens=False)["input_ids"]
    writer_ids = writer(text, add_special_tokens=False)["input_ids"]
    assert len(policy_ids) != len(writer_ids)
    rows = prefixed_problems(policy, [{"problem_id": PROBLEM.id, "completion": text}], {PROBLEM.id: PROBLEM},
                             PrefixConfig(policy="fixed", fractions=[0.25, 0.5, 0.75], unprefixed_per_problem=0))
    head = encode_prompt(policy, render_prompt(policy, PROBLEM.prompt))
    for row, fraction in zip(rows, (0.25, 0.5, 0.75)):
        h = row["prefix_tokens"]
        assert h == round(fraction * len(policy_ids)) and row["prefix_fraction"] == round(h / len(policy_ids), 4)
        assert policy(row["prefix"], add_special_tokens=False)["input_ids"] == policy_ids[:h]
        assert encode_prompt(policy, row["prompt"]) == head + policy_ids[:h] and row["prompt"].endswith(row["prefix"])
    # counted in the writer's tokens, the same prefixes have other lengths
    in_writer_tokens = [len(writer(r["prefix"], add_special_tokens=False)["input_ids"]) for r in rows]
    assert in_writer_tokens != [r["prefix_tokens"] for r in rows]


# --- every stage samples the rendered prompt -----------------------------------------------------
class Solver:
    """A chat policy on the sort task that answers every rendered prompt correctly (records them)."""

    def __init__(self, tok, problems):
        self.tokenizer, self.params, self.n_params = tok, SamplingParams(max_new_tokens=64, batch_size=8), 10
        self.answers = {render_prompt(tok, p.prompt): solve_sort(p.prompt) for p in problems}
        self.prompts = []

    def generate(self, prompts, n, seed, dead_end=None):
        self.prompts += prompts
        return [[Sample(text=self.answers.get(p, ""), token_ids=[1], prompt_tokens=1, logprobs=[0.0])] * n
                for p in prompts]


def test_screen_collect_and_evaluate_sample_the_chat_rendered_prompt(sort_task, tmp_path):
    tok = thinking()
    problems = sort_task.problems("train")[:2]
    rendered = [render_prompt(tok, p.prompt) for p in problems]
    assert all(r.startswith("<|im_start|>user\n") and r.endswith("<think>\n") for r in rendered)
    sampler = Solver(tok, problems)
    rows = score_problems(sort_task, sampler, problems, 2, tmp_path / "eval", quiet=True)  # screen's and evaluate's
    assert sampler.prompts == rendered and [r["correct"] for r in rows] == [2, 2]
    sampler.prompts = []
    traces = collect(sort_task, sampler, problems, tmp_path / "traces", CollectConfig(attempts_per_round=2), quiet=True)
    assert sampler.prompts == rendered
    # the store keeps the problem's prompt and the text written after the rendered prompt
    assert [(t["prompt"], t["completion"]) for t in traces] == [(p.prompt, solve_sort(p.prompt)) for p in problems]


# --- the context window --------------------------------------------------------------------------
def test_a_prompt_over_the_limit_is_refused_or_cut_shorter():
    tok = llama3()
    head = len(encode_prompt(tok, render_prompt(tok, PROBLEM.prompt)))
    n = len(tok(TRACE, add_special_tokens=False)["input_ids"])
    traces = [{"problem_id": PROBLEM.id, "completion": TRACE}]
    limit = head + n // 2
    cfg = PrefixConfig(policy="tokens", token_counts=[n // 4, n], max_prompt_length=limit)
    with pytest.raises(InputError) as err:
        prefixed_problems(tok, traces, {PROBLEM.id: PROBLEM}, cfg)
    message = str(err.value)
    for part in ("trace 0 (problem 'add-1')", f"{head + n} tokens", f"problem {head} + prefix {n}",
                 f"max_prompt_length {limit}", "--on-too-long truncate", "max_completion_length"):
        assert part in message
    rows = prefixed_problems(tok, traces, {PROBLEM.id: PROBLEM}, PrefixConfig(
        policy="tokens", token_counts=[n // 4, n], max_prompt_length=limit, on_too_long="truncate"))
    short, cut = rows[0], rows[1]
    assert short["prefix_tokens"] == n // 4  # fits: as drawn
    assert cut["prefix_tokens"] == n // 2 and cut["prefix_fraction"] == round((n // 2) / n, 4)
    assert TRACE.startswith(cut["prefix"]) and len(encode_prompt(tok, cut["prompt"])) == limit  # its first tokens
    assert not rows[2]["prefixed"]
    with pytest.raises(InputError, match="rendered problem alone is"):  # no shorter cut helps
        prefixed_problems(tok, traces, {PROBLEM.id: PROBLEM}, PrefixConfig(max_prompt_length=head - 1,
                                                                            on_too_long="truncate"))


def test_the_limit_counts_the_joined_prompt_where_tokens_merge_across_the_join():
    """A base model's prompt is problem + prefix as one text: BPE may merge across the join ("3" + "0"
    -> "30"), so the prompt is shorter than the two counts added; the limit holds the joined one."""
    tok = llama3(None)
    problem = Problem(id="add-2", prompt="What is 12 + 3", answer="42", difficulty=1, split="train")
    trace = "0? Think step by step, then give the final answer."
    head = len(encode_prompt(tok, problem.prompt))
    n = len(tok(trace, add_special_tokens=False)["input_ids"])
    joined = len(encode_prompt(tok, problem.prompt + trace))
    assert joined < head + n  # the case under test: a merge across the join
    traces = [{"problem_id": problem.id, "completion": trace}]
    fits = PrefixConfig(policy="tokens", token_counts=[n], max_prompt_length=joined, unprefixed_per_problem=0)
    (row,) = prefixed_problems(tok, traces, {problem.id: problem}, fits)
    assert row["prefix"] == trace and len(encode_prompt(tok, row["prompt"])) == joined
    over = PrefixConfig(policy="tokens", token_counts=[n], max_prompt_length=joined - 1, unprefixed_per_problem=0,
                        on_too_long="truncate")
    (row,) = prefixed_problems(tok, traces, {problem.id: problem}, over)
    assert row["prefix_tokens"] < n and len(encode_prompt(tok, row["prompt"])) <= joined - 1


def test_the_limit_defaults_to_the_context_window_less_the_completion():
    model = tiny_model(char_tokenizer(), SMALL)  # a context window of 256
    assert with_context_limit(PrefixConfig(), model, 200).max_prompt_length == 56
    assert with_context_limit(PrefixConfig(max_prompt_length=10), model, 200).max_prompt_length == 10
    with pytest.raises(ValueError, match="no room"):
        with_context_limit(PrefixConfig(), model, 256)
    with pytest.raises(ValueError, match="on_too_long"):
        PrefixConfig(on_too_long="drop")


class Stops:
    params, n_params = SamplingParams(max_new_tokens=4), 10

    def generate(self, prompts, n, seed, dead_end=None):
        return [[Sample(text="", token_ids=[0], prompt_tokens=1)] * n for _ in prompts]


def test_calibration_prefixes_keep_to_the_limit(sort_task, tmp_path):
    tok = char_tokenizer()
    problem = sort_task.problems("train")[0]
    text = solve_sort(problem.prompt)
    traces, limit = [{"problem_id": problem.id, "completion": text}], len(problem.prompt) + 5
    cfg = PrefixConfig(max_prompt_length=limit, on_too_long="truncate")
    rows = calibrate(sort_task, Stops(), tok, traces, {problem.id: problem}, tmp_path, fractions=(0.0, 1.0), n=1,
                     quiet=True, cfg=cfg)
    assert [p["prefix_tokens"] for p in rows[0]["points"]] == [0, 5]
    with pytest.raises(InputError, match="trace 0"):
        calibrate(sort_task, Stops(), tok, traces, {problem.id: problem}, tmp_path / "error", fractions=(1.0,), n=1,
                  quiet=True, cfg=PrefixConfig(max_prompt_length=limit))


def test_prefixes_command_refuses_or_truncates(sort_task, tmp_path):
    tok = char_tokenizer()
    model_dir = tmp_path / "model"
    tiny_model(tok, SMALL).save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    problem = sort_task.problems("train")[0]
    text = solve_sort(problem.prompt)
    write_jsonl(tmp_path / "traces.jsonl", [{"problem_id": problem.id, "prompt": problem.prompt, "completion": text}])
    base = ["prefixes", str(model_dir), "--task", "sort", "--traces", str(tmp_path / "traces.jsonl"),
            "--policy", "fixed", "--fraction", "1.0", "--out", str(tmp_path / "out")]
    room = 256 - len(problem.prompt) - 5  # the context window leaves a prompt 5 tokens for the prefix
    refused = CliRunner().invoke(app, base + ["--max-completion-length", str(room)])
    assert refused.exit_code == 2 and "trace 0" in refused.output and "--on-too-long" in refused.output
    done = CliRunner().invoke(app, base + ["--max-completion-length", str(room), "--on-too-long", "truncate"])
    assert done.exit_code == 0, done.output
    rows = read_jsonl(tmp_path / "out" / "train.jsonl")
    assert rows[0]["prefix"] == text[:5] and rows[0]["prefix_tokens"] == 5
    explicit = CliRunner().invoke(app, base + ["--max-prompt-length", str(len(problem.prompt) + 7),
                                               "--on-too-long", "truncate"])
    assert explicit.exit_code == 0 and read_jsonl(tmp_path / "out" / "train.jsonl")[0]["prefix_tokens"] == 7
