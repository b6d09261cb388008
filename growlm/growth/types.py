"""The growth types every operator module shares: tensor builders and the typed growth options (a leaf module)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from growlm.config_io import arg

TensorGetter = Callable[[str], torch.Tensor]
Builder = Callable[[TensorGetter], torch.Tensor]
Stage = dict[str, Builder]


@dataclass(frozen=True)
class Copy:
    """A builder whose tensor is source tensor `source`, unchanged (writers may copy its bytes)."""

    source: str

    def __call__(self, get: TensorGetter) -> torch.Tensor:
        return get(self.source).clone()


@dataclass(frozen=True)
class Zeros:
    """A builder whose tensor is all zeros, shaped and typed like what `like` builds (writers need not build it)."""

    like: Builder

    def __call__(self, get: TensorGetter) -> torch.Tensor:
        return torch.zeros_like(self.like(get))

WIDTH_FIELDS = ("hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads")


@dataclass
class LearnOptions:
    """G_learn's operator-training phase (growth.md §3.5; the reference recipe), run by pretraining before the
    grown model trains; betas, eps and clipping come from the run's optimizer settings."""

    steps: int = arg(100, "operator-training steps (each one global batch of the run's data)")
    lr: float = arg(7e-5, "peak LR of the operator's AdamW")
    min_lr: float = arg(7e-6, "LR at the end of the cosine decay")
    warmup: int = arg(50, "linear warmup steps")
    weight_decay: float = arg(0.1, "AdamW weight decay, also on the depth mixes M_X and width maps B")
    train_io: bool = arg(False, "also train the embedding, final norm and head (else copied and frozen)")


@dataclass
class GrowthOptions:
    """Fully typed options for one growth (growth.md §8.2). Unset operators default to what the other fields ask
    for (`plan_growth`): `GrowthOptions(g=4)` is G_stack, `GrowthOptions(hidden_size=4096)` a width split."""

    depth_op: str | None = None
    layer_map: list[int | None] | str | None = None
    num_layers: int | None = None
    g: int | None = None
    width_op: str | None = None
    hidden_size: int | None = None
    intermediate_size: int | None = None
    num_attention_heads: int | None = None
    num_key_value_heads: int | None = None
    tie_word_embeddings: bool | None = None
    max_position_embeddings: int | None = None
    split: str = "uneven"
    uneven_std: float | None = None
    index_rule: str = "balanced"
    norm_aware: bool = True
    eps_correction: bool = True
    allow_non_fp: bool = False
    ramp_steps: int = 5000  # G_random: optimizer steps per ramp phase (the reference's grow_step)
    gate_mode: str = "sublayer"  # G_random depth: "sublayer" (the paper) or "block" (the reference code)
    noise_alpha: float = 0.0
    noise_head: bool = True
    seed: int = 3407
    learn: LearnOptions = field(default_factory=LearnOptions)  # depth_op or width_op "learn"
    head_structured: bool = False  # width_op "learn": map whole heads, B_q = kron(B_heads, I_{d_h})
    completep_correction: str = "gauge"  # growlm.completep.growth.CORRECTIONS; used for a CompleteP source only
