"""Typed configuration of the pretraining data pipeline."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from growlm.assets import DEFAULT_DATA_DIR, DEFAULT_TOKENIZER_DIR
from growlm.config_io import arg


@dataclass
class DataConfig:
    """Where the text comes from, which documents are kept, and how they are tokenized and packed."""

    source: str = arg(str(DEFAULT_DATA_DIR), "a Hub dataset id (streamed), a local SlimPajama-layout folder "
                      "(<split>/**/*.jsonl[.zst]) or a glob of *.jsonl.zst / *.jsonl files ({split} selects the split); "
                      "with format shards, the output folder of scripts/tokenize_data.py")
    format: Literal["stream", "shards"] = arg("stream", "stream: tokenize the text while training (quick starts); "
                                              "shards: read pre-tokenized token shards (scripts/tokenize_data.py), "
                                              "the main path at scale")
    train_split: str = arg("train", "split to train on")
    validation_split: str = arg("validation", "split of the held-out validation blocks")
    exclude_sets: list[str] = arg(help="comma list of meta.redpajama_set_name values to drop ([] keeps all)",
                                  default_factory=lambda: ["RedPajamaGithub"])
    include_sets: list[str] | None = arg(None, "comma list of set names to keep (none: all that are not excluded)")
    tokenizer: str = arg(str(DEFAULT_TOKENIZER_DIR), "tokenizer folder or Hub id")
    seq_len: int = arg(2048, "tokens per sequence; blocks are seq_len + 1 tokens (input block[:-1], labels block[1:])")
    shuffle_buffer: int = arg(1000, "documents in the shuffle buffer; epoch e is shuffled with seed + e (stream only)")
    block_shuffle: int = arg(0, "permute packed blocks within windows of this many blocks (0 or 1: off); without it "
                                "a batch holds consecutive blocks, i.e. a few long documents (shards: use e.g. 8192)")
    num_workers: int = arg(2, "DataLoader worker processes reading token shards (format shards; 0: read in the "
                              "training process)")
    virtual_streams: int = arg(0, "format stream: split the input files over this many virtual streams (a multiple "
                                  "of the number of processes; 0: off, every rank tokenizes the whole stream); "
                                  "each rank tokenizes only its own streams, the sample order does not depend on "
                                  "the world size and a resume re-reads at most one file per stream")
    seed: int = arg(3407, "data-order seed")
    validation_blocks: int = arg(64, "fixed held-out blocks for the validation loss")

    def __post_init__(self) -> None:
        if self.seq_len < 1:
            raise ValueError(f"seq_len must be >= 1, got {self.seq_len}.")
        if self.shuffle_buffer < 1:
            raise ValueError(f"shuffle_buffer must be >= 1 (1 = no shuffling), got {self.shuffle_buffer}.")
        if self.block_shuffle < 0:
            raise ValueError(f"block_shuffle must be >= 0 (0 = off), got {self.block_shuffle}.")
        if self.num_workers < 0:
            raise ValueError(f"num_workers must be >= 0 (0 = read in the training process), got {self.num_workers}.")
        if self.virtual_streams < 0:
            raise ValueError(f"virtual_streams must be >= 0 (0 = off), got {self.virtual_streams}.")
        if self.virtual_streams and self.format != "stream":
            raise ValueError("virtual_streams applies to format stream only (token shards already split by sample).")
        if self.virtual_streams and self.block_shuffle > 1:
            raise ValueError("block_shuffle does not apply with virtual_streams (the streams are interleaved "
                             "instead); set one of them to 0.")
        if self.validation_blocks < 1:
            raise ValueError(f"validation_blocks must be >= 1, got {self.validation_blocks}.")
        if not isinstance(self.exclude_sets, (list, tuple)):
            raise ValueError(f"exclude_sets must be a list of set names ([] keeps all), got {self.exclude_sets!r}.")
        if self.include_sets is not None:
            both = sorted(set(self.include_sets) & set(self.exclude_sets))
            if both:
                raise ValueError(f"Set names {both} are both included and excluded; remove them from one list.")

    @property
    def block_len(self) -> int:
        """Tokens per packed block (seq_len + 1)."""
        return self.seq_len + 1

    def keeps(self, set_name: str | None) -> bool:
        """Whether a document with this ``meta.redpajama_set_name`` passes the filter."""
        if set_name in self.exclude_sets:
            return False
        return self.include_sets is None or set_name in self.include_sets
