"""Trackers from the CLI (`--report-to`), offline, and metric names the way TRL / verl users read
them (`prefixed/reward`, `eval/heldout/pass@1`, `flops/total`), older metrics.jsonl files included."""

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from prefixrl.analysis import read_metrics
from prefixrl.train import TrainConfig

SRC = Path(__file__).parents[1] / "src"


def test_an_older_metrics_file_reads_with_todays_names(tmp_path):
    from prefixrl.report import load_runs

    run = tmp_path / "run"
    run.mkdir()
    old = {"step": 1, "reward_prefixed": 0.5, "zero_advantage_unprefixed": 1.0, "grad_norm_prefixed": 2.0,
           "entropy_unprefixed": 0.3, "flops/total": 7.0, "loss": 0.1}
    (run / "metrics.jsonl").write_text(json.dumps(old) + "\n")
    (run / "eval.jsonl").write_text(json.dumps({"step": 0, "flops": 0.0, "eval/heldout/pass@1": 0.0}) + "\n")
    expected = {"step": 1, "prefixed/reward": 0.5, "unprefixed/zero_advantage": 1.0, "prefixed/grad_norm": 2.0,
                "unprefixed/entropy": 0.3, "flops/total": 7.0, "loss": 0.1}
    assert read_metrics(run / "metrics.jsonl") == [expected]
    assert load_runs({"prefixrl": [run]})["prefixrl"][0]["metrics"] == [expected]


def test_report_to_names_an_unknown_or_missing_tracker(monkeypatch):
    import prefixrl.config as config

    with pytest.raises(ValueError, match=r"unknown tracker \['mlflow'\]; use none or trackio, wandb, tensorboard"):
        TrainConfig(report_to="trackio,mlflow")
    monkeypatch.setattr(config.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ValueError, match="report_to wandb: it is not installed; pip install wandb"):
        TrainConfig(report_to="wandb")
    assert TrainConfig().report_to == "none"


def test_train_logs_to_trackio_offline(tmp_path):
    """`prefixrl train --report-to trackio`, with no network: trackio's local SQLite holds the step
    metrics under TRL's train/ prefix and the evaluations under eval/, as metrics.jsonl and
    eval.jsonl hold them."""
    pytest.importorskip("trackio")
    from conftest import solve_sort
    from prefixrl.files import read_jsonl, write_jsonl
    from prefixrl.models import char_tokenizer, tiny_model
    from prefixrl.prefixes import prefixed_problems
    from prefixrl.tasks import load_task
    from test_train import SMALL

    problems = {p.id: p for p in load_task("sort").problems("train")[:2]}
    traces = [{"problem_id": pid, "completion": solve_sort(p.prompt)} for pid, p in problems.items()]
    write_jsonl(tmp_path / "train.jsonl", prefixed_problems(char_tokenizer(), traces, problems))
    tok = char_tokenizer()
    tiny_model(tok, SMALL).save_pretrained(tmp_path / "tiny")
    tok.save_pretrained(tmp_path / "tiny")
    out = tmp_path / "run"
    env = {**os.environ, "TRACKIO_DIR": str(tmp_path / "trackio"), "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1",
           "HF_HUB_OFFLINE": "1", "HTTPS_PROXY": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9"}
    cmd = [sys.executable, "-m", "prefixrl.cli", "train", str(tmp_path / "tiny"), "--task", "sort", "--data",
           str(tmp_path / "train.jsonl"), "--out", str(out), "--steps", "2", "--problems-per-step", "2",
           "--num-generations", "2", "--eval-every", "2", "--eval-n", "2", "--max-completion-length", "48",
           "--report-to", "trackio"]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    with sqlite3.connect(tmp_path / "trackio" / "prefixrl.db") as db:
        logged = [(step, json.loads(metrics)) for step, metrics in db.execute("select step, metrics from metrics")]
    by_step = {}  # trackio counts its own steps: the Trainer's step is train/global_step
    for _, metrics in logged:
        by_step.setdefault(metrics.get("train/global_step"), {}).update(metrics)
    steps = [m for m in read_jsonl(out / "metrics.jsonl") if "flops/total" in m]
    evals = read_jsonl(out / "eval.jsonl")
    assert [row["step"] for row in steps] == [1, 2]
    for row in steps:  # a step's batch of 2 problems may hold no unprefixed (or no prefixed) group
        keys = [k for k in row if k.split("/")[0] in ("prefixed", "unprefixed", "flops")]
        assert "flops/total" in keys and any(k.endswith("/reward") for k in keys)
        for key in keys:
            assert by_step[row["step"]][f"train/{key}"] == pytest.approx(row[key]), key
    for row in evals:
        assert by_step[row["step"]]["eval/heldout/pass@1"] == row["eval/heldout/pass@1"]
        assert by_step[row["step"]]["eval/train/pass@1"] == row["eval/train/pass@1"]
    assert [e["step"] for e in evals] == [0, 2]
    assert not any(k.startswith("eval") for m in read_jsonl(out / "metrics.jsonl") for k in m)  # only eval.jsonl
