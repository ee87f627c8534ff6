"""Bad input and unwritable folders end with the tool's own error (rc 2, the file or item, the fix),
before any sampling; the CLI's defaults come from the configs' (one source)."""

import json

import pytest
from typer.testing import CliRunner

import prefixrl.engine
import prefixrl.screen
from prefixrl.cli import app
from prefixrl.generate import SamplingParams
from prefixrl.train import TrainConfig


def invoke(*args):
    result = CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "400"})
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result, " ".join(result.output.split())


def test_screen_probes_its_output_folder_before_sampling(tmp_path, monkeypatch):
    sampled = []
    monkeypatch.setattr(prefixrl.screen, "score_problems", lambda *args, **kwargs: sampled.append(1) or [])
    (tmp_path / "a-file").write_text("")
    out = tmp_path / "a-file" / "screen"  # cannot be made: its parent is a file
    result, message = invoke("screen", "builtin:sort", "--task", "sort", "--n", 2, "--out", out, "--quiet")
    assert result.exit_code == 2, result.output
    assert f"error: {tmp_path / 'a-file'}" in message and "pass a folder you can write to (--out)" in message
    assert sampled == []


@pytest.mark.parametrize("value, said", [("abc", "option n_train must be an integer, got 'abc'"),
                                         ("-5", "n_train must be >= 0, got -5"),
                                         ("[1]", "option n_train must be an integer, got [1]")])
@pytest.mark.parametrize("task", ["sort", "chain"])
def test_a_mistyped_task_arg_is_named(tmp_path, value, said, task):
    result, message = invoke("evaluate", "builtin:sort", "--task", task, "--task-arg", f"n_train={value}",
                             "--out", tmp_path, "--quiet")
    assert result.exit_code == 2, result.output
    assert said in message and "--task-arg n_train=" in message


def test_cli_defaults_are_the_configs(tmp_path, monkeypatch):
    """The CLI generates as many tokens as the demo and the dataclasses do (one source), so the
    stage-by-stage commands cut prefixes that fit the shipped models' 256-token window."""
    seen = {}
    monkeypatch.setattr(prefixrl.engine, "run_method", lambda *args, **kwargs: seen.update(cfg=args[5]) or tmp_path)
    rows = tmp_path / "train.jsonl"
    rows.write_text(json.dumps({"prompt": "x", "problem_id": "sort-351207", "prefix": "", "prefixed": False}) + "\n")
    result, _ = invoke("train", "builtin:sort", "--task", "sort", "--data", rows, "--out", tmp_path / "run")
    assert result.exit_code == 0, result.output
    assert seen["cfg"].max_completion_length == TrainConfig.max_completion_length

    made = []

    def make_sampler(backend, path, params):
        made.append(params)
        raise ValueError("enough: the sampler's settings are what this test reads")

    monkeypatch.setattr("prefixrl.generate.make_sampler", make_sampler)
    for command in ("screen", "evaluate"):
        invoke(command, "builtin:sort", "--task", "sort", "--out", tmp_path / command, "--quiet")
    assert [p.max_new_tokens for p in made] == [SamplingParams().max_new_tokens] * 2


@pytest.mark.parametrize("line, said", [("seeds: 1", "seeds must be a list of integers, got 1"),
                                        ("train: {steps: two}", "train: steps must be an integer, got 'two'"),
                                        ("workers: '2'", "workers must be an integer, got '2'"),
                                        ("methods: prefixrl", "methods must be a list of strings, got 'prefixrl'"),
                                        ("screen: {limit: 1.5}", "screen: limit must be an integer or null")])
def test_an_experiment_config_is_checked_before_any_stage_runs(tmp_path, line, said):
    """A mistyped config is named at once, not found as a TypeError after screen, collect and
    prefixes ran (minutes here, GPU-days at scale)."""
    config = tmp_path / "bad.yaml"
    config.write_text(f"task: sort\nmodel: builtin:sort\n{line}\n")
    result, message = invoke("experiment", config, "--out", tmp_path / "run", "--quiet")
    assert result.exit_code == 2, result.output
    assert f"error: {config}: {said}" in message
    assert not (tmp_path / "run" / "screen").exists()


def test_truncate_says_how_many_prefixes_it_shortened(sort_task, tmp_path):
    """Three cuts past the limit all end at it: the user is told, and the manifest lists each cut."""
    from conftest import solve_sort
    from prefixrl.files import read_jsonl, write_jsonl

    problem = sort_task.problems("train")[0]
    write_jsonl(tmp_path / "traces.jsonl", [{"problem_id": problem.id, "prompt": problem.prompt,
                                             "completion": solve_sort(problem.prompt)}])
    args = ["prefixes", "builtin:sort", "--task", "sort", "--traces", tmp_path / "traces.jsonl", "--policy", "fixed",
            "--fraction", 0.5, "--fraction", 0.7, "--fraction", 0.9, "--max-prompt-length", 40, "--out", tmp_path / "p"]
    result, message = invoke(*args, "--on-too-long", "truncate")
    assert result.exit_code == 0, result.output
    rows = read_jsonl(tmp_path / "p" / "train.jsonl")
    kept = {r["prefix_tokens"] for r in rows if r["prefixed"]}
    shortened = json.loads((tmp_path / "p" / "manifest.json").read_text())["shortened_prefixes"]
    assert len(shortened) == 3 and {s["kept"] for s in shortened} == kept and len(kept) == 1
    assert "--on-too-long truncate shortened 3 of 3 prefixes to fit max_prompt_length 40 (traces [0]); " \
           "2 prefixed rows now repeat another cut of their trace" in message


@pytest.mark.parametrize("command", [["demo"], ["experiment", "benchmark"], ["experiment", "configs/adaptive.yaml"]])
def test_shipped_configs_are_found_from_any_folder(tmp_path, monkeypatch, command):
    """`prefixrl demo` (default configs/demo.yaml) and configs named as in the README work outside the
    repository: the configs ship with the package."""
    import prefixrl.demo
    import prefixrl.experiment

    def reached(*args, **kwargs):
        raise ValueError("reached the data stages")

    for module in (prefixrl.demo, prefixrl.experiment):
        monkeypatch.setattr(module, "prepare_data", reached)
    monkeypatch.chdir(tmp_path)
    result, message = invoke(*command, "--out", tmp_path / "run", "--quiet")
    assert result.exit_code == 2 and "error: reached the data stages" in message, message
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    task = "minefield" if command == ["experiment", "benchmark"] else "chain"
    assert config["task"] == task and config["model"] == f"builtin:{task}"


def test_a_missing_config_names_the_shipped_ones(tmp_path):
    result, message = invoke("experiment", tmp_path / "nope.yaml", "--out", tmp_path / "run")
    assert result.exit_code == 2
    assert f"{tmp_path / 'nope.yaml'}: no such config file; the shipped configs are ['adaptive', 'benchmark', 'benchmark-chain'," in message


def test_a_full_disk_is_the_tools_error(sort_task, tmp_path, monkeypatch):
    import errno
    import os

    from conftest import solve_sort
    from prefixrl.files import write_jsonl

    problem = sort_task.problems("train")[0]
    write_jsonl(tmp_path / "traces.jsonl", [{"problem_id": problem.id, "prompt": problem.prompt,
                                             "completion": solve_sort(problem.prompt)}])

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr("prefixrl.files.os.fsync", full)
    result, message = invoke("prefixes", "builtin:sort", "--task", "sort", "--traces", tmp_path / "traces.jsonl",
                             "--out", tmp_path / "p")
    assert result.exit_code == 2, result.output
    assert "error: No space left on device: free some space and rerun the same command" in message
    assert not (tmp_path / "p" / "train.jsonl").exists()  # no half-written file


def test_every_cli_default_is_the_librarys():
    """One source per default: an option that sets a config field has that field's default, and
    `prefixrl train` has an option for every TrainConfig field."""
    import inspect

    import typer.main

    from prefixrl.config import (CollectConfig, PrefixConfig, PretrainConfig, SFTStageConfig, TinyModelConfig,
                                 default)
    from prefixrl.screen import screen

    sampling = {name: (SamplingParams, name) for name in ("backend", "temperature", "max_new_tokens", "batch_size")}
    same = {  # command: {option: (config class, field)}
        "pretrain": {"steps": (PretrainConfig, "steps"), "batch_size": (PretrainConfig, "batch_size"),
                     "lr": (PretrainConfig, "lr"), "tokenizer": (PretrainConfig, "tokenizer"),
                     "hidden_size": (TinyModelConfig, "hidden_size"), "layers": (TinyModelConfig, "num_hidden_layers")},
        "screen": sampling,
        "collect": {**sampling, **{name: (CollectConfig, name) for name in
                                   ("max_attempts", "traces_per_problem", "attempts_per_round")}},
        "evaluate": {**sampling, "temperature": (TrainConfig, "eval_temperature")},
        "prefixes": {"policy": (PrefixConfig, "policy"), "cuts": (PrefixConfig, "cuts_per_trace"),
                     "low": (PrefixConfig, "low"), "high": (PrefixConfig, "high"),
                     "fraction": (PrefixConfig, "fractions"), "tokens": (PrefixConfig, "token_counts"),
                     "snap": (PrefixConfig, "snap"), "unprefixed": (PrefixConfig, "unprefixed_per_problem"),
                     "band": (PrefixConfig, "band"), "max_prompt_length": (PrefixConfig, "max_prompt_length"),
                     "on_too_long": (PrefixConfig, "on_too_long"),
                     "max_completion_length": (TrainConfig, "max_completion_length")},
        "train": {**{name: (TrainConfig, name) for name in TrainConfig.__dataclass_fields__},
                  "sft_epochs": (SFTStageConfig, "epochs")},
    }
    commands = typer.main.get_command(app).commands
    for command, options in same.items():
        params = {p.name: p.default for p in commands[command].params}
        for option, (cls, name) in options.items():
            expected = default(cls, name)
            got = params[option]
            got = type(expected)(got) if isinstance(expected, (list, tuple)) and got is not None else got
            assert got == expected, f"prefixrl {command} --{option}: {got!r}, but {cls.__name__}.{name} is {expected!r}"
    assert {p.name: p.default for p in commands["screen"].params}["n"] == inspect.signature(screen).parameters["n"].default


def test_a_builtin_model_implies_its_task_and_any_other_model_needs_task(tmp_path, monkeypatch):
    """No guessed task: `builtin:TASK` names its own (chain-q is a chain model); for any other model,
    or none, --task is required, said before anything is loaded."""
    from prefixrl.cli_common import load_task_for
    from prefixrl.files import InputError

    assert load_task_for(None, [], "builtin:sort").name == "sort"
    assert load_task_for(None, [], "builtin:chain-q").name == "chain"
    assert load_task_for("sort", [], "builtin:chain").name == "sort"  # --task wins
    for model in (str(tmp_path), None):
        with pytest.raises(InputError, match="pass --task"):
            load_task_for(None, [], model)
    result, message = invoke("evaluate", tmp_path, "--out", tmp_path / "eval", "--quiet")
    assert result.exit_code == 2 and f"which task? pass --task (e.g. --task sort) for model {tmp_path}" in message
    result, message = invoke("reference", "--problems", "train", "--out", tmp_path / "ref")
    assert result.exit_code == 2 and "which task? pass --task" in message


def test_train_reaches_every_trainconfig_field(tmp_path, monkeypatch):
    """Fields the CLI did not expose before (temperature, budget_flops, ...) reach the run's config."""
    seen = {}
    monkeypatch.setattr(prefixrl.engine, "run_method", lambda *args, **kwargs: seen.update(cfg=args[5]) or tmp_path)
    rows = tmp_path / "train.jsonl"
    rows.write_text(json.dumps({"prompt": "x", "problem_id": "sort-351207", "prefix": "", "prefixed": False}) + "\n")
    result, _ = invoke("train", "builtin:sort", "--data", rows, "--out", tmp_path / "run", "--temperature", 0.9,
                       "--budget-flops", 1e12, "--no-progress-bar", "--luffy-gamma", 0.2)
    assert result.exit_code == 0, result.output
    cfg = seen["cfg"]
    assert (cfg.temperature, cfg.budget_flops, cfg.progress_bar, cfg.luffy_gamma) == (0.9, 1e12, False, 0.2)
