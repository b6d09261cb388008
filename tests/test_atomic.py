"""Outputs appear complete or not at all, with the permissions the umask gives (readable on a shared cluster)."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from growlm.atomic import atomic_dir, recover, write_json
from growlm.growth.grow import grow_checkpoint
from growlm.growth.types import GrowthOptions
from tests.conftest import REPO_ROOT, save_tiny_llama


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


@pytest.mark.parametrize("relation", ["same", "ancestor", "inside"])
def test_out_overlapping_the_source_is_refused_and_nothing_is_touched(tmp_path, relation):
    src = save_tiny_llama(tmp_path / "models" / "src", with_tokenizer=True)
    (tmp_path / "models" / "notes.txt").write_text("keep me")
    out = {"same": src, "ancestor": tmp_path / "models", "inside": src / "grown"}[relation]
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    with pytest.raises(ValueError, match="could delete the source"):
        grow_checkpoint(src, out, GrowthOptions(g=2), overwrite=True)
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


KILL_BETWEEN_RENAMES = """
import os, signal, sys
from pathlib import Path
from growlm.atomic import atomic_dir
renames = []
original = Path.rename
def rename(self, target):
    result = original(self, target)
    renames.append(target)
    if len(renames) == 1:  # `out` moved aside, the new folder not yet in place
        os.kill(os.getpid(), signal.SIGKILL)
    return result
Path.rename = rename
with atomic_dir(Path(sys.argv[1])) as work:
    (work / "v").write_text("new")
"""


def test_overwrite_swap_killed_between_its_renames_is_repaired(tmp_path):
    out = tmp_path / "out"
    with atomic_dir(out) as work:
        (work / "v").write_text("old")
    killed = subprocess.run([sys.executable, "-c", KILL_BETWEEN_RENAMES, str(out)], cwd=REPO_ROOT)
    assert killed.returncode == -signal.SIGKILL
    assert not out.exists() and len(list(tmp_path.glob(".out.old-*"))) == 1  # the state a kill leaves
    recover(out)  # what the next write to `out` (or the same command re-run) does first
    assert (out / "v").read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    with atomic_dir(out) as work:  # and the command then completes normally
        (work / "v").write_text("new")
    assert (out / "v").read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_the_same_grow_command_repairs_a_swap_killed_midway(tmp_path):
    src = save_tiny_llama(tmp_path / "src", with_tokenizer=True)
    out = grow_checkpoint(src, tmp_path / "grown", GrowthOptions(g=2))
    out.rename(tmp_path / ".grown.old-x1")  # the state a kill between the renames leaves
    (tmp_path / ".grown.partial-x2" / "grown").mkdir(parents=True)
    with pytest.raises(ValueError, match="already exists; pass --overwrite"):
        grow_checkpoint(src, out, GrowthOptions(g=2))  # the old model is back, so it is protected again
    assert (out / "config.json").is_file() and sorted(p.name for p in tmp_path.iterdir()) == ["grown", "src"]
