"""Resolve a model source (a local folder or a Hub repo id) to a local Llama checkpoint folder.

Shared by growth (`growth/stack.py --src`), `pretrain.py --init-from` and `evaluate.py --model`.
Hub downloads honour HF_ENDPOINT, HF_TOKEN and HF_HUB_OFFLINE through `huggingface_hub`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from huggingface_hub import snapshot_download
from huggingface_hub.errors import (
    HfHubHTTPError,
    HFValidationError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from growlm.hub_push import is_repo_id

# The files that define a Hugging Face tokenizer (hashed in this order by `tokenizer_sha256`, copied by growth).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                   "added_tokens.json", "chat_template.jinja")
# Only what a grown / evaluated model needs: no .bin/.pth duplicates, no optimizer states.
HUB_FILE_PATTERNS = ["config.json", "generation_config.json", "*.safetensors", "model.safetensors.index.json",
                     *TOKENIZER_FILES]


def has_tokenizer(folder: Path) -> bool:
    """Whether `folder` holds a tokenizer transformers can load (a fast, slow or sentencepiece definition)."""
    return any((folder / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model"))


@dataclass(frozen=True)
class ResolvedSource:
    """A local checkpoint folder and, for Hub sources, where it came from."""

    path: Path
    repo_id: str | None = None
    revision: str | None = None
    commit_sha: str | None = None


def resolve_source(src: str | Path, revision: str | None = None) -> ResolvedSource:
    """A local folder, or a Hub repo id downloaded with `snapshot_download`; checks it is a Llama."""
    local = Path(src).expanduser()
    if local.exists():
        if not local.is_dir():
            raise ValueError(f"source {src} is a file;"
                             " pass the model folder (with config.json and safetensors weights)")
        if revision is not None:
            raise ValueError(f"--revision {revision} only applies to Hub sources, but {src} is a local folder")
        check_llama_folder(local)
        return ResolvedSource(path=local.resolve())
    if not is_repo_id(str(src)):
        raise ValueError(f"source {src} does not exist;"
                         " pass an existing model folder or a Hub repo id like 'owner/name'")
    try:
        path = Path(snapshot_download(str(src), revision=revision, allow_patterns=HUB_FILE_PATTERNS))
    except (HfHubHTTPError, LocalEntryNotFoundError, HFValidationError, OSError) as err:
        raise ValueError(
            f"source {src} is not a local folder and could not be fetched from the Hub"
            f"{f' at revision {revision}' if revision else ''}: {_hub_failure(err)}"
        ) from None
    check_llama_folder(path, label=f"Hub repo {src}")
    return ResolvedSource(path=path, repo_id=str(src), revision=revision or "main", commit_sha=path.name)


def _hub_failure(err: Exception) -> str:
    """One line saying why a download failed and what to check."""
    if isinstance(err, RevisionNotFoundError):
        return "revision not found (check --revision)"
    if isinstance(err, RepositoryNotFoundError):
        return "repository not found, or private (check the repo id, or set HF_TOKEN)"
    if isinstance(err, LocalEntryNotFoundError):
        return "not in the local cache and the Hub is unreachable or HF_HUB_OFFLINE=1"
    first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return f"{first_line} (check the repo id, HF_ENDPOINT, HF_TOKEN and HF_HUB_OFFLINE)"


def check_llama_folder(path: Path, *, label: str | None = None) -> dict:
    """Return the folder's config.json dict after checking it describes a `LlamaForCausalLM`."""
    label = label or f"source {path}"
    config_file = path / "config.json"
    if not config_file.is_file():
        raise ValueError(f"{label} has no config.json; pass a Hugging Face model folder saved with save_pretrained")
    try:
        config = json.loads(config_file.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{label}: config.json is not valid JSON ({err})") from None
    model_type = config.get("model_type")
    architectures = config.get("architectures") or ["LlamaForCausalLM"]
    if model_type != "llama" or "LlamaForCausalLM" not in architectures:
        raise ValueError(
            f"{label} is not a Llama model (model_type={model_type!r}, architectures={architectures}); "
            "growth supports LlamaForCausalLM checkpoints only"
        )
    return config
