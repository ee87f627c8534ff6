"""reasoning-gym as a task source (`--task rg:NAME`, tasks/rg.py): splits, the all-or-nothing
reward, scorers that hang or run model text, and the pipeline on it offline (screen and collect with
a scripted sampler, reference traces, prefixes and a few training steps with a tiny model)."""

import json
import pickle
import time

import pytest
from typer.testing import CliRunner

pytest.importorskip("reasoning_gym")

from prefixrl.generate import Sample, SamplingParams  # noqa: E402
from prefixrl.models import char_tokenizer, tiny_model  # noqa: E402
from prefixrl.tasks import load_task, problems_by_id  # noqa: E402
from test_train import SMALL  # noqa: E402

SHORT = "Answer as <answer>X</answer>."  # keeps prompts inside the tiny model's 256 positions
ARITH = ["--task", "rg:basic_arithmetic", "--task-arg", "n_train=4", "--task-arg", "n_heldout=2",
         "--task-arg", "n_easy=2", "--task-arg", f"instruction={SHORT}", "--task-arg", "max_terms=3",
         "--task-arg", "max_digits=1"]


@pytest.fixture(scope="module")
def countdown():
    task = load_task("rg:countdown", n_train=6, n_heldout=3, n_easy=3, level=1, verify_timeout_s=1.5)
    yield task
    task.close()


def test_splits_are_disjoint_repeatable_and_of_their_levels():
    task = load_task("rg:basic_arithmetic", n_train=40, n_heldout=20, n_easy=10, level=3)
    splits = {s: task.problems(s) for s in ("train", "heldout", "easy")}
    assert {s: len(ps) for s, ps in splits.items()} == {"train": 40, "heldout": 20, "easy": 10}
    ids = {s: {p.id for p in ps} for s, ps in splits.items()}
    assert not ids["train"] & ids["heldout"] and not ids["train"] & ids["easy"] and not ids["heldout"] & ids["easy"]
    again = load_task("rg:basic_arithmetic", n_train=40, n_heldout=20, n_easy=10, level=3)
    assert [p.id for p in again.problems("heldout")] == [p.id for p in splits["heldout"]]
    terms = {s: max(p.meta["entry"]["metadata"]["num_terms"] for p in ps) for s, ps in splits.items()}
    assert terms["easy"] == 2 < terms["train"]  # easy: level 0 of the curriculum (2 terms); train: level 3
    assert all(p.prompt.endswith("between <answer> and </answer> tags.") for p in splits["train"])
    # a dataset with few distinct questions: repeats are dropped, never shared between splits
    tiny = load_task("rg:basic_arithmetic", n_train=30, n_heldout=30, n_easy=0, min_terms=2, max_terms=2,
                     min_digits=1, max_digits=1, instruction="")
    assert not {p.id for p in tiny.problems("train")} & {p.id for p in tiny.problems("heldout")}


def test_reward_is_one_only_at_a_full_score(countdown):
    p = countdown.problems("train")[0]
    cases = [(f"<think>easy</think> <answer>{p.answer}</answer>", 1.0),
             (f"<answer>{p.answer}</answer> and more text", 1.0),
             ("<answer>1 + 2</answer>", 0.0),  # a well-formed wrong expression: reasoning-gym gives it 0.01
             (p.answer, 0.0),  # the right expression without the tags: no answer
             ("<answer></answer>", 0.0), ("", 0.0)]
    before = dict(countdown.verifier_stats)
    assert [v.reward for v in countdown.verify_many([(p, text) for text, _ in cases])] == [r for _, r in cases]
    after = countdown.verifier_stats
    assert after["partial_credit"] - before["partial_credit"] >= 1
    assert after["no_answer"] - before["no_answer"] == 2
    assert countdown.verify(p, None).reward == 0.0  # never raises on what is not text


def test_a_hanging_scorer_scores_zero_is_counted_and_the_run_goes_on(countdown, caplog):
    p = countdown.problems("train")[1]
    timeouts = countdown.verifier_stats["timeouts"]
    start = time.time()
    verdicts = countdown.verify_many([(p, "<answer>9**9**9**9</answer>"), (p, f"<answer>{p.answer}</answer>")])
    assert [v.reward for v in verdicts] == [0.0, 1.0] and time.time() - start < 20
    assert countdown.verifier_stats["timeouts"] == timeouts + 1
    assert "no score within 1.5 s" in caplog.text
    # code the scorer evaluates runs in the worker: it cannot touch the verdict
    assert countdown.verify(p, "<answer>__import__('os')._exit(0)</answer>").reward == 0.0
    assert countdown.verify(p, f"<answer>{p.answer}</answer>").reward == 1.0


def test_bad_options_are_named():
    for kwargs, match in [(dict(nope=1), r"no option \['nope'\].*min_terms"),
                          (dict(n_train=-5), "n_train must be a whole number"),
                          (dict(n_train="abc"), "n_train must be a whole number"),
                          (dict(level=99), r"level must be a whole number 0\.\.\d"),
                          (dict(min_terms=0), "refused")]:
        with pytest.raises(ValueError, match=match):
            load_task("rg:basic_arithmetic", **kwargs)
    with pytest.raises(ValueError, match="reasoning-gym has no task 'nope'"):
        load_task("rg:nope")


def test_task_pickles_for_worker_processes(countdown):
    p = countdown.problems("train")[0]
    countdown.verify(p, "<answer>1</answer>")  # starts the scorer's worker
    copy = pickle.loads(pickle.dumps(countdown))
    try:
        assert copy.verify(copy.problems("train")[0], f"<answer>{p.answer}</answer>").reward == 1.0
    finally:
        copy.close()


class ScriptedSampler:
    """Answers every problem wrongly, except the last sample of those in `solves`."""

    def __init__(self, task, solves):
        self.answers = {p.prompt: (p.id, p.answer) for p in problems_by_id(task).values()}
        self.solves, self.params, self.n_params = set(solves), SamplingParams(batch_size=64), 1000
        self.tokenizer = char_tokenizer()

    def generate(self, prompts, n, seed, dead_end=None):
        def text(prompt, j):
            pid, answer = self.answers[prompt]
            return f"<answer>{answer}</answer>" if pid in self.solves and j == n - 1 else "<answer>-999</answer>"

        return [[Sample(text=text(p, j), token_ids=[5] * 12, prompt_tokens=30) for j in range(n)] for p in prompts]


def test_screen_and_collect_on_a_reasoning_gym_task(tmp_path):
    from prefixrl.screen import screen
    from prefixrl.traces import CollectConfig, collect

    task = load_task("rg:basic_arithmetic", n_train=4, n_heldout=1, n_easy=1)
    try:
        train = task.problems("train")
        hard = screen(task, ScriptedSampler(task, {train[0].id}), train, tmp_path / "screen", n=4, quiet=True)
        assert [p.id for p in hard] == [p.id for p in train[1:]]
        traces = collect(task, ScriptedSampler(task, {train[2].id}), hard, tmp_path / "traces",
                         CollectConfig(max_attempts=8, attempts_per_round=4), quiet=True)
        assert [(t["problem_id"], t["attempt"]) for t in traces] == [(train[2].id, 4)]
        assert json.loads((tmp_path / "traces" / "manifest.json").read_text())["verifier"]["scored"] > 0
    finally:
        task.close()


def test_reference_traces_prefixes_and_training_offline(tmp_path):
    """`prefixrl reference` -> prefixes -> two training steps, on a tiny random model: reference
    traces are verified, charge no FLOPs, and train like any other traces."""
    from prefixrl.cli import app
    from prefixrl.files import read_jsonl

    tok, model_dir = char_tokenizer(), tmp_path / "tiny"
    tiny_model(tok, SMALL).save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    run = CliRunner().invoke
    env = {"COLUMNS": "300"}
    result = run(app, ["reference", *ARITH, "--problems", "train", "--out", str(tmp_path / "traces")], env=env)
    assert result.exit_code == 0, result.output
    traces = read_jsonl(tmp_path / "traces" / "traces.jsonl")
    assert len(traces) == 4 and {t["origin"] for t in traces} == {"reference"}
    assert all(t["completion"].startswith("<answer>") for t in traces)
    assert json.loads((tmp_path / "traces" / "flops.json").read_text())["total"] == 0.0
    result = run(app, ["prefixes", str(model_dir), *ARITH, "--traces", str(tmp_path / "traces" / "traces.jsonl"),
                       "--out", str(tmp_path / "prefixes"), "--max-completion-length", "24"], env=env)
    assert result.exit_code == 0, result.output
    result = run(app, ["train", str(model_dir), *ARITH, "--data", str(tmp_path / "prefixes" / "train.jsonl"),
                       "--out", str(tmp_path / "train"), "--steps", "2", "--problems-per-step", "2",
                       "--num-generations", "2", "--eval-every", "2", "--eval-n", "2", "--max-completion-length", "24",
                       "--prior-flops", str(tmp_path / "traces" / "flops.json")], env=env)
    assert result.exit_code == 0, result.output
    steps = [m for m in read_jsonl(tmp_path / "train" / "metrics.jsonl") if "loss" in m]
    assert [m["step"] for m in steps] == [1, 2]
    assert [e["step"] for e in read_jsonl(tmp_path / "train" / "eval.jsonl")] == [0, 2]
    assert (tmp_path / "train" / "model" / "config.json").exists()


def test_pipeline_with_reference_traces(tmp_path):
    """A config's `traces: reference`: screen with the policy, then the hard problems' own solutions
    as the traces (no rejection sampling, 0 collection FLOPs), then prefixes."""
    from rich.console import Console

    from prefixrl.pipeline import PipelineConfig, ScreenConfig, prepare_data

    tok = char_tokenizer()
    tiny_model(tok, SMALL).save_pretrained(tmp_path / "tiny")
    tok.save_pretrained(tmp_path / "tiny")
    cfg = PipelineConfig(task="rg:basic_arithmetic", model=str(tmp_path / "tiny"), traces="reference",
                         task_args=dict(n_train=3, n_heldout=1, n_easy=1, instruction=SHORT, max_terms=3, max_digits=1),
                         sampling=SamplingParams(max_new_tokens=16, batch_size=8), screen=ScreenConfig(n=2, k=2))
    data = prepare_data(cfg, tmp_path / "run", Console(quiet=True), quiet=True, max_completion_length=24)
    assert len(data.hard) == 3  # a random model solves nothing
    assert [t["problem_id"] for t in data.traces] == [p.id for p in data.hard]
    assert {t["origin"] for t in data.traces} == {"reference"} and data.collect_flops.total == 0.0
    assert not (tmp_path / "run" / "traces" / "rounds.jsonl").exists()  # nothing was sampled
    assert sum(r["prefixed"] for r in data.rows) == 9 and len(data.rows) == 12
