"""Atomic writes: the final file appears complete or not at all."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from seq2seq.utils.io import atomic_path, atomic_write_bytes, atomic_write_text


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def test_write_bytes_creates_parents_and_overwrites(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "data.bin"
    assert atomic_write_bytes(target, b"\x00\x01first") == target
    assert target.read_bytes() == b"\x00\x01first"
    atomic_write_bytes(target, b"second")
    assert target.read_bytes() == b"second"
    assert _leftovers(target.parent) == []


def test_write_text_is_utf8_and_keeps_newlines(tmp_path: Path) -> None:
    target = tmp_path / "vocab.txt"
    atomic_write_text(target, "Grüße\r\nzwei\n")
    assert target.read_bytes() == "Grüße\r\nzwei\n".encode()
    assert len(target.read_bytes()) == 14


def test_atomic_path_replaces_on_success(tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    target.write_text("old")
    with atomic_path(target) as tmp:
        assert tmp.parent == tmp_path
        assert tmp.exists() and tmp != target
        tmp.write_text("new")
        assert target.read_text() == "old"  # not visible before the block ends
    assert target.read_text() == "new"
    assert _leftovers(tmp_path) == []


def test_atomic_path_removes_temp_and_keeps_old_file_on_error(tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError, match="boom"), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("boom")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]


def test_atomic_path_error_without_existing_file_leaves_nothing(tmp_path: Path) -> None:
    target = tmp_path / "new.txt"
    with pytest.raises(KeyboardInterrupt), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_permissions_follow_umask(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        target = atomic_write_text(tmp_path / "perm.txt", "x")
    finally:
        os.umask(old)
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
