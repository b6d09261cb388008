"""Learning-rate schedule (training.md §5): linear warmup, cosine to `min_lr_ratio * lr_max`, then flat."""

from __future__ import annotations

import math

PAPER_HORIZON_STEPS = 300_000  # the reference's M: its cosine was never completed (training.md §5)


def horizon_steps(horizon: str, planned_steps: int) -> int:
    """Schedule horizon M: the run's planned steps (`planned`) or the paper's 300,000 (`paper`)."""
    if horizon == "planned":
        return planned_steps
    if horizon == "paper":
        return PAPER_HORIZON_STEPS
    raise ValueError(f"unknown schedule horizon {horizon!r}; use 'planned' or 'paper'")


def lr_at(step: int, *, lr_max: float, warmup_steps: int, horizon: int, min_lr_ratio: float = 0.1) -> float:
    """LR of optimizer step `step` (0-based). Depends only on the step, never on micro-batching."""
    lr_min = lr_max * min_lr_ratio
    if step < warmup_steps:
        return lr_max * step / warmup_steps
    if step >= horizon:
        return lr_min
    progress = (step - warmup_steps) / (horizon - warmup_steps)
    return lr_min + 0.5 * (1.0 + math.cos(math.pi * progress)) * (lr_max - lr_min)
