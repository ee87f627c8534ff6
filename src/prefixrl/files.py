"""Files every stage shares: atomic writes, JSONL with errors that name file and line, append-only
logs that survive a kill, and the progress bar long stages show."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


_UMASK = os.umask(0o022)  # read once, at import (os.umask can only be read by setting it)
os.umask(_UMASK)


class InputError(ValueError):
    """Bad input from a user's file: the message names the file, the item and the fix."""


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write to a temporary file in the same folder, then rename: never a half-written file."""
    _atomic_write(path, text, "w")


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    _atomic_write(path, data, "wb")


def _atomic_write(path: str | Path, data: str | bytes, mode: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode) as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # a plain file's mode (mkstemp's 0600 would hide results from a team)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_jsonl(path: str | Path, rows: list[dict]) -> None:
    atomic_write_text(path, "".join(json.dumps(row) + "\n" for row in rows))


def iter_jsonl(path: str | Path) -> Iterator[tuple[int, dict | InputError]]:
    """(line number, row) for each non-blank line; a malformed line yields an InputError instead,
    so a caller can report it and go on with the rest of the file."""
    with open(path, "rb") as f:  # bytes: a line that is not UTF-8 is that line's error, not the file's
        for lineno, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                yield lineno, InputError(f"{path}, line {lineno}: not UTF-8 text (byte {raw[err.start]:#04x} at "
                                         f"column {err.start + 1}); re-encode or delete that line")
                continue
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                if not isinstance(row, dict):
                    raise ValueError("a line must hold one JSON object")
                yield lineno, row
            except ValueError as err:
                yield lineno, InputError(f"{path}, line {lineno}: not a JSON object ({err}); "
                                         "fix or delete that line")


def iter_records(path: str | Path) -> Iterator[tuple[int, dict | InputError]]:
    """(line or row number, record or InputError) from JSONL, Parquet or a `datasets` folder."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file or folder")
    if path.is_dir() or path.suffix == ".parquet":
        import datasets

        ds = datasets.load_from_disk(str(path)) if path.is_dir() else datasets.Dataset.from_parquet(str(path))
        if isinstance(ds, datasets.DatasetDict):
            raise InputError(f"{path}: holds several splits {list(ds)}; "
                             f"give one split's folder (e.g. {path / next(iter(ds))})")
        yield from enumerate(ds, 1)
    else:
        yield from iter_jsonl(path)


def read_jsonl(path: str | Path, required: tuple[str, ...] = ()) -> list[dict]:
    """All rows of a JSONL file; the first bad line raises an error naming file, line and fix."""
    if not Path(path).exists():
        raise InputError(f"{path}: no such file")
    rows = []
    for lineno, row in iter_jsonl(path):
        if isinstance(row, InputError):
            raise row
        missing = [key for key in required if key not in row]
        if missing:
            raise InputError(f"{path}, line {lineno}: missing {missing}; every row needs {list(required)}")
        rows.append(row)
    return rows


class AppendLog:
    """An append-only JSONL log that a killed process can resume from.

    Each `append` is one line, flushed and fsynced. A kill can leave at most the last line
    truncated; opening the log drops such a line (rewriting the file atomically), so every row
    read back was written whole. A damaged line before the last is no kill's doing: it is
    refused by file and line, and the file is left as it is (dropping it and the lines after it
    would lose rows silently).
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.rows: list[dict] = []
        if self.path.exists():
            text = self.path.read_text()
            lines = text.splitlines()
            for lineno, line in enumerate(lines, 1):
                try:
                    self.rows.append(json.loads(line))
                except ValueError:
                    if lineno < len(lines):
                        raise InputError(f"{self.path}, line {lineno}: damaged (not JSON), and {len(lines) - lineno} "
                                         "lines follow it: repair or delete that line, then rerun") from None
            if len(self.rows) < len(lines) or (text and not text.endswith("\n")):
                write_jsonl(self.path, self.rows)  # a truncated last write: everything before it is whole

    def keep(self, predicate) -> None:
        """Keep only the rows for which predicate(row) is true (the file is rewritten atomically)."""
        kept = [row for row in self.rows if predicate(row)]
        if len(kept) < len(self.rows):
            self.rows = kept
            write_jsonl(self.path, kept)

    def append(self, row: dict) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.rows.append(row)


def progress_bar(disable: bool = False) -> Progress:
    """A bar with count, rate, elapsed time and ETA (rich)."""
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TextColumn("ETA"),
                    TimeRemainingColumn(), disable=disable)
