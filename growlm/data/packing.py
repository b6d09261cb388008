"""Pure packing of tokenized documents into fixed-length blocks without padding."""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Iterator, Sequence


def pack_documents(
    documents: Iterable[tuple[Hashable, Sequence[int]]], block_len: int, *, skip_tokens: int = 0
) -> Iterator[tuple[list[int], Hashable, int]]:
    """Concatenate ``(key, token_ids)`` documents back to back and cut them into ``block_len`` blocks.

    Documents may cross block boundaries; a trailing partial block is never emitted (no padding).
    The first ``skip_tokens`` tokens of the first document are dropped (resuming inside a document).
    Yields ``(block, key, used)``: the block ends after token ``used`` of document ``key``.
    """
    if block_len < 1:
        raise ValueError(f"block_len must be >= 1, got {block_len}.")
    block: list[int] = []
    for key, ids in documents:
        offset, skip_tokens = skip_tokens, 0
        while offset < len(ids):
            take = min(block_len - len(block), len(ids) - offset)
            block.extend(ids[offset : offset + take])
            offset += take
            if len(block) == block_len:
                yield block, key, offset
                block = []
