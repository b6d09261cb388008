"""Atomic, resumable checkpoints: `DIR/checkpoints/step-00000100/`, each with a completion marker.

A save writes everything into `step-N.tmp/` (accelerate's `save_state`: model, optimizer, scheduler, per-rank RNG;
plus per-rank data-stream state, the train state and the run's config as `run_config.json`, so the folder is not
taken for a Hugging Face model folder), fsyncs a `COMPLETE` marker, renames the folder to `step-N`, and only then
prunes older checkpoints. There is no `latest` pointer: resume takes the newest folder holding the marker, so a
crash at any moment leaves the previous checkpoint resumable.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
from pathlib import Path

from growlm.atomic import finish_tree, fsync_path, write_json

COMPLETE_MARKER = "COMPLETE"
TRAIN_STATE = "train_state.json"
RUN_CONFIG = "run_config.json"
_STEP_DIR = re.compile(r"^step-(\d{8})$")
# Test hook: "crash@N" kills the process while saving step N, after `step-N.tmp` is written and before it is marked
# complete (tests use it to prove that a crash mid-save leaves the previous checkpoint resumable).
SAVE_HOOK_ENV = "GROWLM_TEST_SAVE_HOOK"


def step_dir_name(step: int) -> str:
    return f"step-{step:08d}"


def complete_checkpoints(root: str | Path) -> list[Path]:
    """Complete checkpoint folders under `root`, oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if _STEP_DIR.match(p.name) and (p / COMPLETE_MARKER).is_file()]
    return sorted(found, key=lambda p: int(_STEP_DIR.match(p.name).group(1)))


def find_resume_dir(root: str | Path, resume: str | None) -> Path | None:
    """The folder to resume from: `auto` -> newest complete one under `root` (or None), a path -> that folder."""
    if resume is None:
        return None
    if resume == "auto":
        found = complete_checkpoints(root)
        return found[-1] if found else None
    path = Path(resume)
    if not (path / COMPLETE_MARKER).is_file():
        raise ValueError(f"--resume {path}: not a complete checkpoint folder (no {COMPLETE_MARKER} marker); "
                         f"pass a step-N folder under OUTPUT_DIR/checkpoints or --resume auto")
    return path


def data_state_file(folder: Path, rank: int) -> Path:
    return folder / f"data_state_rank{rank}.json"


def save_checkpoint(accelerator, root: str | Path, *, step: int, train_state: dict, data_state: dict,
                    config: dict, keep_last: int) -> Path:
    """Write checkpoint `step` atomically on every rank (collective: all ranks must call it)."""
    root = Path(root)
    final, tmp = root / step_dir_name(step), root / (step_dir_name(step) + ".tmp")
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    write_json(data_state_file(tmp, accelerator.process_index), data_state, durable=True)
    if accelerator.is_main_process:
        write_json(tmp / TRAIN_STATE, train_state, durable=True)
        write_json(tmp / RUN_CONFIG, config, durable=True)
    accelerator.wait_for_everyone()
    if os.environ.get(SAVE_HOOK_ENV) == f"crash@{step}":
        os.kill(os.getpid(), signal.SIGKILL)
    if accelerator.is_main_process:
        finish_tree(tmp, durable=True)  # every rank's files are on disk before the marker says so
        write_json(tmp / COMPLETE_MARKER, {"step": step}, durable=True)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        fsync_path(root)
        prune_checkpoints(root, keep_last=keep_last)
    accelerator.wait_for_everyone()
    return final


def prune_checkpoints(root: Path, *, keep_last: int) -> None:
    """Delete all but the newest `keep_last` complete checkpoints, and stale `.tmp` folders."""
    for old in complete_checkpoints(root)[:-keep_last]:
        shutil.rmtree(old)
    for stale in root.glob("step-*.tmp"):
        shutil.rmtree(stale, ignore_errors=True)


def load_checkpoint(accelerator, folder: Path) -> tuple[dict, dict]:
    """Restore model, optimizer, scheduler and RNG from `folder`; return (train_state, this rank's data state)."""
    ranks = len(list(folder.glob("data_state_rank*.json")))
    if ranks != accelerator.num_processes:
        raise ValueError(f"{folder} was written by {ranks} processes but this run has {accelerator.num_processes}; "
                         f"resume with the same number of processes")
    accelerator.load_state(str(folder))
    train_state = json.loads((folder / TRAIN_STATE).read_text())
    data_state = json.loads(data_state_file(folder, accelerator.process_index).read_text())
    return train_state, data_state
