"""Streaming safetensors I/O for growth: a lazy reader and a sharded writer (mergekit-style).

The reader validates every weight file's header and size up front, then opens one shard at a time
with `safe_open`; the writer buffers tensors up to `max_shard_size` bytes and writes
`model-0000k-of-0000n.safetensors` plus `model.safetensors.index.json` like `save_pretrained`.
Peak memory is about one input shard plus one output shard.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import struct
from pathlib import Path, PurePosixPath

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from transformers.utils.hub import convert_file_size_to_int

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
MAX_HEADER_BYTES = 100_000_000  # the safetensors library's own limit

# safetensors dtype tag -> (torch dtype, bytes per element)
_DTYPES: dict[str, tuple[torch.dtype, int]] = {
    "F64": (torch.float64, 8), "F32": (torch.float32, 4), "F16": (torch.float16, 2),
    "BF16": (torch.bfloat16, 2), "I64": (torch.int64, 8), "I32": (torch.int32, 4),
    "I16": (torch.int16, 2), "I8": (torch.int8, 1), "U8": (torch.uint8, 1), "BOOL": (torch.bool, 1),
    "F8_E4M3": (torch.float8_e4m3fn, 1), "F8_E5M2": (torch.float8_e5m2, 1),
}


def safe_member(folder: Path, name: object, entry: str) -> Path:
    """`folder / name` for a file name read from a model folder (an index's weight_map), if it stays inside `folder`.

    Refused, naming `entry` (where the name came from): a non-text or empty name, an absolute path, a `..`
    component, and a symlink whose target lies outside the resolved folder, except a Hub snapshot's links
    (`snapshots/<sha>/<file>` -> `../../blobs/<hash>`) into the same cache repo's `blobs/`.
    """
    def refuse(why: str) -> ValueError:
        return ValueError(f"{entry} {why}; a model folder's weights must lie inside it: use plain relative file "
                          "names in the index and copy linked files into the folder, or re-download the checkpoint")

    if not isinstance(name, str) or not name.strip() or "\0" in name:
        raise refuse("is not a file name")
    parts = PurePosixPath(name).parts
    if PurePosixPath(name).is_absolute() or Path(name).is_absolute():
        raise refuse("is an absolute path")
    if ".." in parts or not parts or parts == (".",):
        raise refuse("reaches outside the model folder ('..')")
    path = folder / name
    roots = [folder.resolve()]
    if folder.parent.name == "snapshots":  # the Hub cache: models--owner--name/{snapshots/<sha>,blobs}
        roots.append((folder.parent.parent / "blobs").resolve())
    target = path.resolve()
    if not any(target.is_relative_to(root) for root in roots):
        raise refuse(f"is a symlink to {target}, outside the model folder")
    return path


def read_weight_map(model_dir: Path) -> dict[str, str] | None:
    """The weight_map of `model_dir`'s index (None without one), every file name checked by `safe_member`."""
    index = model_dir / INDEX_FILE
    if not index.is_file():
        return None
    safe_member(model_dir, INDEX_FILE, f"{index}")
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
    except (ValueError, KeyError, TypeError):
        weight_map = None
    if not isinstance(weight_map, dict) or not all(isinstance(k, str) for k in weight_map):
        raise ValueError(f"corrupt {index}: expected JSON with a 'weight_map' from tensor names to file names;"
                         " re-save the checkpoint")
    for tensor, file in weight_map.items():
        safe_member(model_dir, file, f"{INDEX_FILE} entry {tensor!r}: {file!r}"[:300])
    return dict(weight_map)


def read_safetensors_header(path: Path) -> dict[str, dict]:
    """Validate a safetensors file's header against its size; return {name: {dtype, shape, data_offsets}}.

    A file that is not safetensors is reported with its size only: nothing read from it is echoed."""
    size = path.stat().st_size

    def not_safetensors(why: str) -> ValueError:
        return ValueError(f"{path} is not a safetensors file ({size} bytes{why}); re-save or re-download it")

    with open(path, "rb") as f:
        prefix = f.read(8)
        if len(prefix) < 8:
            raise not_safetensors(", too short for a header")
        (header_len,) = struct.unpack("<Q", prefix)
        if header_len > min(size - 8, MAX_HEADER_BYTES):
            raise not_safetensors(", or it is truncated: its header does not fit")
        try:
            header = json.loads(f.read(header_len))
        except (UnicodeDecodeError, json.JSONDecodeError):
            header = None
    if not isinstance(header, dict):
        raise not_safetensors(", or it is corrupt: no JSON header")
    header.pop("__metadata__", None)
    data_size = size - 8 - header_len
    end = 0
    for name, info in header.items():
        try:
            _, itemsize = _DTYPES[info["dtype"]]
            start, stop = info["data_offsets"]
            expected = itemsize * math.prod(info["shape"])
            if not all(isinstance(dim, int) and dim >= 0 for dim in info["shape"]):
                raise ValueError
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"corrupt safetensors file {path}: bad header entry for {name!r};"
                             " re-save or re-download it") from None
        if stop - start != expected or start < 0:
            raise ValueError(f"corrupt safetensors file {path}"
                             f": tensor {name!r} has {stop - start} bytes, expected {expected}")
        end = max(end, stop)
    if end != data_size:
        raise ValueError(
            f"corrupt or truncated safetensors file {path}: tensors need {end} data bytes but the file holds "
            f"{data_size}; re-save or re-download it"
        )
    return header


class LazySafetensorsReader:
    """Read tensors by HF name from a model folder (`model.safetensors` or an index plus shards), lazily."""

    def __init__(self, model_dir: str | Path):
        self.model_dir = Path(model_dir)
        if not self.model_dir.is_dir():
            raise ValueError(f"model folder {self.model_dir} does not exist;"
                             " pass a folder with config.json and safetensors weights")
        self.shard_of = self._weight_map()
        self.files = sorted(set(self.shard_of.values()))
        self._info: dict[str, dict] = {}
        for file in self.files:
            path = self.model_dir / file
            if not path.is_file():
                raise ValueError(f"missing shard {path} named in {INDEX_FILE}; re-download the checkpoint")
            header = read_safetensors_header(path)
            for name, shard in self.shard_of.items():
                if shard == file and name not in header:
                    raise ValueError(f"tensor {name!r} is listed in {INDEX_FILE} but absent from {path}")
            self._info.update(header)
        self._open_file: str | None = None
        self._handle = None

    def _weight_map(self) -> dict[str, str]:
        weight_map = read_weight_map(self.model_dir)
        if weight_map is not None:
            return weight_map
        single = self.model_dir / SINGLE_FILE
        if single.is_file():
            safe_member(self.model_dir, SINGLE_FILE, str(single))
            return {name: SINGLE_FILE for name in read_safetensors_header(single)}
        if any(self.model_dir.glob("*.bin")) or any(self.model_dir.glob("*.pth")):
            raise ValueError(
                f"{self.model_dir} has no safetensors weights (only .bin/.pth); convert it with "
                "`model.save_pretrained(dir)` (safetensors is the default) or use the lit converter"
            )
        raise ValueError(f"no weights in {self.model_dir}: expected {SINGLE_FILE} or {INDEX_FILE}")

    @property
    def names(self) -> list[str]:
        return list(self.shard_of)

    def dtype(self, name: str) -> torch.dtype:
        return _DTYPES[self._info[name]["dtype"]][0]

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._info[name]["shape"])

    def get_tensor(self, name: str) -> torch.Tensor:
        """Read one tensor (keeping only its shard's handle open)."""
        if name not in self.shard_of:
            raise KeyError(f"tensor {name!r} not found in {self.model_dir}")
        file = self.shard_of[name]
        if file != self._open_file:
            self._handle = safe_open(str(self.model_dir / file), framework="pt")
            self._open_file = file
        return self._handle.get_tensor(name)

    def content_sha256(self) -> str:
        """SHA-256 over the weight files' bytes, in file-name order (identifies the source weights)."""
        digest = hashlib.sha256()
        for file in self.files:
            with open(self.model_dir / file, "rb") as f:
                for block in iter(lambda: f.read(1 << 24), b""):
                    digest.update(block)
        return digest.hexdigest()

    def close(self) -> None:
        self._handle = None
        self._open_file = None

    def __enter__(self) -> LazySafetensorsReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class ShardedSafetensorsWriter:
    """Write tensors into `max_shard_size` shards with an index, like `save_pretrained` (use as a context manager).

    Shards are written under temporary names and renamed to `model-0000k-of-0000n.safetensors` once the
    count is known; a single shard becomes `model.safetensors` with no index.
    """

    def __init__(self, out_dir: str | Path, *, max_shard_size: int | str = "2GB"):
        self.out_dir = Path(out_dir)
        self.max_shard_size = convert_file_size_to_int(max_shard_size)
        if self.max_shard_size <= 0:
            raise ValueError(f"max_shard_size must be positive, got {max_shard_size!r}")
        self._buffer: dict[str, torch.Tensor] = {}
        self._buffer_bytes = 0
        self._shards: list[tuple[str, list[str]]] = []
        self.total_size = 0
        self.total_parameters = 0
        self.finalized = False

    def add(self, name: str, tensor: torch.Tensor) -> None:
        """Queue one tensor; flushes the current shard first if this one would overflow it."""
        if name in self._buffer or any(name in names for _, names in self._shards):
            raise ValueError(f"tensor {name!r} written twice")
        nbytes = tensor.numel() * tensor.element_size()
        if self._buffer and self._buffer_bytes + nbytes > self.max_shard_size:
            self.flush()
        self._buffer[name] = tensor.detach().contiguous()
        self._buffer_bytes += nbytes
        self.total_size += nbytes
        self.total_parameters += tensor.numel()

    def flush(self) -> None:
        if not self._buffer:
            return
        temp_name = f"shard-{len(self._shards):05d}.safetensors.partial"
        try:
            save_file(self._buffer, str(self.out_dir / temp_name), metadata={"format": "pt"})
        except SafetensorError as err:  # an I/O failure (e.g. a full disk) as the OSError it is
            code = re.search(r"\(os error (\d+)\)", str(err))
            if code is None:
                raise
            raise OSError(int(code[1]), os.strerror(int(code[1])), str(self.out_dir / temp_name)) from None
        self._shards.append((temp_name, list(self._buffer)))
        self._buffer, self._buffer_bytes = {}, 0

    def finalize(self) -> list[str]:
        """Flush, give the shards their final names, write the index; returns the weight file names."""
        self.flush()
        if not self._shards:
            raise ValueError("no tensors were written")
        if len(self._shards) == 1:
            (self.out_dir / self._shards[0][0]).rename(self.out_dir / SINGLE_FILE)
            self.finalized = True
            return [SINGLE_FILE]
        count = len(self._shards)
        weight_map: dict[str, str] = {}
        files = []
        for k, (temp_name, names) in enumerate(self._shards, start=1):
            final = f"model-{k:05d}-of-{count:05d}.safetensors"
            (self.out_dir / temp_name).rename(self.out_dir / final)
            weight_map.update(dict.fromkeys(names, final))
            files.append(final)
        index = {"metadata": {"total_parameters": self.total_parameters, "total_size": self.total_size},
                 "weight_map": dict(sorted(weight_map.items()))}
        (self.out_dir / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")
        self.finalized = True
        return files

    def __enter__(self) -> ShardedSafetensorsWriter:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None and not self.finalized:
            self.finalize()
