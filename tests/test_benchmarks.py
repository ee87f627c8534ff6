"""Benchmark scripts in their --smoke mode: a rename in the library cannot break them silently."""

import runpy
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def run_script(name: str, *argv: str, monkeypatch) -> None:
    monkeypatch.setattr(sys, "argv", [name, *argv])
    runpy.run_path(str(BENCHMARKS / name), run_name="__main__")


def test_gpu_check_smoke_passes_its_own_checks_on_cpu(tmp_path, monkeypatch):
    run_script("gpu_check.py", "--smoke", "--out", str(tmp_path), monkeypatch=monkeypatch)  # exits 1 on a failed check
    table = (tmp_path / "gpu_check.md").read_text()
    assert "| train fp32 | True |" in table and "| sampling float32 | True |" in table


def test_gpu_check_refuses_to_run_without_a_gpu_unless_smoke(tmp_path, monkeypatch):
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    with pytest.raises(SystemExit, match="no CUDA device"):
        run_script("gpu_check.py", "--out", str(tmp_path), monkeypatch=monkeypatch)
