"""Atomic, verifiable, run-bound checkpoints: `DIR/checkpoints/step-00000100/`, each with a completion marker.

A save writes everything into `step-N.tmp/` (accelerate's `save_state`: model, optimizer, scheduler, per-rank RNG;
plus per-rank data-stream state, the train state and the run's config as `run_config.json`, so the folder is not
taken for a Hugging Face model folder), fsyncs every file and folder, writes the `COMPLETE` marker last, renames the
folder to `step-N`, and only then prunes older checkpoints of the same run. There is no `latest` pointer: resume
takes the newest folder holding the marker whose files verify, so a crash at any moment leaves the previous
checkpoint resumable.

The marker records the run id, the process count and every file's size; files up to `HASH_LIMIT` bytes (the JSON
states, RNG and scheduler files) also get a SHA-256. Weights and optimizer states are checked by size only: hashing
gigabytes at every save and resume costs minutes, and the damage a crash does (a truncated or missing file) changes
the size.

Runs. A fresh run draws a run id, recorded in `OUTPUT_DIR/run.json` and in each checkpoint's marker and train
state. `--resume auto` only takes checkpoints of the recorded run (others are skipped with a warning and never
pruned). A fresh run refuses an output folder that holds a finished or checkpointed run unless `--overwrite`, which
moves the old run into `OUTPUT_DIR/.replaced-<time>/` and deletes it once the new run's first checkpoint is complete.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import signal
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from accelerate.utils import set_seed

from growlm.atomic import finish_tree, fsync_path, write_json
from growlm.data import global_data_state
from growlm.train.config import UsageError

logger = logging.getLogger(__name__)

COMPLETE_MARKER = "COMPLETE"
TRAIN_STATE = "train_state.json"
RUN_CONFIG = "run_config.json"
RUN_RECORD = "run.json"  # OUTPUT_DIR/run.json: the id of the run the folder belongs to
REPLACED_PREFIX = ".replaced-"  # OUTPUT_DIR/.replaced-<time>/: a run moved aside by --overwrite
HASH_LIMIT = 1 << 20  # files up to 1 MiB get a SHA-256 in the marker, larger ones their size only
_STEP_DIR = re.compile(r"^step-(\d{8})$")
# Test hook: "crash@N" kills the process while saving step N, after `step-N.tmp` is written and before it is marked
# complete (tests use it to prove that a crash mid-save leaves the previous checkpoint resumable).
SAVE_HOOK_ENV = "GROWLM_TEST_SAVE_HOOK"


def step_dir_name(step: int) -> str:
    return f"step-{step:08d}"


def complete_checkpoints(root: str | Path) -> list[Path]:
    """Checkpoint folders under `root` that hold the completion marker, oldest first (not yet verified)."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if _STEP_DIR.match(p.name) and (p / COMPLETE_MARKER).is_file()]
    return sorted(found, key=lambda p: int(_STEP_DIR.match(p.name).group(1)))


def data_state_file(folder: Path, rank: int) -> Path:
    return folder / f"data_state_rank{rank}.json"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def file_manifest(folder: Path) -> dict[str, dict]:
    """Every file under `folder` (relative path -> size, and SHA-256 up to `HASH_LIMIT` bytes)."""
    files = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        size = path.stat().st_size
        files[path.relative_to(folder).as_posix()] = {"size": size, **(
            {"sha256": _sha256(path)} if size <= HASH_LIMIT else {})}
    return files


def read_marker(folder: Path) -> dict:
    """The `COMPLETE` marker of a checkpoint (a legacy marker holds the step only); ValueError when unreadable."""
    try:
        marker = json.loads((folder / COMPLETE_MARKER).read_text())
    except (OSError, ValueError) as err:
        raise ValueError(f"{COMPLETE_MARKER} is unreadable ({type(err).__name__})") from None
    if not isinstance(marker, dict):
        raise ValueError(f"{COMPLETE_MARKER} is not a JSON object")
    return marker


def _readable_json(path: Path) -> str | None:
    try:
        json.loads(path.read_text())
    except FileNotFoundError:
        return f"{path.name} is missing"
    except (OSError, ValueError) as err:
        return f"{path.name} is unreadable ({type(err).__name__})"
    return None


def checkpoint_problem(folder: Path) -> str | None:
    """Why checkpoint `folder` cannot be resumed (naming the damaged file), or None when it verifies."""
    try:
        marker = read_marker(folder)
    except ValueError as err:
        return str(err)
    files = marker.get("files")
    if not isinstance(files, dict):  # a legacy marker: the JSON states must parse and each rank's must exist
        ranks = len(list(folder.glob("data_state_rank*.json")))
        names = [TRAIN_STATE] + [data_state_file(folder, r).name for r in range(max(ranks, 1))]
        return next((p for p in map(_readable_json, (folder / n for n in names)) if p), None)
    for name, expected in files.items():
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        size = path.stat().st_size
        if size != expected.get("size"):
            return f"{name} has {size} bytes, {expected.get('size')} were written (truncated or overwritten)"
        if "sha256" in expected and _sha256(path) != expected["sha256"]:
            return f"{name} does not match the SHA-256 recorded when it was written"
    return None


def checkpoint_run_id(folder: Path) -> str | None:
    """The run id a checkpoint's marker records (None: a legacy checkpoint, or an unreadable marker)."""
    try:
        return read_marker(folder).get("run_id")
    except ValueError:
        return None


def read_run_record(out: Path) -> tuple[str | None, bool]:
    """The run id in `OUTPUT_DIR/run.json` (None when the folder has none, or it is unreadable), and whether the run
    adopted checkpoints written before run ids."""
    path = Path(out) / RUN_RECORD
    if not path.is_file():
        return None, False
    try:
        record = json.loads(path.read_text())
        return record["run_id"], bool(record.get("adopted_unnamed_checkpoints"))
    except (OSError, ValueError, KeyError, TypeError):
        logger.warning("%s is unreadable; only checkpoints without a run id can be resumed", path)
        return None, False


@dataclass
class RunPlan:
    """What a start does with its output folder: resume `resume_dir` or start fresh, under `run_id`."""

    out: Path
    run_id: str
    resume_dir: Path | None = None
    replace: bool = False  # --overwrite: move the old run aside at the start, delete it after the first checkpoint
    write_record: bool = False  # write OUTPUT_DIR/run.json
    replaced: list[Path] = field(default_factory=list)  # old runs moved aside, deleted after the first checkpoint
    legacy: bool = False  # resumed a checkpoint without a run id: older ones without an id are this run's too

    @property
    def run_ids(self) -> set[str | None]:
        """Run ids whose checkpoints this run may prune."""
        return {self.run_id, None} if self.legacy else {self.run_id}


def _used_by(out: Path) -> list[str]:
    """What in `out` belongs to a run that a fresh start would destroy: final/ and complete checkpoints."""
    used = [f"{len(complete_checkpoints(out / 'checkpoints'))} checkpoint(s) in checkpoints/"] \
        if complete_checkpoints(out / "checkpoints") else []
    return used + (["final/"] if (out / "final").exists() else [])


def plan_run(out: str | Path, *, resume: str | None, overwrite: bool) -> RunPlan:
    """Choose the checkpoint to resume (verified, of this folder's run) or check that a fresh start may use `out`.

    Read-only (every rank calls it); raises UsageError with a one-line message."""
    out = Path(out)
    recorded, adopted = read_run_record(out)
    if resume not in (None, "auto"):
        folder = Path(resume)
        if not (folder / COMPLETE_MARKER).is_file():
            raise UsageError(f"--resume {folder}: not a complete checkpoint folder (no {COMPLETE_MARKER} marker); "
                             f"pass a step-N folder under OUTPUT_DIR/checkpoints or --resume auto")
        problem = checkpoint_problem(folder)
        if problem:
            raise UsageError(f"--resume {folder}: damaged checkpoint: {problem}; resume from an older step-N folder "
                             f"or use --resume auto, which skips damaged checkpoints")
        run_id = checkpoint_run_id(folder)
        if recorded and run_id and recorded != run_id:
            raise UsageError(f"--resume {folder} continues run {run_id}, but {out} holds run {recorded} "
                             f"({out / RUN_RECORD}); pass another --output-dir")
        if run_id is None:  # written before run ids
            return RunPlan(out, recorded or uuid.uuid4().hex, resume_dir=folder, write_record=not adopted,
                           legacy=True)
        return RunPlan(out, run_id, resume_dir=folder, write_record=recorded != run_id)
    if resume == "auto":
        for folder in reversed(complete_checkpoints(out / "checkpoints")):
            problem = checkpoint_problem(folder)
            if problem:
                logger.warning("skipping damaged checkpoint %s: %s", folder, problem)
                continue
            run_id = checkpoint_run_id(folder)
            if run_id is None and adopted:  # written before run ids, adopted by this folder's run
                return RunPlan(out, recorded, resume_dir=folder, legacy=True)
            if run_id != recorded:
                logger.warning("ignoring checkpoint %s: it belongs to run %s, not to run %s that %s records",
                               folder, run_id or "(no id)", recorded or "(none)", out / RUN_RECORD)
                continue
            if run_id is None:  # written before run ids: adopt it (and its pre-id siblings) under a new id
                return RunPlan(out, uuid.uuid4().hex, resume_dir=folder, write_record=True, legacy=True)
            return RunPlan(out, run_id, resume_dir=folder)
    used = _used_by(out)
    if used and not overwrite:
        found = " and ".join(used)
        advice = ("none of its checkpoints can be resumed (see the warnings above); pass" if resume == "auto"
                  else "pass --resume auto to continue it,")
        raise UsageError(f"{out} already holds a run ({found}) that a fresh run would destroy; {advice} --overwrite "
                         f"to replace it (kept until the new run's first checkpoint is complete), or another "
                         f"--output-dir")
    return RunPlan(out, uuid.uuid4().hex, replace=overwrite, write_record=True)


def prepare_output(plan: RunPlan) -> None:
    """Main process, before anything is written to the output folder: move a replaced run aside, record the run."""
    out = plan.out
    out.mkdir(parents=True, exist_ok=True)
    if plan.replace:
        entries = [e for e in out.iterdir() if not e.name.startswith(REPLACED_PREFIX)]
        if entries:
            aside = out / f"{REPLACED_PREFIX}{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
            aside.mkdir()
            for entry in entries:
                os.replace(entry, aside / entry.name)
            fsync_path(aside)
            fsync_path(out)
        # With an earlier --overwrite start that died before its first checkpoint, its moved-aside run goes too.
        plan.replaced = sorted(out.glob(REPLACED_PREFIX + "*"))
        if plan.replaced:
            logger.warning("--overwrite: the previous run is in %s until this run's first checkpoint is complete",
                           ", ".join(map(str, plan.replaced)))
    if plan.write_record:
        write_json(out / RUN_RECORD, {"run_id": plan.run_id, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                                      "adopted_unnamed_checkpoints": plan.legacy}, durable=True)


def drop_replaced(plan: RunPlan) -> None:
    """After the new run's first complete checkpoint: delete the run that --overwrite moved aside."""
    for old in plan.replaced:
        shutil.rmtree(old, ignore_errors=True)
        logger.info("deleted the replaced run %s", old)
    plan.replaced = []


def save_checkpoint(accelerator, root: str | Path, *, step: int, train_state: dict, data_state: dict,
                    config: dict, keep_last: int, run_id: str, prune_ids: set[str | None] | None = None) -> Path:
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
        write_json(tmp / TRAIN_STATE, {**train_state, "run_id": run_id}, durable=True)
        write_json(tmp / RUN_CONFIG, config, durable=True)
    accelerator.wait_for_everyone()  # every rank's files are in `tmp` (one shared folder)
    if os.environ.get(SAVE_HOOK_ENV) == f"crash@{step}":
        os.kill(os.getpid(), signal.SIGKILL)
    if accelerator.is_main_process:
        finish_tree(tmp, durable=True)  # fsync every rank's files and the folders before the marker says so
        marker = {"step": step, "run_id": run_id, "num_processes": accelerator.num_processes,
                  "files": file_manifest(tmp)}
        write_json(tmp / COMPLETE_MARKER, marker, durable=True)
        if (final / COMPLETE_MARKER).is_file() and checkpoint_run_id(final) not in (prune_ids or {run_id}):
            keep = root / f"{final.name}.run-{checkpoint_run_id(final) or 'unknown'}"  # another run's: keep it
            logger.warning("checkpoint %s belongs to another run; renamed to %s", final, keep)
            os.replace(final, keep)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        fsync_path(root)
        prune_checkpoints(root, keep_last=keep_last, run_ids=prune_ids or {run_id})
    accelerator.wait_for_everyone()
    return final


def prune_checkpoints(root: Path, *, keep_last: int, run_ids: set[str | None]) -> None:
    """Delete all but the newest `keep_last` complete checkpoints of the runs `run_ids` (another run's are never
    touched), and stale `.tmp` folders."""
    ours = [p for p in complete_checkpoints(root) if checkpoint_run_id(p) in run_ids]
    for old in ours[:-keep_last]:
        shutil.rmtree(old)
    for stale in root.glob("step-*.tmp"):
        shutil.rmtree(stale, ignore_errors=True)


def load_checkpoint(accelerator, folder: Path, *, seed: int) -> tuple[dict, dict]:
    """Restore model, optimizer, scheduler and RNG from a verified `folder`; return (train_state, this rank's data
    state).

    Elastic resume: a checkpoint written by P processes resumes on P' != P (the global batch is fixed by the config,
    so the accumulation steps change instead). Weights, optimizer and scheduler reshard: FSDP2 saves DCP shards that
    `load_state` redistributes, DDP and one process save full states. Data: every rank takes the saved ranks'
    states merged by `global_data_state`, the global position after the last block of the step (rank r of P' then
    continues at the next sample = r mod P'; virtual streams: from the positions of its own streams). RNG:
    accelerate saved one state per rank and skips the missing ones, so every rank is re-seeded
    from (seed, step, rank) instead, which makes the resumed run the same whichever P wrote the checkpoint."""
    marker = read_marker(folder)
    saved = marker.get("num_processes") or len(list(folder.glob("data_state_rank*.json")))
    accelerator.load_state(str(folder))
    train_state = json.loads((folder / TRAIN_STATE).read_text())
    train_state.pop("run_id", None)
    rank = accelerator.process_index
    if saved != accelerator.num_processes:
        logger.warning("%s was written by %d processes, this run has %d: resuming from the global data position, "
                       "RNG re-seeded per rank", folder, saved, accelerator.num_processes)
        rank_seed = np.random.SeedSequence([seed, train_state["step"], rank]).generate_state(1)[0]
        set_seed(int(rank_seed))
    if saved == accelerator.num_processes:
        return train_state, json.loads(data_state_file(folder, rank).read_text())
    return train_state, global_data_state([json.loads(data_state_file(folder, r).read_text()) for r in range(saved)])
