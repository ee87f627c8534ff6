"""What every run folder records: config, versions, seed, FLOPs, wall time, git commit; and what
it holds (its identity), checked on every rerun under a lock."""

from __future__ import annotations

import fcntl
import hashlib
import json
import platform
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path

from prefixrl.files import InputError, atomic_write_text


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("prefixrl", "torch", "transformers", "trl", "accelerate", "datasets", "math-verify"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def git_commit() -> str | None:
    try:
        result = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                                cwd=Path(__file__).parent)
        return result.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def write_manifest(run_dir: str | Path, *, stage: str, config: dict, seed: int, flops: float,
                   wall_time_s: float, task=None, extra: dict | None = None) -> None:
    """`task`: a task whose verifier keeps counts (math: timeouts, errors) has them recorded.
    `wall_time_s` adds to the stage's earlier manifest, if any: a resumed stage reports all the time
    its finished calls took, not only the last call's (a call killed before its end wrote none)."""
    path = Path(run_dir) / "manifest.json"
    manifest = {"stage": stage, "config": config, "seed": seed, "flops": flops,
                "wall_time_s": round(_earlier_wall_time(path, stage) + wall_time_s, 2), "versions": versions(),
                "git_commit": git_commit(), **(extra or {})}
    if getattr(task, "verifier_stats", None) is not None:
        manifest["verifier"] = task.verifier_stats
    atomic_write_text(path, json.dumps(manifest, indent=2, default=str))


def _earlier_wall_time(path: Path, stage: str) -> float:
    try:
        earlier = json.loads(path.read_text())
    except (OSError, ValueError):
        return 0.0
    return float(earlier.get("wall_time_s", 0.0)) if earlier.get("stage") == stage else 0.0


# --- what a run folder holds: its identity, checked on every rerun, and one writer at a time ------

IDENTITY_FILE = "identity.json"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
SAMPLED = 16 * 2**20  # bytes hashed at each end of a weights file (a tiny model: all of it)


def file_fingerprint(path: str | Path) -> str:
    """sha256 of a file's size, first and last 16 MiB: the whole of a tiny model or a data file,
    and for an 8B model a check that reads 32 MiB, not 16 GB, yet changes with any trained layer
    at either end of the file."""
    path = Path(path)
    size = path.stat().st_size
    digest = hashlib.sha256(str(size).encode())
    with open(path, "rb") as f:
        digest.update(f.read(SAMPLED))
        if size > 2 * SAMPLED:
            f.seek(size - SAMPLED)
        digest.update(f.read())
    return digest.hexdigest()[:16]


def model_fingerprint(model: str | Path | None) -> str | None:
    """A model folder's weights files, hashed (a moved folder keeps its fingerprint); a hub name
    as it is; None when unknown (a sampler that is not backed by a folder)."""
    if model is None:
        return None
    path = Path(model)
    weights = sorted(p for p in path.glob("*") if p.suffix in WEIGHT_SUFFIXES) if path.is_dir() else []
    if not weights:
        return str(model)
    return hashlib.sha256("".join(f"{p.name}:{file_fingerprint(p)}" for p in weights).encode()).hexdigest()[:16]


def rows_fingerprint(rows: list | None) -> str | None:
    """The training rows (or traces) themselves, hashed: the same data from any file gives the same one."""
    if rows is None:
        return None
    return hashlib.sha256(json.dumps(rows, sort_keys=True, default=str).encode()).hexdigest()[:16]


def sampler_model(sampler) -> str | None:
    """The folder a sampler's model was loaded from (HF: the model's name_or_path)."""
    return getattr(sampler, "model_path", None) or getattr(getattr(sampler, "model", None), "name_or_path", None)


def check_identity(out_dir: str | Path, stage: str, identity: dict, write: bool = True) -> None:
    """A run folder resumes (or returns its result) only for the inputs it was started with: the
    first run records them in identity.json; a rerun with other ones is refused by name (otherwise
    the old run's result would be reported for the new inputs). `identity` holds what defines the
    stage's output: task and task args, the model's fingerprint, method, data, n, seed, sampling.
    Keys that start with "_" are notes for the message (the model's path), not compared: a moved
    folder keeps its identity."""
    path = Path(out_dir) / IDENTITY_FILE
    wanted = json.loads(json.dumps(identity, default=str))
    if path.exists():
        stored = json.loads(path.read_text())
        if stored.get("stage") != stage:
            raise InputError(f"{out_dir} holds the files of `{stored.get('stage')}`, not of `{stage}`: pass "
                             "another output folder (--out)")
        changed = differences(stored["identity"], wanted)
        if changed:
            was = stored["identity"].get("_model_path")
            note = f"; its model was {was}" if "model:" in changed and was else ""
            raise InputError(f"{out_dir} holds a {stage} run of other inputs ({changed}{note}): pass another "
                             "output folder (--out), or delete this one to start it over")
    elif write:
        atomic_write_text(path, json.dumps({"stage": stage, "identity": wanted}, indent=2))


def differences(stored: dict, wanted: dict, ignore: tuple[str, ...] = ()) -> str:
    """'key: old -> new, ...' for the keys both hold with other values ('' when none)."""
    changed = sorted(k for k in stored.keys() & wanted.keys()
                     if k not in ignore and not k.startswith("_") and stored[k] != wanted[k])
    return ", ".join(f"{k}: {stored[k]!r} -> {wanted[k]!r}" for k in changed)


@contextmanager
def run_folder(out_dir: str | Path, stage: str, identity: dict, lock: bool = True) -> Iterator[Path]:
    """Claim a run folder for one stage: create it (a folder that cannot be written fails here,
    before any sampling), take its lock (a second process on the same folder is refused instead
    of duplicating every round), and check or record its identity. The lock is the kernel's
    (flock): a killed process releases it. lock=False: the identity check only (the other
    processes of one multi-process run)."""
    out_dir = Path(out_dir)
    created = not out_dir.exists()
    out_dir.mkdir(parents=True, exist_ok=True)
    handle = open(out_dir / ".lock", "a") if lock else None
    try:
        if handle is not None:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise InputError(f"{out_dir}: another prefixrl process is writing this run folder; wait for it "
                                 "to finish, or pass another output folder (--out)") from None
        check_identity(out_dir, stage, identity, write=lock)
        yield out_dir
    except Exception:  # an error, not a kill (Ctrl-C): a killed run's folder is its resume point
        if created and handle is not None and {p.name for p in out_dir.iterdir()} <= {".lock", IDENTITY_FILE}:
            shutil.rmtree(out_dir)  # refused before anything was written: the fixed rerun finds no folder
        raise
    finally:
        if handle is not None:
            handle.close()


def sampling_identity(task, sampler, **more) -> dict:
    """What defines a sampling stage's output (screen, collect, evaluate): the task and its args, the
    model's weights and the sampling settings (not the batch size: it changes speed, not the
    distribution), and the stage's own `more` (n, seed)."""
    sampling = {k: v for k, v in vars(sampler.params).items() if k != "batch_size"}
    return {"task": task.name, "task_args": dict(getattr(task, "task_args", None) or {}),
            "model": model_fingerprint(sampler_model(sampler)), "_model_path": sampler_model(sampler),
            "sampling": sampling, **more}
