"""Noise injection after growth (growth.md §5) and the per-tensor seeded RNG every random growth step uses."""

from __future__ import annotations

import hashlib

import torch

from growlm.growth.types import Builder, TensorGetter
from growlm.modeling import init_std


def seeded_generator(seed: int, name: str) -> torch.Generator:
    """A CPU generator seeded from (seed, name), so random draws do not depend on tensor order."""
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))


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
        weight = inner(get)
        eps = torch.randn(weight.shape, generator=seeded_generator(seed, f"noise:{name}"), dtype=torch.float32)
        mixed = (1.0 - alpha) * weight.float() + alpha * std * eps
        if old_shape is not None:
            mixed = torch.where(new_entries_mask(tuple(weight.shape), old_shape), mixed, weight.float())
        return mixed.to(weight.dtype)

    return build
