"""Growth planner (growth.md §9): how many tokens d to train the small base before growing it.

The paper's Eq. 2 (base-10 logs, note the division): `log10(d) = 0.88*log10(N) + 163.27/log10(C) - 5.74`
with N the target's parameter count and C = 6*N*D its training FLOPs for D target tokens. The fit only
covers N in [4.1e8, 3.0e9] and C in [8e19, 1.2e21]; outside it the plan warns and clamps harder.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING

from growlm.train.flops import training_flops

if TYPE_CHECKING:
    from growlm.modeling import Shape

EQ2_PARAMS_SLOPE = 0.88
EQ2_FLOPS_NUMERATOR = 163.27
EQ2_INTERCEPT = -5.74
FIT_PARAMS_RANGE = (4.1e8, 3.0e9)
FIT_FLOPS_RANGE = (8e19, 1.2e21)
MAX_BASE_FRACTION_INSIDE = 0.5  # f_hi inside the fit box
MAX_BASE_FRACTION_OUTSIDE = 0.1  # f_hi outside: the paper's own choice at 1.1B (d = 10B for ~100B tokens)
PREFERRED_GROWTH_FACTORS = (4, 3, 2)  # the IsoFLOP optimum lies between 2 and 4
PARAM_COUNTS = ("total", "non_embedding")


@dataclass(frozen=True)
class TargetShape:
    """The target's layout: layer count and width, plus the full registry shape and count when named."""

    num_layers: int
    hidden_size: int | None = None
    name: str | None = None
    shape: Shape | None = None  # the registry shape when `name` is one
    num_params: int | None = None
    params_count: str | None = None  # which count `num_params` is: "total" or "non_embedding"

    def __post_init__(self) -> None:
        if self.num_layers < 1:
            raise ValueError(f"the target needs at least 1 layer, got num_layers={self.num_layers}")
        if self.hidden_size is not None and self.hidden_size < 1:
            raise ValueError(f"the target's hidden size must be >= 1, got hidden_size={self.hidden_size}")


def target_shape(name: str, *, count: str = "total") -> TargetShape:
    """A registry shape (growlm.modeling.SHAPES) as a planning target, with its `count` parameter count."""
    # Imported here: growlm.modeling pulls in torch and transformers (seconds), which plain plans never need.
    from growlm.modeling import SHAPES, count_parameters, llama_config

    if name not in SHAPES:
        raise ValueError(f"unknown shape {name!r}; choose one of {sorted(SHAPES)} or give --num-layers")
    if count not in PARAM_COUNTS:
        raise ValueError(f"unknown parameter count {count!r}; use one of {PARAM_COUNTS}")
    shape = SHAPES[name]
    num_params = count_parameters(llama_config(shape))[count]
    return TargetShape(shape.num_hidden_layers, shape.hidden_size, name, shape, num_params, count)


def base_shape_name(shape: Shape) -> str | None:
    """The registry name of a shape, or None when it is not registered."""
    from growlm.modeling import SHAPES

    return next((name for name, candidate in SHAPES.items() if candidate == shape), None)


@dataclass(frozen=True)
class GrowthTimingPlan:
    """A growth-timing plan. Token counts in tokens, compute in FLOPs (the 6*N*tokens convention)."""

    N: float  # target parameter count used in Eq. 2
    D: float  # target training tokens
    C: float  # 6 * N * D
    g: int  # growth factor (ratio of non-embedding parameters; L'/L at fixed width)
    d_raw: float  # Eq. 2 before clamping
    d: float  # planned base tokens: min(max(d_raw, d_lo), f_hi * D)
    d_lo: float  # lower clamp: the base's warmup tokens
    f_hi: float  # upper clamp as a fraction of D: 0.5 inside the fit box, 0.1 outside
    in_range: bool  # (N, C) inside the fit box
    base_flops: float  # 6 * (N / g) * d
    scratch_flops: float  # 6 * N * D
    grown_total_flops: float  # base_flops + 6 * N * D (the grown target also trains D tokens)
    equal_flops_target_tokens: float  # D - d/g: target tokens that make the grown run cost as much as scratch
    params_count: str  # "given" (N was passed) or the target shape's "total"/"non_embedding" count
    warnings: list[str] = field(default_factory=list)
    target_shape: str | None = None
    target_num_layers: int | None = None
    base_num_layers: int | None = None
    base_shape: dict | None = None
    base_shape_name: str | None = None


def eq2_base_tokens(N: float, C: float) -> float:
    """The paper's Eq. 2 (growth.md §9): d = 10**(0.88*log10(N) + 163.27/log10(C) - 5.74)."""
    return 10 ** (EQ2_PARAMS_SLOPE * math.log10(N) + EQ2_FLOPS_NUMERATOR / math.log10(C) + EQ2_INTERCEPT)


def fit_range_warnings(N: float, C: float) -> list[str]:
    """One warning per bound of the fit box that (N, C) violates, with the distance in decades."""
    problems = []
    for symbol, value, (low, high) in (("N", N, FIT_PARAMS_RANGE), ("C", C, FIT_FLOPS_RANGE)):
        if value < low:
            problems.append(f"{symbol} = {value:.3g} is {math.log10(low / value):.2f} decades below the fit "
                            f"range [{low:.3g}, {high:.3g}]: extrapolation")
        elif value > high:
            problems.append(f"{symbol} = {value:.3g} is {math.log10(value / high):.2f} decades above the fit "
                            f"range [{low:.3g}, {high:.3g}]: extrapolation")
    return problems


def growth_factor_warning(num_layers: int, g: int) -> str | None:
    """A suggestion when g does not divide the target's layer count, else None."""
    if num_layers % g == 0:
        return None
    dividing = [factor for factor in PREFERRED_GROWTH_FACTORS if num_layers % factor == 0]
    options = f"--g {' or '.join(map(str, dividing))}" if dividing else "a growth factor that divides it"
    return (f"g = {g} does not divide the target's {num_layers} layers: use {options}, "
            "or grow with an explicit non-uniform layer map")


def _base_layout(target: TargetShape, g: int) -> dict:
    """Plan fields describing the suggested base (same width, L/g layers) when g divides L."""
    fields = {"target_shape": target.name, "target_num_layers": target.num_layers}
    if target.num_layers % g:
        return fields
    base_layers = target.num_layers // g
    if target.shape is not None:
        shape = replace(target.shape, num_hidden_layers=base_layers)
        return {**fields, "base_num_layers": base_layers, "base_shape": asdict(shape),
                "base_shape_name": base_shape_name(shape)}
    layout = {"num_hidden_layers": base_layers}
    if target.hidden_size is not None:
        layout["hidden_size"] = target.hidden_size
    return {**fields, "base_num_layers": base_layers, "base_shape": layout}


def plan(N: float | None, D: float, *, g: int = 4, d_lo: float = 0.0,
         target: TargetShape | None = None) -> GrowthTimingPlan:
    """Plan the base model's training tokens d for a target of N parameters trained on D tokens.

    N may be None when `target` carries a parameter count (a registry shape). Raises when the budget
    leaves no room for growth (d_lo > f_hi * D).
    """
    params_count = "given"
    if N is None:
        if target is None or target.num_params is None:
            raise ValueError("no parameter count: give N (--params) or a registry target shape (--shape)")
        N, params_count = float(target.num_params), target.params_count
    if not (N >= 1 and D >= 1):
        raise ValueError(f"N and D must be >= 1 (parameters, tokens), got N={N}, D={D}")
    if isinstance(g, bool) or not isinstance(g, int) or g < 2:
        raise ValueError(f"growth factor g must be an integer >= 2, got {g!r} (the paper's default is 4)")
    if not d_lo >= 0:
        raise ValueError(f"d_lo (minimum base tokens) must be >= 0, got {d_lo}")

    C = training_flops(N, D)
    in_range = FIT_PARAMS_RANGE[0] <= N <= FIT_PARAMS_RANGE[1] and FIT_FLOPS_RANGE[0] <= C <= FIT_FLOPS_RANGE[1]
    f_hi = MAX_BASE_FRACTION_INSIDE if in_range else MAX_BASE_FRACTION_OUTSIDE
    d_hi = f_hi * D
    if d_lo > d_hi:
        raise ValueError(f"budget too small for growth: the base's minimum tokens d_lo = {d_lo:.3g} exceed "
                         f"f_hi*D = {f_hi}*{D:.3g} = {d_hi:.3g}; lower --min-base-tokens or plan more tokens")

    warnings = fit_range_warnings(N, C)
    d_raw = eq2_base_tokens(N, C)
    d = min(max(d_raw, d_lo), d_hi)
    if d_raw > d_hi:
        box = "inside" if in_range else "outside"
        warnings.append(f"clamped: Eq. 2 gives d_raw = {d_raw:.3g} tokens, above f_hi*D = {f_hi}*{D:.3g}; "
                        f"d = {d:.3g} (f_hi = {f_hi} {box} the fit box)")
    elif d_raw < d_lo:
        warnings.append(f"clamped: Eq. 2 gives d_raw = {d_raw:.3g} tokens, below the base's minimum "
                        f"d_lo = {d_lo:.3g} (its warmup); d = {d:.3g}")

    layout = {}
    if target is not None:
        layout = _base_layout(target, g)
        factor_warning = growth_factor_warning(target.num_layers, g)
        if factor_warning:
            warnings.append(factor_warning)

    base_flops = training_flops(N / g, d)
    return GrowthTimingPlan(
        N=N, D=D, C=C, g=g, d_raw=d_raw, d=d, d_lo=d_lo, f_hi=f_hi, in_range=in_range,
        base_flops=base_flops, scratch_flops=C, grown_total_flops=base_flops + C,
        equal_flops_target_tokens=D - d / g, params_count=params_count, warnings=warnings, **layout,
    )
