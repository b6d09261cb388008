"""FLOPs accounting and the saving at equal loss (growth.md §9 "Speedup", training.md §6-7).

Primary convention: a training step over `tokens` tokens costs `6 * N_ne * tokens` FLOPs, N_ne being the
non-embedding parameter count. A grown run's cost always includes the small base model it was grown from.
The speedup at loss level l is `sp(l) = FLOPs_scratch(l) / FLOPs_grow(l) - 1`, where `FLOPs_x(l)` is where
curve x first reaches l (linear interpolation between the two evaluations around the crossing).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class LossCurve:
    """A loss curve as (cumulative training FLOPs, loss) evaluations in training order."""

    flops: tuple[float, ...]
    loss: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.flops) != len(self.loss):
            raise ValueError(f"a loss curve needs one loss per FLOPs value, got {len(self.flops)} FLOPs "
                             f"and {len(self.loss)} losses")
        if len(self.flops) < 2:
            raise ValueError(f"a loss curve needs at least 2 points to interpolate, got {len(self.flops)}")
        if not all(math.isfinite(value) for value in (*self.flops, *self.loss)):
            raise ValueError("a loss curve must hold finite FLOPs and losses; drop NaN/inf evaluations first")
        if any(later <= earlier for earlier, later in zip(self.flops, self.flops[1:])):
            raise ValueError("a loss curve's FLOPs must be strictly increasing; sort the evaluations by step")

    @classmethod
    def from_points(cls, flops: Sequence[float], loss: Sequence[float]) -> LossCurve:
        """A curve from any two sequences (lists, arrays, tensors) of equal length."""
        return cls(tuple(float(value) for value in flops), tuple(float(value) for value in loss))


def smooth_ema(losses: Sequence[float], *, weight: float) -> tuple[float, ...]:
    """Bias-corrected exponential moving average (TensorBoard's smoothing); weight 0 returns the input."""
    if not 0.0 <= weight < 1.0:
        raise ValueError(f"smoothing weight must be in [0, 1), got {weight}; use 0 for no smoothing")
    smoothed, running = [], 0.0
    for step, value in enumerate(losses, start=1):
        running = weight * running + (1.0 - weight) * value
        smoothed.append(running / (1.0 - weight**step))
    return tuple(smoothed)


def smoothed(curve: LossCurve, *, weight: float) -> LossCurve:
    """The same curve with its losses smoothed by `smooth_ema`."""
    return LossCurve(curve.flops, smooth_ema(curve.loss, weight=weight))


def flops_to_reach(curve: LossCurve, level: float) -> float:
    """FLOPs where the curve first reaches `level` (loss <= level), interpolated linearly in FLOPs.

    Raises when the curve starts at or below the level (no crossing to interpolate) or never reaches it.
    """
    if curve.loss[0] <= level:
        raise ValueError(f"loss level {level} is not below the curve's first loss {curve.loss[0]}; "
                         "choose a lower level or add earlier evaluations")
    for index in range(1, len(curve.loss)):
        if curve.loss[index] <= level:
            f0, f1 = curve.flops[index - 1], curve.flops[index]
            l0, l1 = curve.loss[index - 1], curve.loss[index]
            return f0 + (l0 - level) / (l0 - l1) * (f1 - f0)
    raise ValueError(f"loss level {level} is never reached (lowest loss {min(curve.loss)}); "
                     "choose a higher level or train longer")


def default_levels(scratch: LossCurve, grown: LossCurve, *, num_levels: int = 5) -> tuple[float, ...]:
    """`num_levels` evenly spaced loss levels that both curves cross, from high to the lowest common loss."""
    if num_levels < 1:
        raise ValueError(f"num_levels must be >= 1, got {num_levels}")
    highest = min(scratch.loss[0], grown.loss[0])
    lowest = max(min(scratch.loss), min(grown.loss))
    if lowest >= highest:
        raise ValueError(f"the curves share no loss range to compare (lowest common loss {lowest} >= "
                         f"highest common start {highest}); evaluate both runs over a longer span")
    step = (highest - lowest) / num_levels
    return tuple(highest - step * k for k in range(1, num_levels + 1))


@dataclass(frozen=True)
class SpeedupPoint:
    """The saving at one loss level: FLOPs each run needs to reach it and sp = scratch/grown - 1."""

    level: float
    scratch_flops: float
    grown_flops: float
    speedup: float


def speedup_at_levels(
    scratch: LossCurve, grown: LossCurve, levels: Sequence[float] | None = None, *, smoothing: float = 0.0,
) -> list[SpeedupPoint]:
    """sp(l) = FLOPs_scratch(l) / FLOPs_grow(l) - 1 at each level (default: `default_levels`).

    The grown curve's FLOPs must already include the base model's cost (`training_flops` of the base run plus the grown run's);
    `smoothing` is the EMA weight applied to both curves' losses first (0 = none).
    """
    if smoothing:
        scratch, grown = smoothed(scratch, weight=smoothing), smoothed(grown, weight=smoothing)
    points = []
    for level in default_levels(scratch, grown) if levels is None else levels:
        scratch_flops, grown_flops = flops_to_reach(scratch, level), flops_to_reach(grown, level)
        points.append(SpeedupPoint(level, scratch_flops, grown_flops, scratch_flops / grown_flops - 1.0))
    return points
