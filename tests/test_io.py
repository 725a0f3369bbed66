"""Atomic writes keep the old file on failure and give the new one the mode a plain open() would."""

import stat

import pytest

from arm import io


def test_atomic_write_gives_the_mode_open_would(tmp_path):
    path = io.atomic_write_json(tmp_path / "card.json", {"a": 1})
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~io._UMASK  # not mkstemp's 0600


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = io.atomic_write_bytes(tmp_path / "f.bin", b"old")
    with pytest.raises(TypeError):
        io.atomic_write_bytes(path, object())  # not bytes: the write fails after the temporary exists
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"]
