"""semirec.core.durable: atomic, fsynced writes leave the old or the new content, no stray
temporary files, and refuse what os.replace refuses."""

from __future__ import annotations

from pathlib import Path

import pytest

from semirec.core import durable


def test_write_atomic_replaces_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "aliases.json"
    durable.write_atomic(target, '{"serving": 1}\n')
    durable.write_atomic(target, b'{"serving": 2}\n')
    assert target.read_text() == '{"serving": 2}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["aliases.json"]


def test_write_atomic_failure_keeps_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "state.json"
    target.write_text("old")
    (tmp_path / "sub").mkdir()
    with pytest.raises(IsADirectoryError):  # os.replace of a file over a folder
        durable.write_atomic(tmp_path / "sub", "new")
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == \
        ["state.json", "sub"]


def test_replace_moves_a_whole_tree(tmp_path: Path) -> None:
    tmp = tmp_path / ".tmp-1"
    (tmp / "checkpoint").mkdir(parents=True)
    (tmp / "checkpoint" / "model.safetensors").write_bytes(b"w")
    (tmp / "meta.json").write_text("{}")
    (tmp_path / "other").mkdir()
    final = durable.replace(tmp, tmp_path / "other" / "1")  # another directory: both flushed
    assert not tmp.exists() and (final / "checkpoint" / "model.safetensors").read_bytes() == b"w"
    durable.fsync_tree(final)  # idempotent on a durable tree
    durable.fsync_tree(final / "meta.json")  # a plain file alone
    with pytest.raises(FileNotFoundError):
        durable.replace(tmp_path / "missing", tmp_path / "x")
