"""Publishing the pipeline's models: the local test Hub server, a plain directory hub, or a remote Hub."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from pathlib import Path

from growlm.atomic import atomic_dir
from growlm.pipeline.commands import module, push_command
from growlm.pipeline.config import HubConfig
from growlm.pipeline.stages import run_command

# `huggingface_hub` picks Xet uploads from `hf_xet` being installed; the local server speaks plain LFS only.
LOCAL_CLIENT_ENV = {"HF_HUB_OFFLINE": "0", "HF_HUB_DISABLE_XET": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}


class HubPublisher:
    """Context manager that publishes model folders to `hub.kind`; starts the local server on first use."""

    def __init__(self, hub: HubConfig, root: Path):
        self.hub = hub
        self.root = root
        self._server: subprocess.Popen | None = None
        self._env: dict[str, str] = {}

    def __enter__(self) -> HubPublisher:
        return self

    def __exit__(self, *exc) -> None:
        if self._server is not None:
            self._server.terminate()
            self._server.wait(timeout=30)
            self._server = None

    def _server_env(self) -> dict[str, str]:
        """Start `growlm/hub_server.py` storing into `root` with a fresh write token; the client env."""
        if self._server is None:
            self.root.mkdir(parents=True, exist_ok=True)
            token = "hf_local_" + secrets.token_hex(16)
            self._server = subprocess.Popen(
                [*module("growlm.hub_server"), "--port", "0", "--root", str(self.root)],
                stdout=subprocess.PIPE, text=True, env={**os.environ, "HF_TOKEN": token})
            endpoint = self._server.stdout.readline().strip()
            if not endpoint.startswith("http"):
                self.__exit__()
                raise SystemExit("the local hub server (python -m growlm.hub_server) did not start; run it by hand to "
                                 "see why, or set hub.kind: dir in the pipeline config")
            self._env = {**LOCAL_CLIENT_ENV, "HF_ENDPOINT": endpoint, "HF_TOKEN": token}
        return self._env

    def publish(self, folder: Path, repo_id: str, *, log_file: Path) -> dict:
        """Publish `folder` as `repo_id`; returns what was published and where."""
        if self.hub.kind == "dir":
            return {"repo_id": repo_id, "path": str(copy_to_dir_hub(folder, self.root, repo_id))}
        env = self._server_env() if self.hub.kind == "server" else {}
        pushed = run_command(push_command(folder=folder, repo_id=repo_id, private=self.hub.private),
                             log_file=log_file, env=env, capture_stdout=True)
        endpoint = env.get("HF_ENDPOINT") or os.environ.get("HF_ENDPOINT", "https://huggingface.co")
        record = {"repo_id": repo_id, "url": f"{endpoint}/{repo_id}", "commit": pushed["stdout"],
                  "hub_kind": self.hub.kind}
        return {**record, "hub_root": str(self.root)} if self.hub.kind == "server" else record


def copy_to_dir_hub(folder: Path, root: Path, repo_id: str) -> Path:
    """Copy `folder` to `root/<org>/<name>/` (replacing an older copy only once the new one is complete)."""
    dst = root / repo_id
    with atomic_dir(dst) as tmp:
        shutil.copytree(folder, tmp, dirs_exist_ok=True)
    return dst
