"""Atomic writes: the final file appears complete or not at all, and a failed write names the file and
its cause. Operating-system errors as one-line user errors. Text lines read as a stream."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import pytest

from seq2seq.config import user_errors_exit
from seq2seq.errors import ConfigError, DataError, user_error_message
from seq2seq.utils.io import (
    TextLines,
    atomic_open_binary,
    atomic_open_text,
    atomic_path,
    atomic_write_bytes,
    atomic_write_text,
    count_lines,
    paired_lines,
)


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


def test_atomic_open_text_appears_only_when_complete(tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    target.write_text("old\n")
    with pytest.raises(RuntimeError), atomic_open_text(target) as f:
        f.write("first chunk\n")
        f.flush()
        assert target.read_text() == "old\n" and len(_leftovers(tmp_path)) == 1
        raise RuntimeError("failed part-way")
    assert target.read_text() == "old\n" and _leftovers(tmp_path) == []
    with atomic_open_text(target) as f:
        f.write("Grüße\nzwei\n")
    assert target.read_bytes() == "Grüße\nzwei\n".encode() and _leftovers(tmp_path) == []


@pytest.mark.parametrize("data, lines", [
    (b"", []),
    (b"\n", [""]),
    (b"a\r\nb\x0bc\xe2\x80\xa8d\n\nlast", ["a", "b\x0bc\u2028d", "", "last"]),
    (b"one\ntwo\n", ["one", "two"]),
    (b"one\r", ["one"]),
])
def test_text_lines_split_on_newlines_only_and_count_them(tmp_path: Path, data: bytes, lines: list[str]) -> None:
    path = tmp_path / "in.txt"
    path.write_bytes(data)
    reader = TextLines(path)
    assert list(reader) == lines and reader.count == len(lines) == count_lines(path)
    assert count_lines(path, block=2) == len(lines)  # line ends across blocks


def test_text_lines_name_the_line_that_is_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "in.txt"
    path.write_bytes(b"ok\nGr\xfc\xdfe\n")
    reader = iter(TextLines(path))
    assert next(reader) == "ok"
    with pytest.raises(DataError, match=r"in.txt line 2: not UTF-8 \(invalid start byte\)"):
        next(reader)
    with pytest.raises(DataError, match="cannot read .*missing.txt"):
        TextLines(tmp_path / "missing.txt")


def test_paired_lines_name_both_files_and_their_counts(tmp_path: Path) -> None:
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("1\n2\n3\n")
    b.write_text("x\ny\nz\n")
    assert list(paired_lines(TextLines(a), TextLines(b))) == [("1", "x"), ("2", "y"), ("3", "z")]
    for longer, shorter in ((a, b), (b, a)):
        longer.write_text("1\n2\n3\n4\n5\n")
        shorter.write_text("x\ny\n")
        pairs = paired_lines(TextLines(a), TextLines(b))
        counts = {a: 5 if longer == a else 2, b: 5 if longer == b else 2}
        with pytest.raises(DataError, match=f"a.txt has {counts[a]} lines but .*b.txt has {counts[b]};"):
            list(pairs)


class SerializerError(RuntimeError):
    """What torch.save raises when a write fails ("unexpected pos ..."), without the errno."""


def test_atomic_open_binary_raises_the_os_error_a_serializer_hid_and_keeps_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "model.ckpt"
    atomic_write_bytes(target, b"old")

    class FullDisk:
        def __init__(self, file):
            self.file = file

        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

    def serializer(f) -> None:  # a library that swallows the OSError of f.write and raises its own
        try:
            f.write(b"new checkpoint bytes")
        except OSError:
            raise SerializerError("[enforce fail at inline_container.cc] unexpected pos 64 vs 0") from None

    with pytest.raises(OSError) as failed, atomic_open_binary(target) as f:
        f.file = FullDisk(f.file)
        serializer(f)
    assert failed.value.errno == errno.ENOSPC and failed.value.filename == str(target)
    assert target.read_bytes() == b"old" and _leftovers(tmp_path) == []
    with pytest.raises(SerializerError), atomic_open_binary(target) as f:  # not a write failure: as raised
        raise SerializerError("bad object")
    with atomic_open_binary(target) as f:
        f.write(b"new")
    assert target.read_bytes() == b"new"


def test_os_errors_name_the_path_and_what_to_do(tmp_path: Path) -> None:
    def error_of(action) -> OSError:
        with pytest.raises(OSError) as raised:
            action()
        return raised.value

    (tmp_path / "file").write_text("x")
    real = {
        "no such file or folder": error_of(lambda: open(tmp_path / "missing" / "out.txt", "w")),
        "is a file, not a folder": error_of(lambda: open(tmp_path / "file" / "out.txt", "w")),
        "is a folder": error_of(lambda: open(tmp_path, "w")),
    }
    made = {
        "free space": OSError(errno.ENOSPC, "No space left on device", "/runs/x/checkpoints/last.ckpt"),
        "ulimit -f": OSError(errno.EFBIG, "File too large", "/runs/x/checkpoints/last.ckpt"),
        "read-only": OSError(errno.EROFS, "Read-only file system", "/mnt/ro/out.txt"),
        "permissions": OSError(errno.EACCES, "Permission denied", "/root/out.txt"),
    }
    for advice, err in {**real, **made}.items():
        message = user_error_message(err)
        assert message is not None and message.startswith(f"{err.filename}: {err.strerror}: ") and advice in message
        assert "\n" not in message
    assert user_error_message(ConfigError("model.d_model=3: use an even number")) == "model.d_model=3: use an even number"
    wrapped = RuntimeError("Error instantiating 'x'")
    wrapped.__cause__ = made["free space"]
    assert "No space left on device" in user_error_message(wrapped)  # through Hydra's instantiate
    assert user_error_message(OSError(errno.ECONNRESET, "Connection reset by peer")) is None  # not the user's to fix
    assert user_error_message(ValueError("a bug")) is None


def test_user_errors_exit_prints_one_line_for_an_os_error(capsys) -> None:
    @user_errors_exit
    def command():
        raise OSError(errno.ENOSPC, "No space left on device", "/runs/x/metrics.json")

    with pytest.raises(SystemExit) as exit_info:
        command()
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == ("error: /runs/x/metrics.json: No space left on device: free space on that "
                                       "disk, or write somewhere else (e.g. hydra.run.dir=..., output_dir=...)\n")
