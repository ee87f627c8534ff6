"""`prefixrl export verl`: the Parquet schema verl reads, a row's round trip, prompts that end with
the prefix under verl's rendering, and reward.py loaded as verl loads it."""

import importlib.util
import json
from pathlib import Path

import datasets
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from conftest import solve_chain, solve_sort
from prefixrl.cli import app
from prefixrl.export import IDENTITY_TEMPLATE, SCHEMA, export_verl, verl_row
from prefixrl.files import write_jsonl
from prefixrl.models import char_tokenizer, encode_prompt, load_model, resolve_model
from prefixrl.prefixes import prefixed_problems
from prefixrl.tasks import Problem, problems_by_id

SOLVE = {"chain": solve_chain, "sort": solve_sort}
COLUMNS = ["data_source", "prompt", "ability", "reward_model", "extra_info"]  # verl's gsm8k.py columns
# a toy chat template in the usual shape: turns closed by an end marker, then a generation prompt
CHAT_TEMPLATE = ("{% for m in messages %}<{{ m.role }}>{{ m.content }}<end>{% endfor %}"
                 "{% if add_generation_prompt %}<assistant>{% endif %}")


def make_rows(task, tokenizer, n=3):
    problems = {p.id: p for p in task.problems("train")[:n]}
    traces = [{"problem_id": pid, "completion": SOLVE[task.name](p.prompt)} for pid, p in problems.items()]
    return prefixed_problems(tokenizer, traces, problems)


@pytest.fixture(scope="module")
def exported(chain_task, tmp_path_factory):
    out = tmp_path_factory.mktemp("verl")
    rows = make_rows(chain_task, char_tokenizer())
    counts = export_verl(rows, chain_task, problems_by_id(chain_task), out)
    return out, rows, counts


def test_schema_and_round_trip(exported, chain_task):
    out, rows, counts = exported
    assert counts == {"train.parquet": 12, "val.parquet": 3}  # 3 problems x (3 prefixed + 1 unprefixed); each once
    for name in counts:
        schema = pq.read_schema(out / name)
        assert schema.names == COLUMNS and schema.equals(SCHEMA)
    table = pq.read_table(out / "train.parquet").to_pylist()
    problems = problems_by_id(chain_task)
    for index, (row, got) in enumerate(zip(rows, table)):
        assert got == verl_row(chain_task, problems[row["problem_id"]], row["prompt"], row["prefix"], "train", index, row)
    got, row = table[1], rows[1]
    assert got["prompt"] == [{"role": "user", "content": row["prompt"]}] and row["prompt"].endswith(row["prefix"])
    assert got["reward_model"] == {"style": "rule", "ground_truth": problems[row["problem_id"]].answer}
    info = got["extra_info"]
    assert (info["problem_id"], info["prefix"], info["prefix_fraction"], info["prefix_tokens"], info["trace_index"]) == (
        row["problem_id"], row["prefix"], row["prefix_fraction"], row["prefix_tokens"], row["trace_index"])
    assert info["prefixed"] and 0.4 <= info["prefix_fraction"] <= 0.8 and info["prefix_tokens"] > 0
    assert info["messages"] == [{"role": "user", "content": problems[row["problem_id"]].prompt},
                                {"role": "assistant", "content": row["prefix"]}]
    assert Problem.from_dict(json.loads(info["problem"])) == problems[row["problem_id"]]
    # verl reads the files with `datasets`: the same row comes back
    assert datasets.load_dataset("parquet", data_files=str(out / "train.parquet"))["train"][1] == got


def test_val_rows_are_each_problem_once_unprefixed(exported, chain_task):
    out, rows, _ = exported
    val = pq.read_table(out / "val.parquet").to_pylist()
    problems = problems_by_id(chain_task)
    assert [r["extra_info"]["problem_id"] for r in val] == list(dict.fromkeys(r["problem_id"] for r in rows))
    for r in val:
        info = r["extra_info"]
        assert info["prefix"] == "" and not info["prefixed"] and info["trace_index"] is None and info["split"] == "val"
        assert r["prompt"][0]["content"] == problems[info["problem_id"]].prompt  # no chat template: the problem itself


def test_identity_template_gives_verl_the_prompt_ending_with_the_prefix(chain_task, tmp_path):
    """verl renders `prompt` with add_generation_prompt=True. With the identity template it gets
    prefixrl's rendered prompt token for token; the model's own template on the chat messages
    would close the prefix's turn and open a new one (why the export pre-renders)."""
    tokenizer = char_tokenizer()
    tokenizer.chat_template = CHAT_TEMPLATE
    rows = make_rows(chain_task, tokenizer, n=1)
    export_verl(rows, chain_task, problems_by_id(chain_task), tmp_path)
    row = pq.read_table(tmp_path / "train.parquet").to_pylist()[0]
    prefix = row["extra_info"]["prefix"]
    assert row["prompt"][0]["content"] == "<user>" + chain_task.problems("train")[0].prompt + "<end><assistant>" + prefix

    own = tokenizer.apply_chat_template(row["extra_info"]["messages"], add_generation_prompt=True, tokenize=False)
    assert not own.endswith(prefix) and own.endswith(prefix + "<end><assistant>")
    tokenizer.chat_template = IDENTITY_TEMPLATE  # actor_rollout_ref.model.custom_chat_template
    ids = tokenizer.apply_chat_template(row["prompt"], add_generation_prompt=True, tokenize=True)["input_ids"]
    assert ids == tokenizer(rows[0]["prompt"], add_special_tokens=False)["input_ids"]  # what prefixrl's rollouts read
    assert tokenizer.decode(ids).endswith(prefix)


def load_reward(path):
    """As verl's get_custom_reward_fn loads custom_reward_function.path."""
    spec = importlib.util.spec_from_file_location("custom_module", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.compute_score


@pytest.mark.parametrize("name", ["chain", "sort"])
def test_compute_score_scores_prefix_plus_continuation(name, chain_task, sort_task, tmp_path):
    task = {"chain": chain_task, "sort": sort_task}[name]
    rows = make_rows(task, char_tokenizer(), n=2)
    export_verl(rows, task, problems_by_id(task), tmp_path)
    compute_score = load_reward(tmp_path / "reward.py")
    solution = SOLVE[name](task.problems("train")[0].prompt)
    checked = []
    for kind in ("train", "val"):
        for r in pq.read_table(tmp_path / f"{kind}.parquet").to_pylist()[:4]:
            info, truth = r["extra_info"], r["reward_model"]["ground_truth"]
            if info["problem_id"] != task.problems("train")[0].id:
                continue
            continuation = solution[len(info["prefix"]):]
            assert solution.startswith(info["prefix"])
            assert compute_score(r["data_source"], continuation, truth, info) == 1.0
            assert compute_score(r["data_source"], continuation, truth, info, step=3) == 1.0  # newer verl's extra kwargs
            wrong = continuation[:-3] + ("00." if not continuation.endswith("00.") else "11.")
            assert compute_score(r["data_source"], wrong, truth, info) == 0.0
            if info["prefixed"]:  # the continuation alone is not a solution: the prefix must be prepended
                assert compute_score(r["data_source"], continuation, truth, {**info, "prefix": ""}) == 0.0
            checked.append((kind, info["prefixed"]))
    assert checked == [("train", True)] * 3 + [("val", False)]  # the problem's 3 prefixes, then it unprefixed
    with pytest.raises(ValueError, match="prefixrl export verl"):
        compute_score("openai/gsm8k", "#### 3", "3", {"split": "train"})


def test_compute_score_on_math(monkeypatch, tmp_path):
    """A math row scored by verl's reward in another directory: the task is rebuilt from the
    options the export recorded (its files and folders made absolute), and math-verify checks
    prefix + continuation."""
    import os

    from prefixrl.files import read_jsonl
    from prefixrl.tasks import load_task
    from prefixrl.verl_reward import _task, compute_score

    datasets.Dataset.from_list(read_jsonl("tests/data/math_heldout.jsonl")).save_to_disk(str(tmp_path / "saved"))
    saved = os.path.relpath(tmp_path / "saved")  # a `datasets` folder, named relative to here
    task = load_task("math", train="tests/data/math_problems.jsonl", heldout=saved, id_column="id")
    problem = problems_by_id(task)["prealgebra/2"]
    prefix = " 3/6 = "
    info = verl_row(task, problem, problem.prompt + prefix, prefix, "train", 0)["extra_info"]
    args = json.loads(info["task_args"])
    assert args["train"] == str(Path("tests/data/math_problems.jsonl").resolve())
    assert args["heldout"] == str((tmp_path / "saved").resolve())
    monkeypatch.chdir(tmp_path)  # verl's workers: another working directory
    _task.cache_clear()
    assert compute_score("prefixrl/math", "1/2, so the answer is $\\boxed{\\dfrac{1}{2}}$.", problem.answer, info) == 1.0
    assert compute_score("prefixrl/math", "2/3, so the answer is $\\boxed{\\frac{2}{3}}$.", problem.answer, info) == 0.0


def test_cli(chain_task, tmp_path):
    data = tmp_path / "train.jsonl"
    write_jsonl(data, make_rows(chain_task, char_tokenizer(), n=2))
    runner = CliRunner()
    result = runner.invoke(app, ["export", "verl", str(data), "--task", "chain", "--out", str(tmp_path / "verl"),
                                 "--heldout", "heldout", "--model", "builtin:chain"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "train.parquet (8 rows)" in result.output and "heldout.parquet (64 rows)" in result.output
    heldout = pq.read_table(tmp_path / "verl" / "heldout.parquet").to_pylist()
    assert [r["prompt"][0]["content"] for r in heldout] == [p.prompt for p in chain_task.problems("heldout")]
    script = (tmp_path / "verl" / "run_verl.sh").read_text()
    out = (tmp_path / "verl").resolve()
    _, tokenizer = load_model(resolve_model("builtin:chain"))
    longest = max(len(encode_prompt(tokenizer, r["prompt"][0]["content"])) for name in ("train", "val", "heldout")
                  for r in pq.read_table(out / f"{name}.parquet").to_pylist())
    assert f"data.max_prompt_length={longest} " in script  # verl drops longer prompts: none may be
    for option in (f"custom_reward_function.path={out}/reward.py", "custom_chat_template='\"{{ messages[0].content }}\"'",
                   f"data.val_files=[{out}/val.parquet,{out}/heldout.parquet]", "actor_rollout_ref.rollout.n=8",
                   "algorithm.norm_adv_by_std_in_grpo=False", "actor_rollout_ref.actor.optim.lr=1e-6"):
        assert option in script
    no_model = runner.invoke(app, ["export", "verl", str(data), "--task", "chain", "--out", str(tmp_path / "x"),
                                   "--heldout", "heldout"])
    assert no_model.exit_code == 2 and "--model" in no_model.output
    wrong_task = runner.invoke(app, ["export", "verl", str(data), "--task", "sort", "--out", str(tmp_path / "y")])
    assert wrong_task.exit_code == 2 and "--task" in wrong_task.output and not (tmp_path / "y").exists()


def test_with_verl_itself(chain_task, tmp_path):
    """Where verl is installed (checked with verl 0.9.1): its dataset class reads the files, its
    rollout tokenizer (Continuous Token builders) with the identity template gives prefixrl's
    prompt ids, and its reward loader loads reward.py and scores a prefixed row."""
    rl_dataset = pytest.importorskip("verl.utils.dataset.rl_dataset")
    from omegaconf import OmegaConf
    from verl.trainer.ppo.reward import get_custom_reward_fn
    from verl.utils.tokenizer.continuous_token_wiring import create_continuous_token_builder

    tokenizer = char_tokenizer()
    tokenizer.chat_template = CHAT_TEMPLATE
    rows = make_rows(chain_task, tokenizer, n=2)
    export_verl(rows, chain_task, problems_by_id(chain_task), tmp_path)
    config = OmegaConf.create({"max_prompt_length": 1024, "filter_overlong_prompts_workers": 1})
    item = rl_dataset.RLHFDataset(str(tmp_path / "train.parquet"), tokenizer, config)[1]
    assert item["raw_prompt"] == [{"role": "user", "content": rows[1]["prompt"]}]
    tokenizer.chat_template = IDENTITY_TEMPLATE
    expected = tokenizer(rows[1]["prompt"], add_special_tokens=False)["input_ids"]
    for model_type in ("llama", "qwen3"):
        builder = create_continuous_token_builder(tokenizer, hf_model_type=model_type)
        assert builder.build_initial_tokens(list(item["raw_prompt"])) == expected
    reward = {"custom_reward_function": {"path": str(tmp_path / "reward.py"), "name": "compute_score"}}
    compute_score = get_custom_reward_fn(OmegaConf.create({"reward": reward}))
    solution = solve_chain(problems_by_id(chain_task)[rows[1]["problem_id"]].prompt)
    continuation = solution[len(rows[1]["prefix"]):]
    assert compute_score(data_source=item["data_source"], solution_str=continuation,
                         ground_truth=item["reward_model"]["ground_truth"], extra_info=item["extra_info"]) == 1.0


def test_run_script_composes_with_verls_config(exported):
    """Where verl and Hydra are installed: every option run_verl.sh sets exists in verl's
    ppo_trainer config (checked with verl 0.9.1), the identity template survives Hydra's quoting."""
    import shlex
    from pathlib import Path

    pytest.importorskip("verl.trainer")
    hydra = pytest.importorskip("hydra")
    import verl

    out, _, _ = exported
    script = (out / "run_verl.sh").read_text()
    body = script.split("python3 -m verl.trainer.main_ppo", 1)[1].replace("\\\n", " ").replace('"$@"', "")
    overrides = [o.replace('"$MODEL"', "some/model") for o in shlex.split(body)]
    with hydra.initialize_config_dir(config_dir=str(Path(verl.__file__).parent / "trainer" / "config"), version_base=None):
        cfg = hydra.compose("ppo_trainer", overrides=overrides)
    assert cfg.actor_rollout_ref.model.custom_chat_template == IDENTITY_TEMPLATE
    assert cfg.custom_reward_function.path == str(out.resolve() / "reward.py")
    assert (cfg.actor_rollout_ref.rollout.n, cfg.data.train_batch_size, cfg.algorithm.norm_adv_by_std_in_grpo) == (8, 128, False)
