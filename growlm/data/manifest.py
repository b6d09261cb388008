"""A record of exactly which data a run reads (training.md §10 run record)."""

from __future__ import annotations

import hashlib
from dataclasses import asdict
from pathlib import Path

from growlm.data.config import DataConfig
from growlm.data.shards import TokenShards
from growlm.data.sources import is_local, shard_files


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def data_manifest(cfg: DataConfig) -> dict:
    """The data config plus, for a local source, every shard of the train and validation splits with
    its size and SHA-256 (a Hub source is recorded by its id; its files are not hashed). Token shards are recorded
    by their manifests (each shard's token count and SHA-256, the tokenizer, source and rules they were made with)."""
    manifest: dict = {"config": asdict(cfg)}
    if cfg.format == "shards":
        manifest["token_shards"] = {split: TokenShards(cfg.source, split).manifest
                                    for split in (cfg.train_split, cfg.validation_split)}
    elif is_local(cfg.source):
        manifest["shards"] = {
            split: [{"path": path, "bytes": Path(path).stat().st_size, "sha256": file_sha256(path)}
                    for path in shard_files(cfg.source, split)]
            for split in (cfg.train_split, cfg.validation_split)
        }
    else:
        manifest["hub_dataset"] = cfg.source
    return manifest
