import json
import re

import pytest

from prefixrl.files import AppendLog, InputError, atomic_write_text, read_jsonl, write_jsonl


def test_append_log_drops_truncated_last_line(tmp_path):
    path = tmp_path / "log.jsonl"
    log = AppendLog(path)
    log.append({"i": 0})
    log.append({"i": 1})
    with open(path, "a") as f:
        f.write('{"i": 2, "tra')  # a kill in the middle of a write
    log = AppendLog(path)
    assert log.rows == [{"i": 0}, {"i": 1}]
    assert path.read_text() == '{"i": 0}\n{"i": 1}\n', "the file must be repaired on open"
    log.append({"i": 3})
    assert AppendLog(path).rows == [{"i": 0}, {"i": 1}, {"i": 3}]
    assert read_jsonl(path) == [{"i": 0}, {"i": 1}, {"i": 3}]


def test_append_log_whole_line_without_newline(tmp_path):
    path = tmp_path / "log.jsonl"
    path.write_text('{"i": 0}\n{"i": 1}')  # killed after the line, before its newline
    log = AppendLog(path)
    log.append({"i": 2})
    assert AppendLog(path).rows == [{"i": 0}, {"i": 1}, {"i": 2}]


def test_append_log_new_file(tmp_path):
    log = AppendLog(tmp_path / "sub" / "log.jsonl")
    assert log.rows == []
    log.append({"a": [1, 2]})
    assert json.loads((tmp_path / "sub" / "log.jsonl").read_text()) == {"a": [1, 2]}


def test_read_jsonl_names_file_and_line(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text('{"id": 1}\n\n{"id": 2\n{"id": 3}\n')
    with pytest.raises(InputError, match=re.escape(f"{path}, line 3: not a JSON object")):
        read_jsonl(path)
    path.write_text('{"id": 1}\n[1, 2]\n')
    with pytest.raises(InputError, match=re.escape(f"{path}, line 2:")):
        read_jsonl(path)


def test_read_jsonl_missing_column(tmp_path):
    path = tmp_path / "rows.jsonl"
    write_jsonl(path, [{"id": 1, "text": "a"}, {"id": 2}])
    assert read_jsonl(path, required=("id",)) == [{"id": 1, "text": "a"}, {"id": 2}]
    with pytest.raises(InputError, match=re.escape(f"{path}, line 2: missing ['text']")):
        read_jsonl(path, required=("id", "text"))
    with pytest.raises(InputError, match="no such file"):
        read_jsonl(tmp_path / "absent.jsonl")


def test_atomic_write_leaves_no_temp_files(tmp_path):
    target = tmp_path / "out" / "a.json"
    atomic_write_text(target, "one")
    atomic_write_text(target, "two")
    assert target.read_text() == "two"
    assert [p.name for p in target.parent.iterdir()] == ["a.json"]


def test_atomic_write_failure_keeps_old_file(tmp_path):
    target = tmp_path / "a.txt"
    atomic_write_text(target, "old")
    with pytest.raises(TypeError):
        atomic_write_text(target, None)  # fails inside the write
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_append_log_refuses_a_damaged_line_before_the_last(tmp_path):
    """Only a kill's torn last line is dropped; a damaged middle line is named, and no row after
    it is lost (the file is not rewritten)."""
    path = tmp_path / "log.jsonl"
    text = '{"i": 0}\n{"i": 1, "da\n{"i": 2}\n{"i": 3}\n'
    path.write_text(text)
    with pytest.raises(InputError, match=r"log\.jsonl, line 2: damaged .*2 lines follow"):
        AppendLog(path)
    assert path.read_text() == text


def test_atomic_write_gives_a_plain_files_mode(tmp_path):
    """A result is as readable as a log written with open() (umask applied), not mkstemp's 0600."""
    atomic_write_text(tmp_path / "result.json", "{}")
    with open(tmp_path / "log.jsonl", "w"):
        pass
    assert (tmp_path / "result.json").stat().st_mode & 0o777 == (tmp_path / "log.jsonl").stat().st_mode & 0o777
