"""Learning-rate schedules (training.md §5): linear warmup, then cosine to `min_lr_ratio * lr_max` (default) or
warmup-stable-decay (WSD: flat at the peak, then a linear decay to the floor over the last `decay_fraction` of
the horizon); flat at the floor after the horizon."""

from __future__ import annotations

import math

SCHEDULES = ("cosine", "wsd")
PAPER_HORIZON_STEPS = 300_000  # the reference's M: its cosine was never completed (training.md §5)


def horizon_steps(horizon: str, planned_steps: int) -> int:
    """Schedule horizon M: the run's planned steps (`planned`) or the paper's 300,000 (`paper`)."""
    if horizon == "planned":
        return planned_steps
    if horizon == "paper":
        return PAPER_HORIZON_STEPS
    raise ValueError(f"unknown schedule horizon {horizon!r}; use 'planned' or 'paper'")


def decay_start(horizon: int, decay_fraction: float) -> int:
    """First step of WSD's decay: the last `round(decay_fraction * horizon)` steps decay (0: never)."""
    return horizon - round(decay_fraction * horizon)


def lr_at(step: int, *, lr_max: float, warmup_steps: int, horizon: int, min_lr_ratio: float = 0.1,
          schedule: str = "cosine", decay_fraction: float = 0.2) -> float:
    """LR of optimizer step `step` (0-based). Depends only on the step, never on micro-batching.

    WSD with `decay_fraction=0` stays at the peak to the end: the stable phase of a run that will grow later.
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; use one of {SCHEDULES}")
    lr_min = lr_max * min_lr_ratio
    if step < warmup_steps:
        return lr_max * step / warmup_steps
    if schedule == "wsd":
        start = max(decay_start(horizon, decay_fraction), warmup_steps)
        if step < start or start >= horizon:
            return lr_max
        if step >= horizon:
            return lr_min
        return lr_max - (step - start) / (horizon - start) * (lr_max - lr_min)
    if step >= horizon:
        return lr_min
    progress = (step - warmup_steps) / (horizon - warmup_steps)
    return lr_min + 0.5 * (1.0 + math.cos(math.pi * progress)) * (lr_max - lr_min)
