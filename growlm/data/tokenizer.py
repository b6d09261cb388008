"""Tokenizer loading and fingerprinting (raw pretraining text: no BOS, EOS appended, specials split)."""

from __future__ import annotations

import hashlib
from pathlib import Path

from transformers import AutoTokenizer, PreTrainedTokenizerBase

from growlm.source import TOKENIZER_FILES



def tokenizer_sha256(tokenizer_dir: str | Path) -> str:
    """SHA-256 over the tokenizer files present in ``tokenizer_dir`` (name, size and bytes of each)."""
    folder = Path(tokenizer_dir)
    present = [folder / name for name in TOKENIZER_FILES if (folder / name).is_file()]
    if not present:
        raise ValueError(f"No tokenizer files ({', '.join(TOKENIZER_FILES)}) in {folder}; pass a tokenizer folder.")
    digest = hashlib.sha256()
    for path in present:
        data = path.read_bytes()
        digest.update(f"{path.name}\0{len(data)}\0".encode())
        digest.update(data)
    return digest.hexdigest()


def _local_tokenizer_dir(name_or_path: str) -> Path:
    """The folder holding the tokenizer files: the path itself, or the Hub snapshot (cache when offline)."""
    path = Path(name_or_path)
    if path.is_dir():
        return path
    if path.exists() or name_or_path.startswith((".", "/", "~")):
        raise ValueError(f"Tokenizer folder {name_or_path!r} not found; pass an existing folder or a Hub id.")
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(name_or_path, allow_patterns=list(TOKENIZER_FILES)))


def load_tokenizer(name_or_path: str) -> PreTrainedTokenizerBase:
    """Load a fast tokenizer with ``split_special_tokens=True`` and record its SHA-256 as ``growlm_sha256``."""
    folder = _local_tokenizer_dir(str(name_or_path))
    tokenizer = AutoTokenizer.from_pretrained(folder, split_special_tokens=True, trust_remote_code=False)
    if tokenizer.eos_token_id is None:
        raise ValueError(f"Tokenizer {name_or_path!r} has no EOS token; packing needs one to separate documents.")
    tokenizer.growlm_sha256 = tokenizer_sha256(folder)
    return tokenizer


def encode_documents(tokenizer: PreTrainedTokenizerBase, texts: list[str]) -> list[list[int]]:
    """Token ids of each text without BOS, literal special-token strings split, EOS appended."""
    encoded = tokenizer(texts, add_special_tokens=False, split_special_tokens=True)["input_ids"]
    return [ids + [tokenizer.eos_token_id] for ids in encoded]
