"""Streaming safetensors I/O for growth: a lazy reader and a planned sharded writer.

The reader validates every weight file's header and size up front and reads one tensor at a time with plain
file reads (no mmap, so untouched shard bytes never count against memory). The writer lays out every shard
(header, offsets) before writing any data, then copies unchanged tensors byte for byte from their source file
(`os.copy_file_range`), writes zero tensors from a small zero block and builds every other tensor only when its
turn comes: peak memory is about the largest single computed tensor, whatever the shard size. The files are
byte-identical to `safetensors.torch.save_file` output, named and indexed like `save_pretrained`.
"""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import torch
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
_TAGS = {dtype: tag for tag, (dtype, _) in _DTYPES.items()}
# safetensors' serializer orders tensors by dtype (this order, last first), then by name
_DTYPE_RANK = {tag: rank for rank, tag in enumerate(
    ["BOOL", "U8", "I8", "F8_E5M2", "F8_E4M3", "I16", "F16", "BF16", "I32", "F32", "F64", "I64"])}
COPY_BLOCK = 1 << 24  # bytes per read/write when copying or zero-filling through user space


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
    """Validate a safetensors file's header against its size; return {name: {dtype, shape, data_offsets}}
    (`data_offsets` relative to the data section, which starts at byte `8 + len(header)`: see `data_start`).

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


def data_start(path: Path) -> int:
    """The file offset of a (validated) safetensors file's data section."""
    with open(path, "rb") as f:
        return 8 + struct.unpack("<Q", f.read(8))[0]


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
        self._data_start: dict[str, int] = {}
        for file in self.files:
            path = self.model_dir / file
            if not path.is_file():
                raise ValueError(f"missing shard {path} named in {INDEX_FILE}; re-download the checkpoint")
            header = read_safetensors_header(path)
            for name, shard in self.shard_of.items():
                if shard == file and name not in header:
                    raise ValueError(f"tensor {name!r} is listed in {INDEX_FILE} but absent from {path}")
            self._info.update(header)
            self._data_start[file] = data_start(path)
        self._handles: dict[str, object] = {}

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

    def byte_range(self, name: str) -> ByteRange:
        """Where tensor `name`'s bytes lie in its weight file."""
        if name not in self.shard_of:
            raise KeyError(f"tensor {name!r} not found in {self.model_dir}")
        file = self.shard_of[name]
        start, stop = self._info[name]["data_offsets"]
        return ByteRange(self.model_dir / file, self._data_start[file] + start, stop - start)

    def get_tensor(self, name: str) -> torch.Tensor:
        """Read one tensor into memory (a plain read: only its own bytes are resident)."""
        where = self.byte_range(name)
        if where.path.name not in self._handles:
            self._handles[where.path.name] = open(where.path, "rb")  # noqa: SIM115 (closed by close())
        handle = self._handles[where.path.name]
        buffer = bytearray(where.nbytes)
        handle.seek(where.offset)
        if handle.readinto(buffer) != where.nbytes:
            raise ValueError(f"{where.path} changed while it was read; re-run the growth")
        if not buffer:
            return torch.empty(self.shape(name), dtype=self.dtype(name))
        return torch.frombuffer(buffer, dtype=self.dtype(name)).reshape(self.shape(name))

    def content_sha256(self) -> str:
        """SHA-256 over the weight files' bytes, in file-name order (identifies the source weights)."""
        digest = hashlib.sha256()
        for file in self.files:
            with open(self.model_dir / file, "rb") as f:
                for block in iter(lambda: f.read(COPY_BLOCK), b""):
                    digest.update(block)
        return digest.hexdigest()

    def close(self) -> None:
        for handle in self._handles.values():
            handle.close()
        self._handles = {}

    def __enter__(self) -> LazySafetensorsReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@dataclass(frozen=True)
class ByteRange:
    """`nbytes` bytes at `offset` in the file `path`."""

    path: Path
    offset: int
    nbytes: int


ZEROS = "zeros"


@dataclass(frozen=True)
class OutputTensor:
    """One tensor to write: its bytes come from a `ByteRange` (copied), are all zero (`ZEROS`) or are built by
    a call (only when written)."""

    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    content: ByteRange | str | Callable[[], torch.Tensor]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


def shard_layout(tensors: list[OutputTensor], max_shard_size: int | str) -> dict[str, list[OutputTensor]]:
    """Group tensors, in order, into files of at most `max_shard_size` bytes (a larger tensor gets its own),
    named like `save_pretrained`: one file is `model.safetensors`, else `model-0000k-of-0000n.safetensors`."""
    limit = convert_file_size_to_int(max_shard_size)
    if limit <= 0:
        raise ValueError(f"max_shard_size must be positive, got {max_shard_size!r}")
    groups: list[list[OutputTensor]] = []
    size = 0
    for tensor in tensors:
        if not groups or (groups[-1] and size + tensor.nbytes > limit):
            groups.append([])
            size = 0
        groups[-1].append(tensor)
        size += tensor.nbytes
    if not groups:
        raise ValueError("no tensors to write")
    if len(groups) == 1:
        return {SINGLE_FILE: groups[0]}
    return {f"model-{k:05d}-of-{len(groups):05d}.safetensors": group for k, group in enumerate(groups, start=1)}


def safetensors_header(tensors: list[OutputTensor]) -> tuple[bytes, list[OutputTensor]]:
    """The header `safetensors.torch.save_file(..., metadata={"format": "pt"})` writes for these tensors, and
    the tensors in its data order (dtype rank descending, then name)."""
    ordered = sorted(tensors, key=lambda t: (-_DTYPE_RANK[_TAGS[t.dtype]], t.name))
    entries: dict[str, dict] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for tensor in ordered:
        entries[tensor.name] = {"dtype": _TAGS[tensor.dtype], "shape": list(tensor.shape),
                                "data_offsets": [offset, offset + tensor.nbytes]}
        offset += tensor.nbytes
    text = json.dumps(entries, separators=(",", ":"), ensure_ascii=False).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text, ordered


def write_safetensors(out_dir: Path, tensors: list[OutputTensor], *, max_shard_size: int | str) -> list[str]:
    """Write `tensors` into shards (plus `model.safetensors.index.json` when there are several) in `out_dir`,
    byte-identical to `save_file` per shard; returns the weight file names."""
    seen: set[str] = set()
    for tensor in tensors:
        if tensor.name in seen:
            raise ValueError(f"tensor {tensor.name!r} written twice")
        seen.add(tensor.name)
    layout = shard_layout(tensors, max_shard_size)
    copier = RangeCopier()
    try:
        for file, group in layout.items():
            _write_shard(out_dir / file, group, copier)
    finally:
        copier.close()
    if len(layout) > 1:
        weight_map = {tensor.name: file for file, group in layout.items() for tensor in group}
        index = {"metadata": {"total_parameters": sum(math.prod(t.shape) for t in tensors),
                              "total_size": sum(t.nbytes for t in tensors)},
                 "weight_map": dict(sorted(weight_map.items()))}
        (out_dir / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")
    return list(layout)


def _write_shard(path: Path, tensors: list[OutputTensor], copier: RangeCopier) -> None:
    header, ordered = safetensors_header(tensors)
    with open(path, "wb", buffering=0) as out:
        fd = out.fileno()
        _write_all(fd, header)
        for tensor in ordered:
            if isinstance(tensor.content, ByteRange):
                copier.copy(tensor.content, fd)
            elif tensor.content == ZEROS:
                _write_zeros(fd, tensor.nbytes)
            else:
                built = tensor.content()
                if built.dtype != tensor.dtype or tuple(built.shape) != tensor.shape:
                    raise RuntimeError(f"tensor {tensor.name!r} was built as {built.dtype} {tuple(built.shape)}, "
                                       f"but planned as {tensor.dtype} {tensor.shape}")
                if built.numel():
                    _write_all(fd, built.contiguous().reshape(-1).view(torch.uint8).numpy().data)
                del built


def _write_all(fd: int, data) -> None:
    view = memoryview(data).cast("B")
    while view:
        view = view[os.write(fd, view):]


def _write_zeros(fd: int, nbytes: int) -> None:
    block = bytes(min(nbytes, COPY_BLOCK))
    while nbytes:
        _write_all(fd, block[:nbytes] if nbytes < len(block) else block)
        nbytes -= min(nbytes, len(block))


# Hand-written byte copying: safetensors has no streaming writer (save_file needs every tensor of a file in
# memory at once) and no API to copy a tensor's bytes between files, so tensors that do not change are copied
# here, inside the kernel where possible.
_NO_KERNEL_COPY = (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.EBADF)


class RangeCopier:
    """Append byte ranges of source files to an output file: `os.copy_file_range` (no user-space copy), falling
    back for good to a buffered read/write copy when the kernel or file system cannot (e.g. EXDEV, ENOSYS)."""

    def __init__(self):
        self.kernel = hasattr(os, "copy_file_range")
        self._sources: dict[Path, int] = {}

    def copy(self, where: ByteRange, fd: int) -> None:
        if where.path not in self._sources:
            self.close()  # one source file open at a time
            self._sources[where.path] = os.open(where.path, os.O_RDONLY)
        src = self._sources[where.path]
        offset, remaining = where.offset, where.nbytes
        while remaining and self.kernel:
            try:
                done = os.copy_file_range(src, fd, remaining, offset)
            except OSError as err:
                if err.errno not in _NO_KERNEL_COPY:
                    raise
                self.kernel = False
                break
            if done == 0:
                raise ValueError(f"{where.path} is shorter than its header says; re-save or re-download it")
            offset, remaining = offset + done, remaining - done
        while remaining:
            block = os.pread(src, min(remaining, COPY_BLOCK), offset)
            if not block:
                raise ValueError(f"{where.path} is shorter than its header says; re-save or re-download it")
            _write_all(fd, block)
            offset, remaining = offset + len(block), remaining - len(block)

    def close(self) -> None:
        for fd in self._sources.values():
            os.close(fd)
        self._sources = {}
