"""durable: atomic file replacement — a failed or interrupted write keeps the old file, fsyncs in order."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import durable


def test_atomic_write_bytes_creates_and_replaces_leaving_no_temp_files(tmp_path):
    path = tmp_path / "f.bin"
    durable.atomic_write_bytes(path, b"one")
    durable.atomic_write_bytes(path, b"two")
    assert path.read_bytes() == b"two"
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"]


def test_atomic_write_failing_writer_keeps_old_file_and_removes_temp(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(b"old")

    def broken(tmp: str) -> None:
        Path(tmp).write_bytes(b"half-writ")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        durable.atomic_write(path, broken)
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"]


def test_atomic_write_interrupted_before_rename_keeps_old_file(tmp_path, monkeypatch):
    path = tmp_path / "f.bin"
    path.write_bytes(b"old")

    def interrupted(src, dst):
        raise KeyboardInterrupt

    monkeypatch.setattr(durable.os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        durable.atomic_write_bytes(path, b"new")
    monkeypatch.undo()
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"]


def test_atomic_write_fsyncs_file_before_rename_and_directory_after(tmp_path, monkeypatch):
    events: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append("fsync-dir" if os.path.isdir(f"/proc/self/fd/{fd}") else "fsync-file")
        real_fsync(fd)

    def replace(src, dst):
        events.append("rename")
        real_replace(src, dst)

    monkeypatch.setattr(durable.os, "fsync", fsync)
    monkeypatch.setattr(durable.os, "replace", replace)
    durable.atomic_write_bytes(tmp_path / "f.bin", b"x")
    assert events == ["fsync-file", "rename", "fsync-dir"]


def test_fsync_dir_tolerates_missing_directory(tmp_path):
    durable.fsync_dir(tmp_path / "does-not-exist")  # no exception
    durable.fsync_dir(tmp_path)


def test_atomic_write_creates_missing_folders_with_readable_permissions(tmp_path):
    path = tmp_path / "a" / "b" / "f.json"
    durable.atomic_write_bytes(path, b"{}")
    assert path.read_bytes() == b"{}" and path.stat().st_mode & 0o777 == 0o644
