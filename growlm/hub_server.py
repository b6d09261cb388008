"""A small Hugging Face Hub-compatible HTTP server for tests and the local demo (model and dataset repos).

It speaks just enough of the Hub protocol for `huggingface_hub` (create_repo, create_branch, upload_folder
through preupload + LFS batch + NDJSON commit, repo/revision info, tree, paths-info, refs, hf_hub_download, and
`hf://` reads through HfFileSystem, whole or by byte range) and for transformers' `from_pretrained("org/name",
revision=...)`. Dataset repos live beside model repos under the Hub's URL prefix: the store keys them
`datasets/org/name` (API `/api/datasets/org/name/...`, files `/datasets/org/name/resolve/...`). Commits are
immutable snapshots with sha1 ids; file contents are content-addressed blobs on disk. LFS files are served the way
the Hub serves them: `/resolve` answers with a redirect to a second origin (the "CDN", a signed URL without auth),
carrying `X-Linked-Etag`, `X-Linked-Size` and `X-Repo-Commit`.
Xet is never advertised; clients must run with `HF_HUB_DISABLE_XET=1` because `huggingface_hub` picks Xet uploads
from `hf_xet` being installed, not from the server (see `HubServer.client_env`).

Run it standalone (e.g. for `make demo`): `HF_TOKEN=... python -m growlm.hub_server --port 0 --root DIR` prints the
endpoint on stdout and serves until interrupted; clients use the same HF_TOKEN plus `HubServer.client_env()`'s
other variables (HF_ENDPOINT, HF_HUB_OFFLINE=0, HF_HUB_DISABLE_XET=1).
"""

from __future__ import annotations

import argparse
import base64
import binascii
import hashlib
import hmac
import json
import os
import re
import secrets
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path, PurePosixPath
from urllib.parse import parse_qs, quote, unquote, urlsplit

import yaml

COMMIT_SHA = re.compile(r"^[0-9a-f]{40}$")
LFS_SUFFIXES = {".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".onnx", ".npy", ".npz",
                ".gguf", ".zst", ".gz", ".tar", ".zip", ".model", ".parquet", ".arrow"}
LFS_MIN_SIZE = 10 * 1024 * 1024
INVALID_CREDENTIALS = "Invalid credentials in Authorization header"


class HubError(Exception):
    """An HTTP error answered the way the Hub answers it (status, X-Error-Code, message)."""

    def __init__(self, status: int, message: str, code: str | None = None, headers: dict | None = None,
                 extra: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.headers = status, message, code, headers or {}
        self.extra = extra or {}


def git_blob_oid(data: bytes) -> str:
    """The git blob sha1 of `data` (what the Hub calls the oid of a regular file)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def is_lfs_file(path: str, size: int, sample: bytes) -> bool:
    """Hub-like rule: binary formats, big files and files with NUL bytes go to LFS."""
    return PurePosixPath(path).suffix.lower() in LFS_SUFFIXES or size >= LFS_MIN_SIZE or b"\0" in sample


@dataclass
class FileEntry:
    """One file of a commit: content blob (sha256), size, git oid, and whether it is stored as LFS."""
    sha256: str
    size: int
    git_oid: str
    lfs: bool


@dataclass
class Commit:
    sha: str
    parent: str | None
    message: str
    date: str
    files: dict[str, FileEntry]


@dataclass
class Repo:
    repo_id: str
    private: bool
    branches: dict[str, str] = field(default_factory=dict)
    commits: dict[str, Commit] = field(default_factory=dict)

    def resolve(self, revision: str) -> Commit:
        """A branch name or a full commit sha -> commit, else RevisionNotFound."""
        sha = self.branches.get(revision) or (revision if revision in self.commits else None)
        if sha is None:
            raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        return self.commits[sha]


class HubStore:
    """Repos, commits and blobs under one root folder; thread-safe; state persisted as JSON after each write."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.blob_dir = self.root / "blobs"
        self.blob_dir.mkdir(parents=True, exist_ok=True)
        self.lock = threading.RLock()
        self.repos: dict[str, Repo] = {}
        self._load()

    # -- persistence -------------------------------------------------------------------------------------------
    def _state_path(self) -> Path:
        return self.root / "state.json"

    def _load(self) -> None:
        if not self._state_path().exists():
            return
        raw = json.loads(self._state_path().read_text())
        for repo_id, r in raw.items():
            commits = {sha: Commit(sha=sha, parent=c["parent"], message=c["message"], date=c["date"],
                                   files={p: FileEntry(**f) for p, f in c["files"].items()})
                       for sha, c in r["commits"].items()}
            self.repos[repo_id] = Repo(repo_id, r["private"], dict(r["branches"]), commits)

    def _save(self) -> None:
        state = {rid: {"private": r.private, "branches": r.branches,
                       "commits": {sha: {"parent": c.parent, "message": c.message, "date": c.date,
                                         "files": {p: vars(f) for p, f in c.files.items()}}
                                   for sha, c in r.commits.items()}}
                 for rid, r in self.repos.items()}
        tmp = self._state_path().with_suffix(".tmp")
        tmp.write_text(json.dumps(state))
        tmp.replace(self._state_path())

    # -- blobs ---------------------------------------------------------------------------------------------------
    def blob_path(self, sha256: str) -> Path:
        return self.blob_dir / sha256

    def has_blob(self, sha256: str, size: int | None = None) -> bool:
        path = self.blob_path(sha256)
        return path.exists() and (size is None or path.stat().st_size == size)

    def put_blob(self, data: bytes) -> str:
        sha = hashlib.sha256(data).hexdigest()
        self.write_blob_checked(sha, data)
        return sha

    def write_blob_checked(self, sha256: str, data: bytes) -> None:
        if hashlib.sha256(data).hexdigest() != sha256:
            raise HubError(400, f"Uploaded content does not match oid {sha256}")
        if not self.has_blob(sha256):
            fd, tmp = tempfile.mkstemp(dir=self.blob_dir)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, self.blob_path(sha256))

    # -- repos and commits -------------------------------------------------------------------------------------------
    def get_repo(self, repo_id: str) -> Repo:
        repo = self.repos.get(repo_id)
        if repo is None:
            raise HubError(401, "Repository not found", "RepoNotFound")
        return repo

    def create_repo(self, repo_id: str, private: bool) -> Repo:
        with self.lock:
            if repo_id in self.repos:
                raise HubError(409, "You already created this model repo")
            repo = Repo(repo_id, private)
            self._commit(repo, None, "initial commit", {})
            repo.branches["main"] = next(iter(repo.commits))
            self.repos[repo_id] = repo
            self._save()
            return repo

    def create_branch(self, repo_id: str, branch: str, starting_point: str | None) -> None:
        with self.lock:
            repo = self.get_repo(repo_id)
            if branch in repo.branches:
                raise HubError(409, f"Reference already exists: refs/heads/{branch}")
            if COMMIT_SHA.match(branch):
                raise HubError(400, f"Invalid branch name {branch!r}: it looks like a commit sha")
            repo.branches[branch] = repo.resolve(starting_point or "main").sha
            self._save()

    def commit(self, repo_id: str, branch: str, message: str, parent_commit: str | None,
               changes: dict[str, FileEntry | None], deleted_folders: list[str]) -> Commit:
        """Apply additions (FileEntry) and deletions (None / folders) on top of `branch` as one new commit."""
        with self.lock:
            repo = self.get_repo(repo_id)
            if branch not in repo.branches:
                raise HubError(404, f"Invalid rev id: {branch} (commits go to an existing branch)",
                               "RevisionNotFound")
            head = repo.commits[repo.branches[branch]]
            if parent_commit is not None and parent_commit != head.sha:
                raise HubError(412, f"Parent commit {parent_commit} is not the head of {branch} ({head.sha})")
            files = {p: f for p, f in head.files.items()
                     if not any(p == d or p.startswith(d.rstrip("/") + "/") for d in deleted_folders)}
            for path, entry in changes.items():
                if entry is None:
                    if path not in files:
                        raise HubError(404, f"A file with this name doesn't exist: {path}", "EntryNotFound")
                    del files[path]
                else:
                    files[path] = entry
            new = self._commit(repo, head.sha, message, files)
            repo.branches[branch] = new.sha
            self._save()
            return new

    def _commit(self, repo: Repo, parent: str | None, message: str, files: dict[str, FileEntry]) -> Commit:
        date = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())
        body = json.dumps([repo.repo_id, parent, message, date, sorted((p, f.sha256) for p, f in files.items()),
                           secrets.token_hex(8)])
        commit = Commit(hashlib.sha1(body.encode()).hexdigest(), parent, message, date, dict(files))
        repo.commits[commit.sha] = commit
        return commit

    def add_folder(self, repo_id: str, local_dir: Path, revision: str = "main", private: bool = False) -> str:
        """Seed `repo_id` (created if missing) with every file of `local_dir` as one commit on `revision`."""
        local_dir = Path(local_dir)
        if not local_dir.is_dir():
            raise ValueError(f"add_repo: {local_dir} is not a folder")
        with self.lock:
            if repo_id not in self.repos:
                self.create_repo(repo_id, private)
            repo = self.repos[repo_id]
            if revision not in repo.branches:
                self.create_branch(repo_id, revision, "main")
            changes: dict[str, FileEntry | None] = {}
            for path in sorted(p for p in local_dir.rglob("*") if p.is_file()):
                data = path.read_bytes()
                rel = path.relative_to(local_dir).as_posix()
                changes[rel] = FileEntry(self.put_blob(data), len(data), git_blob_oid(data),
                                         is_lfs_file(rel, len(data), data[:512]))
            return self.commit(repo_id, revision, f"Upload {local_dir.name}", None, changes, []).sha


class HubRequestHandler(BaseHTTPRequestHandler):
    """Routes Hub API calls to the HubServer's store. One instance per request (stdlib threading server)."""

    server_version = "growlm-test-hub/1.0"
    hub: "HubServer"  # set on the subclass built by HubServer

    # -- plumbing ----------------------------------------------------------------------------------------------------
    def log_message(self, format: str, *args) -> None:  # noqa: A002 - stdlib signature
        if self.hub.verbose:
            sys.stderr.write("hub: " + (format % args) + "\n")

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    self.rfile.readline()
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _json_body(self) -> dict:
        try:
            return json.loads(self._read_body() or b"{}")
        except json.JSONDecodeError as err:
            raise HubError(400, f"Request body is not valid JSON: {err}") from err

    def _send(self, status: int, body: bytes = b"", headers: dict | None = None,
              content_type: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _send_json(self, payload, status: int = 200, headers: dict | None = None) -> None:
        self._send(status, json.dumps(payload).encode(), headers)

    def _dispatch(self, method: str) -> None:
        url = urlsplit(self.path)
        self.query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        parts = [unquote(p) for p in url.path.strip("/").split("/")] if url.path.strip("/") else []
        try:
            try:
                self._check_credentials()
                self._route(method, parts)
            except (KeyError, TypeError, ValueError) as err:
                raise HubError(400, f"Malformed request: {type(err).__name__}: {err}") from err
        except HubError as err:
            headers = {"X-Error-Message": err.message, **err.headers}
            if err.code:
                headers["X-Error-Code"] = err.code
            self._send_json({"error": err.message, **err.extra}, err.status, headers)

    # -- auth ----------------------------------------------------------------------------------------------------------
    def _token(self) -> str | None:
        auth = self.headers.get("Authorization", "")
        return auth[7:].strip() if auth.lower().startswith("bearer ") else None

    def _check_credentials(self) -> None:
        """Like the Hub: any presented token must be valid, even for public reads."""
        token = self._token()
        if token is not None and not hmac.compare_digest(token, self.hub.token):
            raise HubError(401, INVALID_CREDENTIALS)

    def _require_write(self) -> None:
        if self._token() is None:
            raise HubError(401, "Authentication required for writes: pass a token (HF_TOKEN or token=...)")

    def _readable_repo(self, repo_id: str) -> Repo:
        repo = self.hub.store.get_repo(repo_id)
        if repo.private and self._token() is None:
            raise HubError(401, "Repository not found", "RepoNotFound")
        return repo

    # -- routing -----------------------------------------------------------------------------------------------------
    def _route(self, method: str, parts: list[str]) -> None:
        if parts[:1] == ["cdn"] and method in ("GET", "HEAD", "PUT") and len(parts) == 3:
            return self._cdn(method, parts[2], upload=parts[1] == "upload")
        if parts == ["api", "whoami-v2"] and method == "GET":
            self._require_write()
            return self._send_json({"type": "user", "name": self.hub.user, "orgs": [],
                                    "auth": {"type": "access_token",
                                             "accessToken": {"displayName": "test", "role": "write"}}})
        if parts == ["api", "repos", "create"] and method == "POST":
            return self._create_repo()
        if parts == ["api", "validate-yaml"] and method == "POST":
            return self._validate_yaml()
        if len(parts) >= 4 and parts[:2] in (["api", "models"], ["api", "datasets"]):
            prefix = "datasets/" if parts[1] == "datasets" else ""
            return self._repo_api(method, f"{prefix}{parts[2]}/{parts[3]}", parts[4:])
        prefix = ""
        if parts[:1] == ["datasets"]:  # a dataset repo's files and LFS API: the model routes below, prefixed
            prefix, parts = "datasets/", parts[1:]
        if len(parts) >= 4 and parts[2] == "resolve" and method in ("GET", "HEAD"):
            return self._resolve(f"{prefix}{parts[0]}/{parts[1]}", parts[3], "/".join(parts[4:]))
        if len(parts) == 6 and parts[1].endswith(".git") and parts[2:5] == ["info", "lfs", "objects"]:
            repo_id = f"{prefix}{parts[0]}/{parts[1][:-4]}"
            if parts[5] == "batch" and method == "POST":
                return self._lfs_batch(repo_id)
            if parts[5] == "verify" and method == "POST":
                return self._lfs_verify()
        raise HubError(404, f"Route not served by the test hub: {method} {self.path}")

    def _repo_api(self, method: str, repo_id: str, rest: list[str]) -> None:
        """`/api/models/<id>/...` and `/api/datasets/<id>/...` (`repo_id`: the store key)."""
        action = rest[0] if rest else None
        if method == "GET" and action is None:
            return self._repo_info(repo_id, "main")
        if method == "GET" and action == "revision" and len(rest) == 2:
            return self._repo_info(repo_id, rest[1])
        if method == "GET" and action == "tree" and len(rest) >= 2:
            return self._tree(repo_id, rest[1], "/".join(rest[2:]))
        if method == "POST" and action == "paths-info" and len(rest) == 2:
            return self._paths_info(repo_id, rest[1])
        if method == "GET" and action == "refs":
            return self._refs(repo_id)
        if method == "POST" and action == "branch" and len(rest) >= 2:
            self._require_write()
            body = self._json_body()
            self.hub.store.create_branch(repo_id, "/".join(rest[1:]), body.get("startingPoint"))
            return self._send_json({})
        if method == "POST" and action == "preupload" and len(rest) == 2:
            return self._preupload(repo_id, rest[1])
        if method == "POST" and action == "commit" and len(rest) == 2:
            return self._commit(repo_id, rest[1])
        raise HubError(404, f"Route not served by the test hub: {method} {self.path}")

    # -- handlers ------------------------------------------------------------------------------------------------------
    def _create_repo(self) -> None:
        self._require_write()
        body = self._json_body()
        repo_type = body.get("type", "model")
        if repo_type not in ("model", "dataset"):
            raise HubError(400, "The test hub only serves model and dataset repos")
        name, org = body.get("name"), body.get("organization") or self.hub.user
        if not name or "/" in name:
            raise HubError(400, f"Invalid repo name {name!r}")
        private = body.get("visibility") == "private" or bool(body.get("private"))
        repo_id = ("datasets/" if repo_type == "dataset" else "") + f"{org}/{name}"
        url = f"{self.hub.endpoint}/{repo_id}"
        try:
            self.hub.store.create_repo(repo_id, private)
        except HubError as err:
            err.extra = {"url": url}  # the Hub's 409 body carries the url; create_repo(exist_ok=True) reads it
            raise
        self._send_json({"url": url, "name": repo_id, "id": repo_id})

    def _validate_yaml(self) -> None:
        content = self._json_body().get("content", "")
        match = re.match(r"^---\s*\n(.*?)\n---\s*(\n|$)", content, re.S)
        try:
            if match:
                yaml.safe_load(match.group(1))
        except yaml.YAMLError as err:
            raise HubError(400, f"Invalid YAML in README.md metadata: {err}") from err
        self._send_json({"errors": [], "warnings": []})

    def _repo_info(self, repo_id: str, revision: str) -> None:
        repo = self._readable_repo(repo_id)
        commit = repo.resolve(revision)
        siblings = []
        for path, f in sorted(commit.files.items()):
            sibling = {"rfilename": path}
            if self.query.get("blobs"):
                sibling.update(size=f.size, blobId=f.git_oid)
                if f.lfs:
                    sibling["lfs"] = {"size": f.size, "sha256": f.sha256, "pointerSize": 134}
            siblings.append(sibling)
        card = self._card_data(commit)
        repo_id = repo_id.removeprefix("datasets/")
        self._send_json({"_id": repo_id, "id": repo_id, "modelId": repo_id, "author": repo_id.split("/")[0],
                         "sha": commit.sha, "lastModified": commit.date, "private": repo.private,
                         "gated": False, "disabled": False, "downloads": 0, "likes": 0, "tags": card.get("tags", []),
                         "library_name": card.get("library_name"), "cardData": card or None,
                         "siblings": siblings})

    def _card_data(self, commit: Commit) -> dict:
        entry = commit.files.get("README.md")
        if entry is None:
            return {}
        text = self.hub.store.blob_path(entry.sha256).read_text(encoding="utf-8", errors="replace")
        match = re.match(r"^---\s*\n(.*?)\n---\s*(\n|$)", text, re.S)
        try:
            data = yaml.safe_load(match.group(1)) if match else None
        except yaml.YAMLError:
            return {}
        return data if isinstance(data, dict) else {}

    def _tree(self, repo_id: str, revision: str, path: str) -> None:
        commit = self._readable_repo(repo_id).resolve(revision)
        prefix = path.strip("/")
        recursive = self.query.get("recursive", "").lower() in ("1", "true")
        entries: dict[str, dict] = {}
        found = prefix == ""
        for file_path, f in sorted(commit.files.items()):
            if prefix and not file_path.startswith(prefix + "/"):
                found = found or file_path == prefix
                continue
            found = True
            rel_parts = file_path[len(prefix) + 1 if prefix else 0:].split("/")
            depth = len(rel_parts) if recursive else 1
            for i in range(1, min(depth, len(rel_parts) - 1) + 1):
                folder = "/".join(filter(None, [prefix, *rel_parts[:i]]))
                entries.setdefault(folder, {"type": "directory", "path": folder,
                                            "oid": hashlib.sha1(folder.encode()).hexdigest()})
            if recursive or len(rel_parts) == 1:
                entries[file_path] = self._file_json(file_path, f)
        if not found:
            raise HubError(404, f"Entry not found: {path}", "EntryNotFound", {"X-Repo-Commit": commit.sha})
        self._send_json(list(entries.values()))

    def _paths_info(self, repo_id: str, revision: str) -> None:
        commit = self._readable_repo(repo_id).resolve(revision)
        paths = parse_qs(self._read_body().decode()).get("paths", [])
        found = []
        for path in (p.strip("/") for p in paths):
            if path in commit.files:
                found.append(self._file_json(path, commit.files[path]))
            elif any(f.startswith(path + "/") for f in commit.files):
                found.append({"type": "directory", "path": path, "oid": hashlib.sha1(path.encode()).hexdigest()})
        self._send_json(found)

    @staticmethod
    def _file_json(path: str, f: FileEntry) -> dict:
        item = {"type": "file", "path": path, "size": f.size, "oid": f.git_oid}
        if f.lfs:
            item["lfs"] = {"oid": f.sha256, "size": f.size, "pointerSize": 134}
        return item

    def _refs(self, repo_id: str) -> None:
        repo = self._readable_repo(repo_id)
        self._send_json({"branches": [{"name": b, "ref": f"refs/heads/{b}", "targetCommit": sha}
                                      for b, sha in sorted(repo.branches.items())],
                         "converts": [], "tags": []})

    def _resolve(self, repo_id: str, revision: str, path: str) -> None:
        commit = self._readable_repo(repo_id).resolve(revision)
        entry = commit.files.get(path)
        base = {"X-Repo-Commit": commit.sha}
        if entry is None:
            raise HubError(404, f"Entry not found: {path}", "EntryNotFound", base)
        if entry.lfs:
            location = self.hub.signed_cdn_url("download", entry.sha256)
            return self._send(302, b"", {**base, "Location": location, "ETag": f'"{entry.git_oid}"',
                                         "X-Linked-Etag": f'"{entry.sha256}"', "X-Linked-Size": str(entry.size)})
        self._send_blob(entry.sha256, {**base, "ETag": f'"{entry.git_oid}"'})

    def _send_blob(self, sha256: str, headers: dict) -> None:
        data = self.hub.store.blob_path(sha256).read_bytes()
        match = re.match(r"bytes=(\d+)-(\d*)$", self.headers.get("Range", ""))
        if match and int(match.group(1)) < len(data):
            start, end = int(match.group(1)), min(int(match.group(2) or len(data) - 1), len(data) - 1)
            headers = {**headers, "Content-Range": f"bytes {start}-{end}/{len(data)}"}
            return self._send(206, data[start:end + 1], headers, "application/octet-stream")
        self._send(200, data, headers, "application/octet-stream")

    def _cdn(self, method: str, sha256: str, upload: bool) -> None:
        kind = "upload" if upload else "download"
        if not hmac.compare_digest(self.query.get("sig", ""), self.hub.signature(kind, sha256)):
            raise HubError(403, "Bad or missing signature on storage URL")
        if upload and method == "PUT":
            self.hub.store.write_blob_checked(sha256, self._read_body())
            return self._send(200, b"", {"ETag": f'"{sha256}"'})
        if upload or not self.hub.store.has_blob(sha256):
            raise HubError(404, "No such object")
        self._send_blob(sha256, {"ETag": f'"{sha256}"'})

    def _preupload(self, repo_id: str, revision: str) -> None:
        self._require_write()
        commit = self.hub.store.get_repo(repo_id).resolve(revision)
        files = []
        for item in self._json_body().get("files", []):
            path, size = item["path"], int(item["size"])
            sample = base64.b64decode(item.get("sample", ""))
            lfs = is_lfs_file(path, size, sample) and size > 0
            existing = commit.files.get(path)
            oid = (existing.sha256 if existing.lfs else existing.git_oid) if existing else None
            files.append({"path": path, "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False, "oid": oid})
        self._send_json({"files": files, "commitOid": commit.sha})

    def _lfs_batch(self, repo_id: str) -> None:
        self._require_write()
        self.hub.store.get_repo(repo_id)
        body = self._json_body()
        if body.get("operation") != "upload":
            raise HubError(400, "The test hub's LFS batch API only accepts uploads")
        objects = []
        for obj in body.get("objects", []):
            oid, size = obj["oid"], int(obj["size"])
            item = {"oid": oid, "size": size, "authenticated": True}
            if not self.hub.store.has_blob(oid, size):
                item["actions"] = {
                    "upload": {"href": self.hub.signed_cdn_url("upload", oid)},
                    "verify": {"href": f"{self.hub.endpoint}/{repo_id}.git/info/lfs/objects/verify"},
                }
            objects.append(item)
        self._send(200, json.dumps({"transfer": "basic", "objects": objects}).encode(), {},
                   "application/vnd.git-lfs+json")

    def _lfs_verify(self) -> None:
        self._require_write()
        body = self._json_body()
        if not self.hub.store.has_blob(body.get("oid", ""), body.get("size")):
            raise HubError(404, f"LFS object {body.get('oid')} was not uploaded")
        self._send_json({"success": True})

    def _commit(self, repo_id: str, revision: str) -> None:
        self._require_write()
        store = self.hub.store
        store.get_repo(repo_id)
        if self.query.get("create_pr"):
            raise HubError(400, "The test hub does not support pull requests (create_pr)")
        header: dict = {}
        changes: dict[str, FileEntry | None] = {}
        deleted_folders: list[str] = []
        for line in self._read_body().splitlines():
            if not line.strip():
                continue
            item = json.loads(line)
            key, value = item["key"], item["value"]
            if key == "header":
                header = value
            elif key == "file":
                try:
                    data = base64.b64decode(value["content"], validate=True)
                except binascii.Error as err:
                    raise HubError(400, f"File {value.get('path')} is not valid base64") from err
                changes[value["path"]] = FileEntry(store.put_blob(data), len(data), git_blob_oid(data), False)
            elif key == "lfsFile":
                oid = value["oid"]
                if not store.has_blob(oid, value.get("size")):
                    raise HubError(400, f"LFS file {value['path']} ({oid}) was not uploaded before the commit")
                size = store.blob_path(oid).stat().st_size
                changes[value["path"]] = FileEntry(oid, size, git_blob_oid(f"lfs:{oid}".encode()), True)
            elif key == "deletedFile":
                changes[value["path"]] = None
            elif key == "deletedFolder":
                deleted_folders.append(value["path"])
            else:
                raise HubError(400, f"Unknown commit operation {key!r}")
        if not header.get("summary"):
            raise HubError(400, "Commit header with a summary is required")
        message = header["summary"] + (f"\n\n{header['description']}" if header.get("description") else "")
        commit = store.commit(repo_id, revision, message, header.get("parentCommit"), changes, deleted_folders)
        self._send_json({"success": True, "commitOid": commit.sha,
                         "commitUrl": f"{self.hub.endpoint}/{repo_id}/commit/{commit.sha}"})


class HubServer:
    """The test Hub: an API origin (`endpoint`) plus a storage origin for signed LFS URLs, both on 127.0.0.1."""

    def __init__(self, root: Path, *, token: str | None = None, port: int = 0, user: str = "growlm-tester",
                 verbose: bool = False):
        self.store = HubStore(root)
        self.token = token or "hf_test_" + secrets.token_hex(16)
        self.user = user
        self.verbose = verbose
        self._secret = secrets.token_bytes(32)
        handler = type("BoundHubRequestHandler", (HubRequestHandler,), {"hub": self})
        self._api = ThreadingHTTPServer(("127.0.0.1", port), handler)
        self._cdn = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        for srv in (self._api, self._cdn):
            srv.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self._api.server_port}"
        self.cdn_endpoint = f"http://127.0.0.1:{self._cdn.server_port}"
        self._threads: list[threading.Thread] = []

    def signature(self, kind: str, sha256: str) -> str:
        return hmac.new(self._secret, f"{kind}:{sha256}".encode(), hashlib.sha256).hexdigest()

    def signed_cdn_url(self, kind: str, sha256: str) -> str:
        return f"{self.cdn_endpoint}/cdn/{kind}/{sha256}?sig={quote(self.signature(kind, sha256))}"

    def start(self) -> "HubServer":
        for srv in (self._api, self._cdn):
            thread = threading.Thread(target=srv.serve_forever, name=f"hub-{srv.server_port}", daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        for srv in (self._api, self._cdn):
            srv.shutdown()
            srv.server_close()
        for thread in self._threads:
            thread.join(timeout=5)

    def __enter__(self) -> "HubServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def add_repo(self, repo_id: str, local_dir: Path, revision: str = "main", private: bool = False) -> str:
        """Seed a repo directly from a local folder (no HTTP; a dataset repo as `datasets/org/name`); returns the
        new commit sha."""
        return self.store.add_folder(repo_id, Path(local_dir), revision, private)

    def client_env(self) -> dict[str, str]:
        """Environment for a client process (subprocess, demo) talking to this server."""
        return {"HF_ENDPOINT": self.endpoint, "HF_TOKEN": self.token, "HF_HUB_OFFLINE": "0",
                "HF_HUB_DISABLE_XET": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Serve a local Hub-compatible test server (model and dataset repos).")
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0 = any free port)")
    parser.add_argument("--root", type=Path, required=True, help="folder that stores repos and blobs")
    parser.add_argument("--token-env", default="HF_TOKEN",
                        help="environment variable holding the write token the server accepts (default HF_TOKEN)")
    parser.add_argument("--verbose", action="store_true", help="log every request to stderr")
    args = parser.parse_args(argv)
    token = os.environ.get(args.token_env)
    if not token:
        raise SystemExit(f"hub_server: set ${args.token_env} to the write token clients will use "
                         f"(e.g. {args.token_env}=hf_local_demo python -m growlm.hub_server --root DIR)")
    args.root.mkdir(parents=True, exist_ok=True)
    server = HubServer(args.root, token=token, port=args.port, verbose=args.verbose)
    server.start()
    print(server.endpoint, flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        server.stop()


if __name__ == "__main__":
    main()
