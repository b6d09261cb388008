"""Pre-tokenized token shards: tokenize a corpus once (`scripts/tokenize_data.py`), then train from memory maps.

Layout. ``OUT/<split>/NNNNN-<input>.bin`` holds the token ids of input file NNNNN (sorted order): every kept
document, without BOS, EOS after each, in source order, as raw native-endian uint16 (uint32 when the vocab does not
fit), readable with ``numpy.memmap(path, dtype)``. ``NNNNN-<input>.json`` beside it says that the shard is finished
(written after the ``.bin``, both by temp-then-rename), so a re-run skips it; ``OUT/<split>/manifest.json`` lists
every shard (file, tokens, documents, SHA-256) with the tokenizer's SHA-256, the source (and Hub revision), the
document rules, the dtype and the ``datasets`` version. The documents and their token ids are those of the streaming
path (the same filter, ``encode_documents`` and no shuffle), so both paths see the same tokens.

Sample order. An epoch is the concatenation of all shards in an order permuted per epoch (seed ``[seed, epoch]``),
cut into N = tokens // (seq_len + 1) blocks (documents cross block and shard boundaries; the epoch's tail is dropped,
never padded). With ``block_shuffle`` W > 1, in-epoch sample i is block ``w·W + perm_w[i - w·W]`` of window
w = i // W, perm_w seeded by ``[seed, epoch, w]``. Global sample g is sample g mod N of epoch g // N, so any sample
is found in O(1), rank r of P reads g = r, r + P, ... (the global order does not depend on the world size) and the
resume state is just (epoch, index).
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
import logging
import multiprocessing
import os
import time
from collections.abc import Iterator
from pathlib import Path

import datasets
import numpy as np
import torch
from datasets import load_dataset
from torch.utils.data import DataLoader, Dataset, Sampler

from growlm.atomic import write_bytes, write_json
from growlm.data.config import DataConfig
from growlm.data.sources import input_files, keep_documents
from growlm.data.stream import PackedStream
from growlm.data.tokenizer import encode_documents, load_tokenizer
from growlm.data.virtual import VirtualStreams

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
FORMAT = "growlm-token-shards"
ENCODE_BATCH = 64  # documents per tokenizer call
LOAD_BATCH = 32  # blocks per DataLoader fetch (one worker round trip)
RULES = {"bos": False, "eos_after_document": True, "split_special_tokens": True}


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every id fits, else uint32."""
    return np.dtype(np.uint16 if vocab_size <= 1 << 16 else np.uint32)


@functools.lru_cache(maxsize=2)
def _tokenizer(path: str):
    return load_tokenizer(path)


def _tokenize_file(job: dict) -> dict:
    """Write one input file's token shard and its ``.json`` marker (runs in a worker process)."""
    started = time.perf_counter()
    cfg = DataConfig(exclude_sets=job["identity"]["rules"]["exclude_sets"],
                     include_sets=job["identity"]["rules"]["include_sets"])
    tokenizer = _tokenizer(job["tokenizer"])
    dtype = np.dtype(job["identity"]["dtype"])
    documents = keep_documents(load_dataset("json", data_files=[job["input"]], split="train", streaming=True), cfg)
    texts = (example["text"] for example in documents)
    chunks, count = [], 0
    while batch := list(itertools.islice(texts, ENCODE_BATCH)):
        encoded = encode_documents(tokenizer, batch)
        chunks.append(np.fromiter(itertools.chain.from_iterable(encoded), dtype=np.int64).astype(dtype))
        count += len(batch)
    data = b"".join(chunk.tobytes() for chunk in chunks)
    folder = Path(job["folder"])
    write_bytes(folder / job["file"], data, durable=True)
    entry = {"file": job["file"], "input": job["input"], "tokens": len(data) // dtype.itemsize, "documents": count,
             "sha256": hashlib.sha256(data).hexdigest()}
    write_json(folder / Path(job["file"]).with_suffix(".json"), {**entry, "identity": job["identity"]}, durable=True)
    return {**entry, "seconds": time.perf_counter() - started}


def _one_thread() -> None:
    """One tokenizer thread per worker process: the processes already use the cores."""
    os.environ["TOKENIZERS_PARALLELISM"] = "false"


def _finished(folder: Path, file: str, identity: dict) -> dict | None:
    """The entry of a finished shard, None if it must be (re)written; a shard of other settings is an error."""
    marker, data = folder / Path(file).with_suffix(".json"), folder / file
    if not (marker.is_file() and data.is_file()):
        return None
    entry = json.loads(marker.read_text())
    if entry.pop("identity") != identity:
        raise ValueError(f"{folder} holds shards written with other settings (source, tokenizer, rules or dtype); "
                         f"pass a new --out or delete {folder}.")
    return entry if data.stat().st_size == entry["tokens"] * np.dtype(identity["dtype"]).itemsize else None


def tokenize_split(source: str, tokenizer_dir: str, out: str | Path, *, split: str = "train",
                   exclude_sets: list[str] | None = None, include_sets: list[str] | None = None,
                   num_proc: int = 1) -> dict:
    """Tokenize every input file of ``split`` into ``out/<split>/`` (one shard each, ``num_proc`` files at a time;
    finished shards are skipped) and write its manifest; returns the manifest."""
    if num_proc < 1:
        raise ValueError(f"--num-proc must be >= 1, got {num_proc}.")
    cfg = DataConfig(source=source, tokenizer=tokenizer_dir, include_sets=include_sets,
                     exclude_sets=["RedPajamaGithub"] if exclude_sets is None else list(exclude_sets))
    tokenizer = load_tokenizer(tokenizer_dir)
    files, revision = input_files(source, split)
    identity = {"source": source, "revision": revision, "split": split, "tokenizer_sha256": tokenizer.growlm_sha256,
                "dtype": token_dtype(len(tokenizer)).name,
                "rules": {"exclude_sets": cfg.exclude_sets, "include_sets": cfg.include_sets, **RULES}}
    folder = Path(out) / split
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob(".*.tmp"):  # partial shards of a killed run
        stale.unlink()
    names = [f"{i:05d}-{Path(f).name.split('.')[0]}.bin" for i, f in enumerate(files)]
    entries = {name: _finished(folder, name, identity) for name in names}
    jobs = [{"input": f, "file": name, "folder": str(folder), "tokenizer": str(tokenizer_dir), "identity": identity}
            for f, name in zip(files, names) if entries[name] is None]
    logger.info("%s: %d of %d shards to write (%d finished)", folder, len(jobs), len(files), len(files) - len(jobs))
    if num_proc == 1 or len(jobs) <= 1:
        results = map(_tokenize_file, jobs)
        pool = None
    else:
        pool = multiprocessing.get_context("spawn").Pool(min(num_proc, len(jobs)), initializer=_one_thread)
        results = pool.imap_unordered(_tokenize_file, jobs)
    try:
        for done, entry in enumerate(results, start=1):
            logger.info("[%d/%d] %s: %d documents, %d tokens, %.0f tokens/s", done, len(jobs), entry["file"],
                        entry["documents"], entry["tokens"], entry["tokens"] / max(entry.pop("seconds"), 1e-9))
            entries[entry["file"]] = entry
    finally:
        if pool is not None:
            pool.close()
            pool.join()
    shards = [entries[name] for name in names]
    manifest = {"format": FORMAT, "version": 1, **identity, "tokenizer": str(tokenizer_dir),
                "vocab_size": len(tokenizer), "eos_token_id": tokenizer.eos_token_id,
                "datasets_version": datasets.__version__, "tokens": sum(s["tokens"] for s in shards),
                "documents": sum(s["documents"] for s in shards), "shards": shards}
    write_json(folder / MANIFEST, manifest, durable=True)
    return manifest


class TokenShards:
    """One split of a shard folder: its manifest and read-only memory maps (opened lazily in each process)."""

    def __init__(self, folder: str | Path, split: str):
        self.folder = Path(folder) / split
        path = self.folder / MANIFEST
        if not path.is_file():
            raise ValueError(f"No token shards at {self.folder} ({MANIFEST} missing); write them with "
                             f"scripts/tokenize_data.py --split {split} --out {folder}.")
        self.manifest = json.loads(path.read_text())
        self.dtype = np.dtype(self.manifest["dtype"])
        self.lengths = np.array([s["tokens"] for s in self.manifest["shards"]], dtype=np.int64)
        self.total = int(self.lengths.sum())
        self._maps: dict[int, np.memmap] = {}

    def check(self, cfg: DataConfig, tokenizer_sha256: str) -> None:
        """Refuse shards made with another tokenizer or other document rules than ``cfg``."""
        rules = self.manifest["rules"]
        if self.manifest["tokenizer_sha256"] != tokenizer_sha256:
            raise ValueError(f"Token shards {self.folder} were written with another tokenizer (SHA-256 "
                             f"{self.manifest['tokenizer_sha256'][:12]}...); set data.tokenizer to "
                             f"{self.manifest['tokenizer']} or re-tokenize.")
        if (rules["exclude_sets"], rules["include_sets"]) != (list(cfg.exclude_sets), cfg.include_sets):
            raise ValueError(f"Token shards {self.folder} keep exclude_sets={rules['exclude_sets']}, include_sets="
                             f"{rules['include_sets']}; set the same data.exclude_sets / include_sets or re-tokenize.")

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_maps": {}}  # workers open their own maps

    def tokens(self, shard: int) -> np.memmap:
        if shard not in self._maps:
            path = self.folder / self.manifest["shards"][shard]["file"]
            self._maps[shard] = np.memmap(path, dtype=self.dtype, mode="r", shape=(int(self.lengths[shard]),))
        return self._maps[shard]

    def read(self, order: np.ndarray, ends: np.ndarray, start: int, length: int) -> np.ndarray:
        """Tokens ``[start, start + length)`` of the shards concatenated in ``order`` (``ends``: their cumsum)."""
        parts, position = [], int(np.searchsorted(ends, start, side="right"))
        while length:
            shard = int(order[position])
            offset = start - int(ends[position] - self.lengths[shard])
            part = self.tokens(shard)[offset:offset + length]
            parts.append(part)
            start, length, position = start + len(part), length - len(part), position + 1
        return np.concatenate(parts) if len(parts) > 1 else np.asarray(parts[0])

    def block(self, index: int, block_len: int) -> np.ndarray:
        """Block ``index`` of the shards in manifest order."""
        order = np.arange(len(self.lengths))
        return self.read(order, np.cumsum(self.lengths), index * block_len, block_len)


def open_shards(cfg: DataConfig, split: str, tokenizer=None) -> TokenShards:
    """The token shards of ``split`` under ``cfg.source``, checked against the tokenizer and document rules."""
    shards = TokenShards(cfg.source, split)
    tokenizer = tokenizer if tokenizer is not None else load_tokenizer(cfg.tokenizer)
    shards.check(cfg, tokenizer.growlm_sha256)
    return shards


class ShardSamples(Dataset):
    """Global sample g -> its block of ``seq_len + 1`` tokens (int64), in the seeded two-level order of the module
    docstring; map-style, so DataLoader workers can fetch any sample."""

    def __init__(self, shards: TokenShards, cfg: DataConfig):
        self.shards, self.block_len, self.seed = shards, cfg.block_len, cfg.seed
        self.window = max(cfg.block_shuffle, 1)
        self.blocks_per_epoch = shards.total // cfg.block_len
        if not self.blocks_per_epoch:
            raise ValueError(f"Token shards {shards.folder} hold {shards.total} tokens, less than one block of "
                             f"{cfg.block_len}; lower seq_len or tokenize more data.")

    @functools.lru_cache(maxsize=2)
    def epoch_order(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """Shard order of ``epoch`` and the cumulative token counts in that order."""
        order = np.random.default_rng([self.seed, epoch]).permutation(len(self.shards.lengths))
        return order, np.cumsum(self.shards.lengths[order])

    @functools.lru_cache(maxsize=4)
    def window_order(self, epoch: int, window: int) -> np.ndarray:
        size = min(self.window, self.blocks_per_epoch - window * self.window)
        return np.random.default_rng([self.seed, epoch, window]).permutation(size)

    def block_of(self, sample: int) -> tuple[int, int]:
        """(epoch, block index within that epoch's shard concatenation) of global ``sample``."""
        epoch, index = divmod(sample, self.blocks_per_epoch)
        if self.window == 1:
            return epoch, index
        window, offset = divmod(index, self.window)
        return epoch, window * self.window + int(self.window_order(epoch, window)[offset])

    def __getitem__(self, sample: int) -> torch.Tensor:
        epoch, block = self.block_of(sample)
        order, ends = self.epoch_order(epoch)
        tokens = self.shards.read(order, ends, block * self.block_len, self.block_len)
        return torch.from_numpy(tokens.astype(np.int64))


class _Strided(Sampler):
    """Sample indices start, start + step, ... forever."""

    def __init__(self, start: int, step: int):
        self.start, self.step = start, step

    def __iter__(self) -> Iterator[int]:
        return itertools.count(self.start, self.step)


class ShardStream:
    """This rank's blocks from token shards (rank r of P reads global samples r, r + P, ...), loaded by a
    DataLoader with ``cfg.num_workers`` workers (pinned memory on CUDA) so loading overlaps compute; ``state_dict()``
    follows each block handed out, not the ones prefetched."""

    def __init__(self, cfg: DataConfig, *, rank: int = 0, world_size: int = 1, tokenizer=None):
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"Need 0 <= rank < world_size, got rank={rank}, world_size={world_size}.")
        self.cfg, self.rank, self.world_size = cfg, rank, world_size
        self.samples = ShardSamples(open_shards(cfg, cfg.train_split, tokenizer), cfg)
        self._next = 0  # the next global sample index

    def __iter__(self) -> Iterator[torch.Tensor]:
        start = self._next + (self.rank - self._next) % self.world_size
        loader = DataLoader(self.samples, batch_size=LOAD_BATCH, sampler=_Strided(start, self.world_size),
                            num_workers=self.cfg.num_workers, pin_memory=torch.cuda.is_available())
        samples = itertools.count(start, self.world_size)
        for batch in loader:
            for block, sample in zip(batch, samples):  # batch first: zip stops without drawing a sample
                self._next = sample + 1
                yield block

    def _order(self) -> dict:
        shards = self.samples.shards
        listing = json.dumps([[s["file"], s["tokens"]] for s in shards.manifest["shards"]]).encode()
        return {"format": "shards", "train_split": self.cfg.train_split, "seq_len": self.cfg.seq_len,
                "seed": self.cfg.seed, "block_shuffle": self.cfg.block_shuffle,
                "tokenizer_sha256": shards.manifest["tokenizer_sha256"],
                "shards_sha256": hashlib.sha256(listing).hexdigest()}

    def state_dict(self) -> dict:
        """(epoch, index) of the next global sample; the same for every world size (JSON-serialisable)."""
        epoch, index = divmod(self._next, self.samples.blocks_per_epoch)
        return {"epoch": epoch, "index": index, "order": self._order()}

    def load_state_dict(self, state: dict) -> None:
        """Continue from a position saved by ``state_dict()`` over the same shards and order fields."""
        saved = {"format": "stream", **state["order"]}
        changed = {name: (saved.get(name), value) for name, value in self._order().items() if saved.get(name) != value}
        if changed:
            raise ValueError(f"Data state was saved with a different sample order; (saved, now) per field: {changed}. "
                             f"Resume with the data config and shards the state was saved with.")
        self._next = state["epoch"] * self.samples.blocks_per_epoch + state["index"]


def build_train_stream(cfg: DataConfig, *, rank: int, world_size: int,
                       tokenizer) -> PackedStream | VirtualStreams | ShardStream:
    """The training stream of ``cfg.format`` (and ``cfg.virtual_streams``): iterate for this rank's blocks;
    ``state_dict`` / ``load_state_dict``."""
    stream = ShardStream if cfg.format == "shards" else VirtualStreams if cfg.virtual_streams else PackedStream
    return stream(cfg, rank=rank, world_size=world_size, tokenizer=tokenizer)


def global_data_state(states: list[dict]) -> dict:
    """The data position of a whole run from its ranks' ``state_dict()`` states after the same step (rank order), which
    any world size resumes: the last rank's (it holds the step's last global sample) plus, with virtual streams, the
    positions of every rank's streams."""
    last = states[-1]
    if "streams" not in last:
        return last
    return {**last, "streams": {name: position for state in states for name, position in state["streams"].items()}}
