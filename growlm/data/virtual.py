"""Streaming that scales with the world size: the input files split over V virtual streams (``data.virtual_streams``).

Split. Input file i (sorted order) belongs to virtual stream i mod V; stream s belongs to rank s mod P, so V must be
a multiple of the world size P and a rank reads and tokenizes only its own V / P streams (~1/P of the data).

Order. Each stream loops over its files forever, in an order permuted per epoch (seed ``[seed, epoch, s]``),
documents in source order (filtered, EOS after each, as in the other paths), packed without padding into
``seq_len + 1`` blocks that cross document and file boundaries. Global sample k is the (k // V)-th block of stream
k mod V; rank r trains samples r, r + P, ..., so the sample order does not depend on P. ``shuffle_buffer`` does not
apply (the V-way interleave mixes V files in every window of V samples).

State. Per stream: (epoch, file position in that epoch's order, kept document within the file, tokens of that
document already packed), taken after each block, so no partial block needs saving and a resume re-reads at most one
file per stream (skipping the documents before the position without tokenizing them). Plus the next global sample.

Prefetch. A background thread tokenizes and packs the rank's next blocks into a bounded queue, so tokenizing overlaps
the training step (fast tokenizers release the GIL); ``state_dict()`` follows the blocks handed out, not the ones
prefetched.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import queue
import threading
from collections.abc import Iterator

import numpy as np
import torch
from datasets import IterableDataset as HFIterableDataset
from datasets import load_dataset

from growlm.data.config import DataConfig
from growlm.data.packing import pack_documents
from growlm.data.sources import input_files, keep_documents
from growlm.data.stream import _tokenized
from growlm.data.tokenizer import load_tokenizer

PREFETCH = 64  # blocks queued ahead of the training loop
ORDER_FIELDS = ("format", "virtual_streams", "train_split", "exclude_sets", "include_sets", "seq_len", "seed")


def file_documents(path: str, cfg: DataConfig) -> HFIterableDataset:
    """The kept documents of one input file, in source order (the only place a virtual stream opens a file)."""
    return keep_documents(load_dataset("json", data_files=[path], split="train", streaming=True), cfg)


class VirtualStreams:
    """This rank's blocks from its virtual streams (module docstring), prefetched by a background thread."""

    def __init__(self, cfg: DataConfig, *, rank: int = 0, world_size: int = 1, tokenizer=None):
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"Need 0 <= rank < world_size, got rank={rank}, world_size={world_size}.")
        streams = cfg.virtual_streams
        if streams < 1 or streams % world_size:
            raise ValueError(f"virtual_streams ({streams}) must be a positive multiple of the number of processes "
                             f"({world_size}); pick e.g. {world_size * max(1, streams // world_size)}.")
        self.cfg, self.rank, self.world_size = cfg, rank, world_size
        self.tokenizer = tokenizer if tokenizer is not None else load_tokenizer(cfg.tokenizer)
        self.files, _ = input_files(cfg.source, cfg.train_split)
        if len(self.files) < streams:
            raise ValueError(f"Split {cfg.train_split!r} of {cfg.source!r} has {len(self.files)} input files, fewer "
                             f"than virtual_streams={streams}; lower virtual_streams or split the data into more files.")
        self.own = range(rank, streams, world_size)
        self.positions = {s: (0, 0, 0, 0) for s in self.own}  # (epoch, file, document, used) per own stream
        self._next = 0  # the next global sample index

    def stream_files(self, stream: int, epoch: int) -> list[str]:
        """The input files of virtual stream ``stream`` in the order of ``epoch``."""
        files = self.files[stream::self.cfg.virtual_streams]
        return [files[i] for i in np.random.default_rng([self.cfg.seed, epoch, stream]).permutation(len(files))]

    def _documents(self, stream: int, epoch: int, file: int, document: int) -> Iterator[tuple[tuple, list[int]]]:
        """``((epoch, file, document), token_ids)`` of ``stream`` from that position on, across epochs."""
        while True:
            fresh, found, files = (file, document) == (0, 0), False, self.stream_files(stream, epoch)
            for position in range(file, len(files)):
                documents = file_documents(files[position], self.cfg).skip(document)
                for index, ids in _tokenized(documents, self.tokenizer, document):
                    found = True
                    yield (epoch, position, index), ids
                document = 0
            if fresh and not found:
                raise ValueError(f"Virtual stream {stream} of {self.cfg.source!r} keeps no documents "
                                 f"(files {files}, exclude_sets={self.cfg.exclude_sets}, "
                                 f"include_sets={self.cfg.include_sets}).")
            epoch, file = epoch + 1, 0

    def blocks(self, stream: int, position: tuple) -> Iterator[tuple[list[int], tuple]]:
        """``(block, position after it)`` of ``stream`` from ``position`` (epoch, file, document, used) on."""
        epoch, file, document, used = position
        packed = pack_documents(self._documents(stream, epoch, file, document), self.cfg.block_len, skip_tokens=used)
        for block, key, used in packed:
            yield block, (*key, used)

    def _produce(self, start: int, positions: dict, out: queue.Queue, stop: threading.Event) -> None:
        """Put ``(sample, stream, block, position)`` for samples start, start + P, ... into ``out`` until ``stop``."""
        try:
            streams = {s: self.blocks(s, positions[s]) for s in self.own}
            for sample in itertools.count(start, self.world_size):
                stream = sample % self.cfg.virtual_streams
                block, position = next(streams[stream])
                item = (sample, stream, torch.tensor(block, dtype=torch.long), position)
                while not stop.is_set():
                    try:
                        out.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        pass
                if stop.is_set():
                    return
        except BaseException as error:  # handed to the training loop, which raises it
            out.put(error)

    def __iter__(self) -> Iterator[torch.Tensor]:
        start = self._next + (self.rank - self._next) % self.world_size
        out, stop = queue.Queue(maxsize=PREFETCH), threading.Event()
        worker = threading.Thread(target=self._produce, args=(start, dict(self.positions), out, stop), daemon=True,
                                  name=f"growlm-virtual-streams-rank{self.rank}")
        worker.start()
        try:
            while True:
                item = out.get()
                if isinstance(item, BaseException):
                    raise item
                sample, stream, block, position = item
                self._next, self.positions[stream] = sample + 1, position
                yield block
        finally:
            stop.set()
            worker.join()

    def _order(self) -> dict:
        values = {name: getattr(self.cfg, name) for name in ORDER_FIELDS}
        values = {name: list(v) if isinstance(v, (list, tuple)) else v for name, v in values.items()}
        return {**values, "files_sha256": hashlib.sha256(json.dumps(self.files).encode()).hexdigest()}

    def state_dict(self) -> dict:
        """The next global sample and the position of each of this rank's streams (JSON-serialisable)."""
        return {"next": self._next, "streams": {str(s): list(p) for s, p in self.positions.items()},
                "order": self._order()}

    def load_state_dict(self, state: dict) -> None:
        """Continue from a state saved by ``state_dict()`` of this rank, or one that holds this rank's streams: of a
        run with fewer processes (e.g. one), or merged over all ranks by ``global_data_state`` (a checkpoint resumed
        on another number of processes, a final export's ``data_state.json``)."""
        saved = {"format": "stream", "virtual_streams": 0, **state["order"]}
        changed = {name: (saved.get(name), value) for name, value in self._order().items() if saved.get(name) != value}
        if changed:
            raise ValueError(f"Data state was saved with a different sample order; (saved, now) per field: {changed}. "
                             f"Resume with the data config and input files the state was saved with.")
        missing = [s for s in self.own if str(s) not in state["streams"]]
        if missing:
            raise ValueError(f"Data state holds no position for virtual streams {missing} of rank {self.rank}; it was "
                             f"saved by a rank with other streams. Resume with the number of processes it was saved "
                             f"with, or from the state of all ranks merged (growlm.data.global_data_state).")
        self._next = state["next"]
        self.positions = {s: tuple(state["streams"][str(s)]) for s in self.own}
