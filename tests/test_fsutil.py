"""Writes are atomic: a failure mid-write leaves the previous file or folder whole."""

from __future__ import annotations

import pytest

from sksbooth.fsutil import atomic_dir, atomic_file, atomic_write_text


def test_a_failed_folder_write_keeps_the_old_folder_and_leaves_no_temp(tmp_path):
    target = tmp_path / "model"
    with atomic_dir(target) as tmp:
        (tmp / "weights.bin").write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_dir(target) as tmp:
            (tmp / "weights.bin").write_text("half")
            raise RuntimeError("crash mid-save")
    assert (target / "weights.bin").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_a_successful_folder_write_replaces_the_old_one_whole(tmp_path):
    target = tmp_path / "model"
    with atomic_dir(target) as tmp:
        (tmp / "a").write_text("1")
    with atomic_dir(target) as tmp:
        (tmp / "b").write_text("2")
    assert sorted(p.name for p in target.iterdir()) == ["b"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_a_failed_file_write_keeps_the_old_file(tmp_path):
    target = atomic_write_text(tmp_path / "x.json", "old")
    with pytest.raises(ValueError):
        with atomic_file(target) as tmp:
            tmp.write_text("half")
            raise ValueError
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["x.json"]
