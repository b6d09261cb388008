"""Publish model folders to the Hugging Face Hub (or any Hub-compatible endpoint) with `huggingface_hub`.

`push_folder` creates the repo (and the branch) if needed and uploads a folder as one commit. `BackgroundPusher`
does the same from a single background worker so a training loop can publish intermediate checkpoints as branches
without waiting; each push uploads a hard-linked snapshot, so pruning the checkpoint meanwhile is harmless.

The endpoint and token come from HF_ENDPOINT and HF_TOKEN (read at call time) unless `token=` is given. The token is
never printed or logged. To push to a local Hub-compatible server without Xet storage, set HF_HUB_DISABLE_XET=1.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
from concurrent.futures import Future, ThreadPoolExecutor, wait
from pathlib import Path

from huggingface_hub import HfApi, constants
from huggingface_hub.errors import HfHubHTTPError, HFValidationError
from huggingface_hub.utils import validate_repo_id

logger = logging.getLogger(__name__)

_COMMIT_SHA = re.compile(r"^[0-9a-f]{40}$")


def hub_endpoint() -> str:
    """The Hub endpoint in effect now: HF_ENDPOINT if set, else huggingface_hub's configured default."""
    return (os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")


def is_repo_id(text: str) -> bool:
    """Whether `text` is a valid `owner/name` Hub repo id (the Hub's own rules, from huggingface_hub)."""
    try:
        validate_repo_id(text)
    except HFValidationError:
        return False
    return text.count("/") == 1


def check_push_target(repo_id: str, option: str = "push") -> None:
    """Fail before any work when `repo_id` cannot be pushed to: not an `owner/name` id, or the Hub is offline."""
    if not is_repo_id(repo_id):
        raise ValueError(f"{option}: {repo_id!r} is not a Hub repo id; use 'owner/name' (letters, digits, '-', '_', "
                         "'.'; at most 96 characters)")
    if constants.is_offline_mode():
        raise ValueError(f"{option}: HF_HUB_OFFLINE is set, so huggingface_hub refuses network calls; "
                         "run with HF_HUB_OFFLINE=0")


def _check_push_args(folder: Path, repo_id: str, revision: str | None) -> None:
    if not folder.is_dir():
        raise ValueError(f"push: folder {str(folder)!r} does not exist or is not a directory")
    if not any(p.is_file() for p in folder.rglob("*")):
        raise ValueError(f"push: folder {str(folder)!r} holds no files; save the model there first")
    if revision is not None and (not revision.strip() or _COMMIT_SHA.match(revision)):
        raise ValueError(f"push: revision {revision!r} must be a branch name (commits are immutable), "
                         "e.g. 'main' or 'ckpt/step-1000'")
    check_push_target(repo_id)


def push_folder(folder: str | Path, repo_id: str, *, revision: str | None = None, private: bool = False,
                commit_message: str | None = None, token: str | None = None) -> str:
    """Upload every file of `folder` to model repo `repo_id` as one commit and return the commit sha.

    The repo is created if missing (`private` applies only then); `revision` is a branch, created from main if
    missing (None = main). A refused token raises PermissionError naming the endpoint (never the token).
    """
    folder = Path(folder)
    _check_push_args(folder, repo_id, revision)
    endpoint = hub_endpoint()
    api = HfApi(endpoint=endpoint, token=token)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        if revision is not None and revision != constants.DEFAULT_REVISION:
            api.create_branch(repo_id, branch=revision, exist_ok=True, repo_type="model")
        info = api.upload_folder(folder_path=folder, repo_id=repo_id, repo_type="model", revision=revision,
                                 commit_message=commit_message or f"Upload {folder.name}")
    except HfHubHTTPError as err:
        status = err.response.status_code if err.response is not None else None
        if status in (401, 403):
            raise PermissionError(
                f"push: the Hub at {endpoint} refused the credentials for {repo_id!r} (HTTP {status}: "
                f"{err.server_message or 'unauthorized'}). Set HF_TOKEN (or pass token=) to a valid token with "
                "write access to this namespace.") from err
        raise
    logger.info("pushed %s to %s@%s: %s", folder, repo_id, revision or constants.DEFAULT_REVISION, info.oid)
    return info.oid


def _link_or_copy(src: str, dst: str) -> None:
    """Hard-link `src` to `dst` (instant, survives deletion of `src`); copy when linking is impossible."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def snapshot_folder(folder: Path, staging_root: Path) -> Path:
    """A private, hard-linked copy of `folder` under `staging_root` that later deletion of `folder` cannot break.

    Files rewritten in place (not replaced) after the snapshot would show through the links; checkpoints are written
    once and pruned by deletion, which is safe."""
    staging_root.mkdir(parents=True, exist_ok=True)
    snapshot = Path(tempfile.mkdtemp(prefix=f"{folder.name}-", dir=staging_root)) / folder.name
    shutil.copytree(folder, snapshot, copy_function=_link_or_copy)
    return snapshot


class BackgroundPusher:
    """Push checkpoints to `repo_id` from one background worker, in submission order, without blocking the caller.

        with BackgroundPusher("org/run-42") as pusher:
            for step in ...:
                save(ckpt_dir)
                pusher.submit(ckpt_dir, revision=f"step-{step}")   # returns at once
        # leaving the block waits for every push and raises if any failed

    Failures are logged when they happen and raised (all of them, the first as cause) by `wait()` and `close()`.
    Snapshots are staged under `staging_dir` (default: a `.hub-push` folder next to each checkpoint, i.e. on the
    same filesystem, so snapshots are hard links) and removed after their push.
    """

    def __init__(self, repo_id: str, *, private: bool = False, token: str | None = None,
                 staging_dir: str | Path | None = None):
        check_push_target(repo_id, "push_to_hub")
        self.repo_id, self.private, self._token = repo_id, private, token
        self.staging_dir = Path(staging_dir) if staging_dir is not None else None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="growlm-hub-push")
        self._pending: list[tuple[str, Future]] = []
        self._closed = False

    def submit(self, folder: str | Path, revision: str | None = None, commit_message: str | None = None) -> Future:
        """Snapshot `folder` now and queue its push to branch `revision`; the Future gives the commit sha."""
        if self._closed:
            raise RuntimeError("BackgroundPusher.submit: the pusher is closed; create a new one")
        folder = Path(folder)
        _check_push_args(folder, self.repo_id, revision)
        snapshot = snapshot_folder(folder, self.staging_dir or folder.parent / ".hub-push")
        label = f"{folder} -> {self.repo_id}@{revision or constants.DEFAULT_REVISION}"
        future = self._executor.submit(self._push, snapshot, revision, commit_message or f"Upload {folder.name}",
                                       label)
        self._pending.append((label, future))
        return future

    def _push(self, snapshot: Path, revision: str | None, commit_message: str, label: str) -> str:
        try:
            return push_folder(snapshot, self.repo_id, revision=revision, private=self.private,
                               commit_message=commit_message, token=self._token)
        except Exception as err:
            logger.error("background push %s failed: %s", label, err)
            raise
        finally:
            shutil.rmtree(snapshot.parent, ignore_errors=True)

    def wait(self) -> list[str]:
        """Block until every queued push is done; return their commit shas in submission order, or raise
        RuntimeError describing every failed push."""
        pending, self._pending = self._pending, []
        wait([future for _, future in pending])
        failures = [(label, future.exception()) for label, future in pending if future.exception() is not None]
        if failures:
            lines = "; ".join(f"{label}: {type(err).__name__}: {err}" for label, err in failures)
            raise RuntimeError(f"{len(failures)} background push(es) failed: {lines}") from failures[0][1]
        return [future.result() for _, future in pending]

    def close(self) -> list[str]:
        """Wait for all pushes (raising on failures, like `wait`) and stop the worker."""
        if self._closed:
            return []
        try:
            return self.wait()
        finally:
            self._closed = True
            self._executor.shutdown(wait=True)

    def __enter__(self) -> "BackgroundPusher":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:  # do not mask the caller's exception with push errors
            self._closed = True
            self._executor.shutdown(wait=True)
