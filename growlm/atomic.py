"""Write so that a reader never sees a partial file or folder: build under a hidden temporary name, fsync, rename.

The one home for "write to a temporary name, then rename" (growth outputs, exports, tokenizers, cards, JSON
records, plots). Everything is created with normal permissions under the process umask (`tempfile.mkdtemp`
alone would leave a folder `drwx------` that nobody else on a shared cluster can read).
"""

from __future__ import annotations

import contextlib
import glob
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


def current_umask() -> int:
    """The process umask (read by setting and restoring it; there is no read-only call)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def fsync_path(path: Path) -> None:
    """Flush a file's or a folder's entry table to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def finish_tree(root: Path, *, durable: bool) -> None:
    """Give every file and folder under `root` the umask's permissions (some writers, e.g. safetensors, create
    0600 files) and, when `durable`, fsync them (children before parents)."""
    mask = current_umask()
    for folder, _, files in os.walk(root, topdown=False):
        for name in files:
            os.chmod(Path(folder) / name, 0o666 & ~mask)
            if durable:
                fsync_path(Path(folder) / name)
        os.chmod(folder, 0o777 & ~mask)
        if durable:
            fsync_path(Path(folder))


def write_bytes(path: str | Path, data: bytes, *, durable: bool = False) -> Path:
    """Replace `path` with `data` atomically (fsync of the file and its folder when `durable`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    if durable:
        fsync_path(path.parent)
    return path


def write_text(path: str | Path, text: str, *, durable: bool = False) -> Path:
    """`write_bytes` for UTF-8 text."""
    return write_bytes(path, text.encode("utf-8"), durable=durable)


def write_json(path: str | Path, obj: Any, *, durable: bool = False, indent: int | None = 2,
               sort_keys: bool = False) -> Path:
    """`write_text` for a JSON document (UTF-8, trailing newline)."""
    text = json.dumps(obj, indent=indent, sort_keys=sort_keys, ensure_ascii=False) + "\n"
    return write_text(path, text, durable=durable)


def make_temp_dir(parent: Path, prefix: str) -> Path:
    """A fresh hidden folder in `parent` with the permissions a plain `mkdir` would give."""
    parent.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    os.chmod(path, 0o777 & ~current_umask())
    return path


def check_apart(out: str | Path, source: str | Path, *, out_flag: str, source_flag: str) -> None:
    """Refuse an output folder that is, contains or is inside a source folder: replacing it would delete the
    source (symlinks resolved)."""
    o, s = Path(out).resolve(), Path(source).resolve()
    if o == s or o in s.parents or s in o.parents:
        relation = "is" if o == s else ("contains" if o in s.parents else "is inside")
        raise ValueError(f"{out_flag}={out} {relation} {source_flag}={source}; writing there could delete the "
                         f"source: choose an output folder outside it")


def recover(out: Path) -> None:
    """Repair what a killed writer of `out` left behind: if `out` vanished between the two renames of
    `replace_dir`, its old copy (`.NAME.old-*`) is renamed back; then stale `.NAME.old-*` / `.NAME.partial-*`
    folders are removed. Assumes one writer per folder at a time (as every growlm command does)."""
    if not out.parent.is_dir():
        return
    olds = sorted(out.parent.glob(f".{glob.escape(out.name)}.old-*"), key=lambda p: p.stat().st_mtime)
    if olds and not out.exists():
        olds.pop().rename(out)
        logger.warning("restored %s from the copy a killed run left mid-swap", out)
    for stale in [*olds, *out.parent.glob(f".{glob.escape(out.name)}.partial-*")]:
        shutil.rmtree(stale, ignore_errors=True)


def replace_dir(new: Path, out: Path, *, durable: bool = True) -> None:
    """Rename the complete folder `new` to `out`; an existing `out` is removed only after the rename succeeded
    (a kill between the two renames is repaired by `recover`, which every `atomic_dir` runs first)."""
    finish_tree(new, durable=durable)
    if not out.exists():
        new.rename(out)
    else:
        old = make_temp_dir(out.parent, f".{out.name}.old-")
        old.rmdir()
        out.rename(old)
        try:
            new.rename(out)
        except OSError:
            old.rename(out)
            raise
        shutil.rmtree(old, ignore_errors=True)
    if durable:
        fsync_path(out.parent)


@contextlib.contextmanager
def atomic_dir(out: str | Path, *, durable: bool = True) -> Iterator[Path]:
    """Yield an empty folder named like `out` (inside a hidden `.NAME.partial-*` sibling) to fill; on success it
    replaces `out`, on error it is removed and `out` is untouched. The folder has `out`'s name while it is being
    written, so files that record their folder's name (model cards) are right."""
    out = Path(out)
    recover(out)
    staging = make_temp_dir(out.parent, f".{out.name}.partial-")
    work = staging / out.name
    work.mkdir()
    try:
        yield work
        replace_dir(work, out, durable=durable)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
