"""Outputs appear complete or not at all, with the permissions the umask gives (readable on a shared cluster)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from growlm.atomic import atomic_dir, write_json
from growlm.growth.grow import grow_checkpoint
from growlm.growth.types import GrowthOptions
from tests.conftest import save_tiny_llama


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def _modes(root: Path) -> set[tuple[str, int]]:
    """(kind, permission bits) of `root` and everything under it."""
    paths = [root, *root.rglob("*")]
    return {("dir" if p.is_dir() else "file", stat.S_IMODE(p.stat().st_mode)) for p in paths}


def test_grown_folder_has_normal_permissions(tmp_path, umask_022):
    src = save_tiny_llama(tmp_path / "src", with_tokenizer=True)
    out = grow_checkpoint(src, tmp_path / "grown", GrowthOptions(g=2))
    assert _modes(out) == {("dir", 0o755), ("file", 0o644)}
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging folder left


def test_files_follow_a_stricter_umask(tmp_path):
    old = os.umask(0o077)
    try:
        with atomic_dir(tmp_path / "out") as work:
            write_json(work / "a.json", {"x": 1})
        write_json(tmp_path / "b.json", [1])
    finally:
        os.umask(old)
    assert _modes(tmp_path / "out") == {("dir", 0o700), ("file", 0o600)}
    assert stat.S_IMODE((tmp_path / "b.json").stat().st_mode) == 0o600


def test_failed_write_leaves_the_old_folder(tmp_path):
    out = tmp_path / "out"
    with atomic_dir(out) as work:
        (work / "v").write_text("1")
    with pytest.raises(RuntimeError), atomic_dir(out) as work:
        (work / "v").write_text("2")
        raise RuntimeError("killed mid-write")
    assert (out / "v").read_text() == "1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    with atomic_dir(out) as work:
        assert work.name == "out"  # files that record their folder's name see the final one
        (work / "v").write_text("3")
    assert (out / "v").read_text() == "3" and sorted(p.name for p in tmp_path.iterdir()) == ["out"]
