"""Noise injection after growth (growth.md §5) and the per-tensor seeded RNG every random growth step uses."""

from __future__ import annotations

import hashlib
import math

import torch

from growlm.growth.types import Builder, TensorGetter
from growlm.modeling import init_std


def seeded_generator(seed: int, name: str) -> torch.Generator:
    """A CPU generator seeded from (seed, name), so random draws do not depend on tensor order."""
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))


# float32 elements per row block that builders compute at once (4 MiB per temporary), instead of whole-tensor
# float32 copies: peak memory stays about the output tensor plus its source
BLOCK_ELEMENTS = 1 << 20


def row_blocks(rows: int, draw_cols: int, row_elements: int | None = None) -> list[tuple[int, int]]:
    """Row ranges [start, stop) covering `rows` rows of about `BLOCK_ELEMENTS` elements each (`row_elements` per
    row, default `draw_cols`), such that `torch.randn((stop - start, draw_cols))` drawn block after block from one
    generator equals one draw of `(rows, draw_cols)`: CPU normal sampling fills uniforms in order and transforms
    them 16 at a time (recomputing the last 16 when the count is not a multiple of 16; below 16 it samples
    differently), so every block but the last holds a multiple of 16 values and the last at least 16."""
    per_row = max(row_elements if row_elements is not None else draw_cols, 1)
    step = 16 // math.gcd(draw_cols, 16) if draw_cols else 1
    rows_per_block = max(step, BLOCK_ELEMENTS // per_row // step * step)
    blocks = [[start, min(start + rows_per_block, rows)] for start in range(0, rows, rows_per_block)]
    if len(blocks) > 1 and (blocks[-1][1] - blocks[-1][0]) * draw_cols < 16:
        last = blocks.pop()
        blocks[-1][1] = last[1]
    return [(start, stop) for start, stop in blocks] or [(0, rows)]


def check_noise_alpha(alpha: float) -> None:
    if not 0.0 <= alpha < 1.0:
        raise ValueError(f"noise_alpha={alpha} must be in [0, 1); the paper uses 0.2 at most")


def is_noised(name: str, *, noise_head: bool) -> bool:
    """Weights get noise; norm gains and biases never do, lm_head only with `noise_head`."""
    if not name.endswith(".weight") or "norm" in name:
        return False
    return noise_head or name != "lm_head.weight"


def new_entries_mask(shape: tuple[int, ...], old_shape: tuple[int, ...]) -> torch.Tensor:
    """True where any index is >= the old size along its dimension (the entries width growth added)."""
    mask = torch.zeros(shape, dtype=torch.bool)
    for dim, old in enumerate(old_shape):
        index = [slice(None)] * len(shape)
        index[dim] = slice(old, None)
        mask[tuple(index)] = True
    return mask


def noisy_builder(inner: Builder, name: str, *, alpha: float, seed: int, hidden_size: int, num_layers: int,
                  old_shape: tuple[int, ...] | None) -> Builder:
    """Wrap a builder: `W = (1-alpha)*W + alpha*eps`, eps ~ N(0, init_std(name, H', L')^2) drawn for the
    whole tensor from (seed, name); with `old_shape`, only entries outside the old block change."""
    std = init_std(name, hidden_size=hidden_size, num_layers=num_layers)

    def build(get: TensorGetter) -> torch.Tensor:
        source_storages: set[int] = set()

        def tracked_get(source: str) -> torch.Tensor:
            tensor = get(source)
            source_storages.add(tensor.untyped_storage().data_ptr())
            return tensor

        weight = inner(tracked_get)
        generator = seeded_generator(seed, f"noise:{name}")
        if weight.dim() != 2:  # (every noised tensor is a matrix; kept for completeness)
            eps = torch.randn(weight.shape, generator=generator, dtype=torch.float32)
            mixed = (1.0 - alpha) * weight.float() + alpha * std * eps
            if old_shape is not None:
                mixed = torch.where(new_entries_mask(tuple(weight.shape), old_shape), mixed, weight.float())
            return mixed.to(weight.dtype)
        if weight.untyped_storage().data_ptr() in source_storages or not weight.is_contiguous():
            weight = weight.clone(memory_format=torch.contiguous_format)  # mixed in place below
        rows, cols = weight.shape
        old_rows, old_cols = old_shape if old_shape is not None else (0, 0)
        for start, stop in row_blocks(rows, cols):  # the same float ops per entry as on the whole tensor
            eps = torch.randn((stop - start, cols), generator=generator, dtype=torch.float32)
            # (1 - alpha) * W + alpha * std * eps, in place on float32 copies; only new entries are written
            mixed = weight[start:stop].to(torch.float32, copy=True).mul_(1.0 - alpha).add_(eps.mul_(alpha * std))
            del eps
            kept = min(max(old_rows - start, 0), stop - start)  # leading rows whose old columns stay
            weight[start:start + kept, old_cols:] = mixed[:kept, old_cols:]
            if weight.dtype == torch.float64:  # kept entries pass through float32 too (as they always have)
                weight[start:start + kept, :old_cols] = weight[start:start + kept, :old_cols].float()
            weight[start + kept:stop] = mixed[kept:]
        return weight

    return build
