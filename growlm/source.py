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

from growlm.growth.safetensors_io import read_weight_map
from growlm.hub_push import is_repo_id

# The files that define a Hugging Face tokenizer (hashed in this order by `tokenizer_sha256`, copied by growth).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                   "added_tokens.json", "chat_template.jinja")
# Only what a grown / evaluated model needs: no .bin/.pth duplicates, no optimizer states.
# Size fields every Llama config.json must hold as positive integers (optional ones: when present and not null).
REQUIRED_SIZES = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
OPTIONAL_SIZES = ("num_key_value_heads", "head_dim", "max_position_embeddings")
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
    """Return the folder's config.json dict after checking it describes a `LlamaForCausalLM` that needs no custom
    code, with valid sizes, and that its weight index (if any) names only files inside the folder."""
    label = label or f"source {path}"
    config_file = path / "config.json"
    if not config_file.is_file():
        raise ValueError(f"{label} has no config.json; pass a Hugging Face model folder saved with save_pretrained")
    try:
        config = json.loads(config_file.read_text())
    except ValueError as err:
        raise ValueError(f"{label}: config.json is not valid JSON ({err})") from None
    if not isinstance(config, dict):
        raise ValueError(f"{label}: config.json must hold a JSON object, got a {type(config).__name__}; "
                         "re-save the config with save_pretrained")
    if config.get("auto_map"):
        raise ValueError(f"{label}: config.json has an 'auto_map' (custom model code); growlm never runs code from "
                         "a model folder (trust_remote_code=False): use a plain LlamaForCausalLM checkpoint")
    model_type = config.get("model_type")
    architectures = config.get("architectures") or ["LlamaForCausalLM"]
    if model_type != "llama" or not isinstance(architectures, list) or "LlamaForCausalLM" not in architectures:
        raise ValueError(
            f"{label} is not a Llama model (model_type={model_type!r}, architectures={architectures}); "
            "growth supports LlamaForCausalLM checkpoints only"
        )
    check_config_sizes(config, label)
    read_weight_map(path)
    return config


def check_config_sizes(config: dict, label: str) -> None:
    """The size fields of a Llama config.json: positive integers, with heads that divide the widths."""
    def bad(key: str, why: str) -> ValueError:
        value = repr(config[key])[:40] if key in config else "missing"
        return ValueError(f"{label}: config.json {key} is {value}; {why}; re-save the config with save_pretrained")

    for key in REQUIRED_SIZES + OPTIONAL_SIZES:
        value = config.get(key)
        if key in OPTIONAL_SIZES and value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise bad(key, "it must be a positive integer")
    heads, kv_heads = config["num_attention_heads"], config.get("num_key_value_heads") or config["num_attention_heads"]
    if heads % kv_heads:
        raise bad("num_key_value_heads", f"it must divide num_attention_heads={heads}")
    if config.get("head_dim") is None and config["hidden_size"] % heads:
        raise bad("hidden_size", f"without a head_dim it must be a multiple of num_attention_heads={heads}")
    eps = config.get("rms_norm_eps", 1e-6)
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps > 0:
        raise bad("rms_norm_eps", "it must be a positive number")
