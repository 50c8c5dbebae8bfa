"""Atomic writes: readers see the old output or the new one, never a partial or missing one."""

from __future__ import annotations

import os
import stat
import sys

import pytest

from megatron_rlpt.utils.io import _exchange, atomic_directory, atomic_write_text


def test_replacing_a_directory_leaves_only_the_new_one(tmp_path):
    out = tmp_path / "out"
    with atomic_directory(out) as tmp:
        (tmp / "a.txt").write_text("one")
        assert not out.exists()  # nothing under the final name until the block ends
    with atomic_directory(out) as tmp:
        (tmp / "a.txt").write_text("two")
        assert (out / "a.txt").read_text() == "one"
    assert (out / "a.txt").read_text() == "two"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temporary or old copies left


def test_a_failed_block_keeps_the_old_directory(tmp_path):
    out = tmp_path / "out"
    with atomic_directory(out) as tmp:
        (tmp / "a.txt").write_text("one")
    with pytest.raises(RuntimeError), atomic_directory(out) as tmp:
        (tmp / "a.txt").write_text("half")
        raise RuntimeError("killed")
    assert (out / "a.txt").read_text() == "one"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


@pytest.mark.skipif(sys.platform != "linux", reason="renameat2 is Linux's")
def test_exchange_swaps_two_directories_in_one_step(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (a / "from_a").write_text("")
    assert _exchange(a, b)
    assert [p.name for p in b.iterdir()] == ["from_a"] and not list(a.iterdir())


def test_atomic_text_has_regular_permissions(tmp_path):
    path = tmp_path / "f.txt"
    atomic_write_text(path, "x")
    assert path.read_text() == "x"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o666 & ~_umask()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
