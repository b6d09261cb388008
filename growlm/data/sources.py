"""Resolve a data source (Hub id, SlimPajama-layout folder, or glob) into a streamed, filtered `datasets` split."""

from __future__ import annotations

import glob
import re
from pathlib import Path

from datasets import IterableDataset, load_dataset

from growlm.data.config import DataConfig

SHARD_SUFFIXES = (".jsonl.zst", ".jsonl")
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def _is_glob(source: str) -> bool:
    return any(char in source for char in "*?[") or "{split}" in source


def is_local(source: str) -> bool:
    """Whether ``source`` names local files (an existing folder or a glob) rather than a Hub dataset."""
    return Path(source).is_dir() or _is_glob(source)


def shard_files(source: str, split: str) -> list[str]:
    """Sorted shard files of ``split`` in a local folder or glob; raises ValueError when there are none."""
    if _is_glob(source):
        if "{split}" not in source and split != "train":
            raise ValueError(
                f"Data source glob {source!r} has no '{{split}}' placeholder, so it cannot provide the "
                f"{split!r} split; write it as e.g. 'corpus/{{split}}/*.jsonl.zst'."
            )
        pattern = source.replace("{split}", split)
        files = sorted(f for f in glob.glob(pattern, recursive=True) if f.endswith(SHARD_SUFFIXES))
        if not files:
            raise ValueError(f"Data source glob {pattern!r} matches no *.jsonl.zst or *.jsonl files.")
        return files
    folder = Path(source) / split
    files = sorted(str(p) for suffix in SHARD_SUFFIXES for p in folder.rglob(f"*{suffix}"))
    if not files:
        raise ValueError(
            f"No *.jsonl.zst or *.jsonl shards under {folder}; a local source must use SlimPajama's "
            f"layout (<source>/{split}/chunk*/*.jsonl.zst) or be a glob."
        )
    return files


def load_split(cfg: DataConfig, split: str) -> IterableDataset:
    """The streamed ``split`` of ``cfg.source`` with the set-name filter applied (documents in source order)."""
    source = cfg.source
    if is_local(source):
        dataset = load_dataset("json", data_files=shard_files(source, split), split="train", streaming=True)
    elif HUB_ID.match(source) and not Path(source).exists():
        dataset = load_dataset(source, split=split, streaming=True)
    else:
        raise ValueError(
            f"Data source {source!r} not found: pass an existing SlimPajama-layout folder, "
            f"a glob of *.jsonl.zst / *.jsonl files, or a Hub dataset id such as 'cerebras/SlimPajama-627B'."
        )
    return keep_documents(dataset, cfg)


def keep_documents(dataset: IterableDataset, cfg: DataConfig) -> IterableDataset:
    """``dataset`` with the set-name filter of ``cfg`` applied (documents in source order)."""
    return dataset.filter(lambda example: cfg.keeps((example.get("meta") or {}).get("redpajama_set_name")))


def input_files(source: str, split: str) -> tuple[list[str], str | None]:
    """The input files of ``split`` (paths, or ``hf://`` URLs pinned to the revision) and the Hub revision."""
    if is_local(source):
        return shard_files(source, split), None
    if not (HUB_ID.match(source) and not Path(source).exists()):
        raise ValueError(f"--source {source!r} not found: pass a SlimPajama-layout folder, a glob of *.jsonl.zst / "
                         f"*.jsonl files, or a Hub dataset id such as 'cerebras/SlimPajama-627B'.")
    from huggingface_hub import HfApi

    api = HfApi()
    revision = api.dataset_info(source).sha
    files = sorted(f for f in api.list_repo_files(source, repo_type="dataset", revision=revision)
                   if f.startswith(f"{split}/") and f.endswith(SHARD_SUFFIXES))
    if not files:
        raise ValueError(f"Hub dataset {source!r} has no {split}/**/*.jsonl[.zst] files; pick another --split.")
    return [f"hf://datasets/{source}@{revision}/{f}" for f in files], revision
