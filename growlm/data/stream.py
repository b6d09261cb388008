"""Per-rank infinite stream of packed token blocks with an exact, resumable position; fixed validation blocks.

Exact state. `datasets`' ``IterableDataset.state_dict()`` records only the source position (shard and
example index); the content of the shuffle buffer is not saved, so a resumed shuffled stream refills the
buffer and yields a different order (datasets 5.2 ``BufferShuffledExamplesIterable.load_state_dict`` says
so in a warning). The position is therefore kept as (epoch, index of the document in that epoch's
deterministic order, tokens of that document already packed, next global block index). The order of
epoch e is fixed by ``shuffle(seed=cfg.seed + e, buffer_size=cfg.shuffle_buffer)``, so resuming rebuilds
that order and skips the documents before the position (skipped documents are read, not tokenized).
The state stays a few integers: no token buffer needs saving because the partial block is re-derived
from the document it ends in.

Ranks. All ranks pack the same global block sequence and rank r keeps blocks r, r + P, r + 2P, ...
`split_dataset_by_node` would split documents (by shard or by example) before packing, which makes the
blocks depend on the world size; training.md §10 requires sample k to be the same for every world size,
micro-batch and accumulation setting, so the split is done on packed blocks instead.
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace

import datasets
import torch
from datasets import IterableDataset as HFIterableDataset
from torch.utils.data import IterableDataset

from growlm.data.config import DataConfig
from growlm.data.packing import pack_documents
from growlm.data.sources import load_split
from growlm.data.tokenizer import encode_documents, load_tokenizer

TOKENIZE_BATCH = 16  # documents per tokenizer call
# Config fields that fix the block order; a saved position is only valid for the same values.
ORDER_FIELDS = ("format", "train_split", "exclude_sets", "include_sets", "seq_len", "shuffle_buffer", "seed", "block_shuffle")
ORDER_DEFAULTS = {"format": "stream", "block_shuffle": 0}  # states saved before a field existed carry its default


@dataclass(frozen=True)
class StreamPosition:
    """Where the global block stream stands: the next block starts after token ``used`` of document
    ``document`` of epoch ``epoch``; ``block`` is the global index of that next block."""

    epoch: int = 0
    document: int = 0
    used: int = 0
    block: int = 0


def _tokenized(dataset: HFIterableDataset, tokenizer, first_key: int) -> Iterator[tuple[int, list[int]]]:
    """``(index, token_ids)`` for each document of ``dataset``, indices counting from ``first_key``."""
    texts = (example["text"] for example in dataset)
    index = first_key
    while batch := list(itertools.islice(texts, TOKENIZE_BATCH)):
        for ids in encode_documents(tokenizer, batch):
            yield index, ids
            index += 1


class PackedStream(IterableDataset):
    """Blocks of ``seq_len + 1`` token ids for one rank: documents filtered, shuffled per epoch, EOS after
    each, packed with no padding, looping over epochs forever. Use with ``num_workers=0`` so that
    ``state_dict()`` sees the position of the blocks handed out."""

    def __init__(self, cfg: DataConfig, *, rank: int = 0, world_size: int = 1, tokenizer=None):
        super().__init__()
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"Need 0 <= rank < world_size, got rank={rank}, world_size={world_size}.")
        self.cfg = cfg
        self.rank = rank
        self.world_size = world_size
        self.tokenizer = tokenizer if tokenizer is not None else load_tokenizer(cfg.tokenizer)
        self._documents = load_split(cfg, cfg.train_split)
        self._position = StreamPosition()

    def epoch_documents(self, epoch: int) -> HFIterableDataset:
        """The kept training documents of ``epoch`` in that epoch's shuffled order."""
        return self._documents.shuffle(seed=self.cfg.seed + epoch, buffer_size=self.cfg.shuffle_buffer)

    def _documents_from(self, position: StreamPosition) -> Iterator[tuple[tuple[int, int], list[int]]]:
        """``((epoch, index), token_ids)`` of every document from ``position`` on, across epochs."""
        epoch, start = position.epoch, position.document
        while True:
            found = False
            documents = self.epoch_documents(epoch).skip(start)
            for index, ids in _tokenized(documents, self.tokenizer, start):
                found = True
                yield (epoch, index), ids
            if not found and start == 0:
                raise ValueError(
                    f"No documents left in split {self.cfg.train_split!r} of {self.cfg.source!r} after "
                    f"filtering (exclude_sets={self.cfg.exclude_sets}, include_sets={self.cfg.include_sets})."
                )
            epoch, start = epoch + 1, 0

    def __iter__(self) -> Iterator[torch.LongTensor]:
        """Blocks of this rank from the current position on; ``state_dict()`` follows each yielded block."""
        if self.cfg.block_shuffle > 1:
            yield from self._window_shuffled()
            return
        start = self._position
        blocks = pack_documents(self._documents_from(start), self.cfg.block_len, skip_tokens=start.used)
        for block_index, (block, (epoch, document), used) in enumerate(blocks, start=start.block):
            if block_index % self.world_size != self.rank:
                continue
            self._position = StreamPosition(epoch=epoch, document=document, used=used, block=block_index + 1)
            yield torch.tensor(block, dtype=torch.long)

    def _window_shuffled(self) -> Iterator[torch.LongTensor]:
        """Global block b is block ``perm_k[b - kW]`` of window k (the packed blocks kW .. kW + W - 1), with perm_k
        seeded by (seed, k). The saved position is the packing position at the window's start plus the global
        block index, so a resume re-packs at most one window and the order stays independent of the world size."""
        width, start = self.cfg.block_shuffle, self._position
        window = start.block // width
        window_start = StreamPosition(start.epoch, start.document, start.used, window * width)
        blocks = pack_documents(self._documents_from(window_start), self.cfg.block_len, skip_tokens=window_start.used)
        skip = start.block - window * width
        while True:
            packed = list(itertools.islice(blocks, width))
            (epoch, document), used = packed[-1][1], packed[-1][2]
            window_end = StreamPosition(epoch, document, used, (window + 1) * width)
            order = torch.randperm(width, generator=torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + window))
            for offset in range(skip, width):
                index = window * width + offset
                if index % self.world_size != self.rank:
                    continue
                self._position = window_end if offset == width - 1 else replace(window_start, block=index + 1)
                yield torch.tensor(packed[int(order[offset])][0], dtype=torch.long)
            window, window_start, skip = window + 1, window_end, 0

    def _order(self) -> dict:
        """The order-defining config values, as they read back from JSON (sequences become lists)."""
        values = {name: getattr(self.cfg, name) for name in ORDER_FIELDS}
        return {name: list(v) if isinstance(v, (list, tuple)) else v for name, v in values.items()}

    def state_dict(self) -> dict:
        """The exact position after the last block yielded (plain ints; JSON-serialisable).

        ``block`` is the next global block index. Positions are global, so the state of the last rank
        after a step that every rank finished can be loaded by every rank, for any world size. The ``datasets``
        version is recorded because its shuffle buffer fixes the document order."""
        return {**asdict(self._position), "order": self._order(), "datasets_version": datasets.__version__}

    def load_state_dict(self, state: dict) -> None:
        """Continue from a position saved by ``state_dict()`` of a stream with the same order fields."""
        saved = {**ORDER_DEFAULTS, **state["order"]}
        changed = {name: (saved.get(name), value) for name, value in self._order().items() if saved.get(name) != value}
        if changed:
            raise ValueError(
                f"Data state was saved with a different block order; (saved, now) per field: {changed}. "
                f"Resume with the data config the state was saved with."
            )
        if state.get("datasets_version", datasets.__version__) != datasets.__version__:
            warnings.warn(f"Data state was saved with datasets {state['datasets_version']}, this is "
                          f"{datasets.__version__}; the shuffled document order may differ.", stacklevel=2)
        self._position = StreamPosition(
            epoch=state["epoch"], document=state["document"], used=state["used"], block=state["block"]
        )


def validation_blocks(cfg: DataConfig, *, tokenizer=None) -> torch.LongTensor:
    """``cfg.validation_blocks`` packed blocks spread evenly over the whole validation split, ``[n, seq_len + 1]``.

    Same filter, tokenizer and packing as training, documents in source order (no shuffle), so the
    blocks are identical on every rank and in every run; spreading them (rather than taking the first n)
    covers every document instead of the first few long ones. Warns when the split holds fewer blocks.
    With ``format: shards`` the blocks come from the validation split's token shards (the same tokens)."""
    tokenizer = tokenizer if tokenizer is not None else load_tokenizer(cfg.tokenizer)
    if cfg.format == "shards":
        from growlm.data.shards import open_shards  # shards.py builds on this module

        shards = open_shards(cfg, cfg.validation_split, tokenizer)
        count = shards.total // cfg.block_len

        def block(i: int) -> list[int]:
            return shards.block(i, cfg.block_len).tolist()
    else:
        documents = _tokenized(load_split(cfg, cfg.validation_split), tokenizer, 0)
        every = [block for block, _, _ in pack_documents(documents, cfg.block_len)]
        count, block = len(every), every.__getitem__
    n = min(cfg.validation_blocks, count)
    blocks = [block(i * count // n) for i in range(n)] if n else []
    if not blocks:
        raise ValueError(
            f"Validation split {cfg.validation_split!r} of {cfg.source!r} has fewer than {cfg.block_len} kept "
            f"tokens, not even one block; lower seq_len or use a larger validation split."
        )
    if len(blocks) < cfg.validation_blocks:
        warnings.warn(
            f"Validation split {cfg.validation_split!r} holds only {len(blocks)} blocks of {cfg.block_len} "
            f"tokens (asked for {cfg.validation_blocks}); using {len(blocks)}.",
            stacklevel=2,
        )
    return torch.tensor(blocks, dtype=torch.long)
