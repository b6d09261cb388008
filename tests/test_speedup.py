"""FLOPs accounting and the saving at equal loss (growth.md §9 "Speedup", §10 test 16)."""

from __future__ import annotations

import numpy as np
import pytest

from growlm.growth.speedup import (
    LossCurve,
    default_levels,
    flops_to_reach,
    smooth_ema,
    speedup_at_levels,
)
from growlm.train.flops import training_flops

N_NE = 1_233_225_728  # 24L2048H non-embedding parameters (training.md §3)
G = 4
BASE_TOKENS = 10e9


def scratch_loss(flops):
    return 3.0 * np.power(flops, -0.05)


def synthetic_curves(*, include_base_cost: bool) -> tuple[LossCurve, LossCurve]:
    """§10 test 16: scratch L_s(F) = 3 F^-0.05; a grown run whose loss at total FLOPs F is L_s(1.5 F).

    The grown run is sampled on its own target-token grid (not aligned with scratch's FLOPs grid); its
    FLOPs axis adds the base cost 6*n*d with n = N_ne/g, or leaves it out.
    """
    scratch_flops = np.geomspace(1e19, 1e22, 20_000)
    scratch = LossCurve.from_points(scratch_flops, scratch_loss(scratch_flops))
    tokens = np.geomspace(1e8, 1.5e12, 20_000)
    true_total = training_flops(N_NE / G, BASE_TOKENS) + training_flops(N_NE, tokens)
    axis = true_total if include_base_cost else training_flops(N_NE, tokens)
    return scratch, LossCurve.from_points(axis, scratch_loss(1.5 * true_total))


def test_synthetic_speedup_is_one_half_at_every_level():
    scratch, grown = synthetic_curves(include_base_cost=True)
    levels = default_levels(scratch, grown, num_levels=10)
    points = speedup_at_levels(scratch, grown, levels)
    assert [p.level for p in points] == list(levels)
    for point in points:
        assert point.speedup == pytest.approx(0.5, abs=1e-6)
        assert point.scratch_flops == pytest.approx(1.5 * point.grown_flops, rel=1e-6)


def test_omitting_the_base_cost_overstates_the_speedup():
    scratch, grown = synthetic_curves(include_base_cost=False)
    for point in speedup_at_levels(scratch, grown, default_levels(scratch, grown, num_levels=10)):
        assert point.speedup > 0.5 + 1e-3


def test_paper_7b_headline():
    # 7B: scratch's 300B-token loss is reached by the grown run at 194B tokens -> 300/194 - 1 = 54.6%.
    flops = [training_flops(6_476_271_616, tokens * 1e9) for tokens in (0, 100, 200, 300, 400)]
    scratch = LossCurve.from_points(flops, [3.0, 2.5, 2.2, 2.0, 1.9])
    grown = LossCurve.from_points(
        [training_flops(6_476_271_616, tokens * 1e9) for tokens in (0, 97, 194, 300)], [3.0, 2.3, 2.0, 1.85])
    (point,) = speedup_at_levels(scratch, grown, [2.0])
    assert point.speedup == pytest.approx(300 / 194 - 1, rel=1e-12)
    assert f"{point.speedup:.1%}" == "54.6%"


def test_flops_helpers_by_hand():
    assert training_flops(N_NE, 1e9) == 6 * N_NE * 1e9
    # At g = 4, d = 10B of base training costs as much as 2.5B target tokens (growth.md §9).
    base_only = training_flops(N_NE / 4, 10e9)
    assert base_only == pytest.approx(training_flops(N_NE, 2.5e9), rel=1e-15)


def test_first_crossing_is_linearly_interpolated():
    curve = LossCurve.from_points([10.0, 20.0, 30.0, 40.0], [4.0, 3.0, 3.5, 2.0])
    assert flops_to_reach(curve, 3.5) == pytest.approx(15.0)  # first crossing, not the later 3.5 at 30
    assert flops_to_reach(curve, 2.5) == pytest.approx(30.0 + (3.5 - 2.5) / 1.5 * 10.0)
    with pytest.raises(ValueError, match="not below the curve's first loss"):
        flops_to_reach(curve, 4.0)
    with pytest.raises(ValueError, match="never reached"):
        flops_to_reach(curve, 1.0)


@pytest.mark.parametrize(("flops", "loss", "message"), [
    ([1.0, 2.0], [3.0], "one loss per FLOPs value"),
    ([1.0], [3.0], "at least 2 points"),
    ([1.0, 2.0], [3.0, float("nan")], "finite"),
    ([2.0, 1.0], [3.0, 2.0], "strictly increasing"),
])
def test_loss_curve_rejects_bad_input(flops, loss, message):
    with pytest.raises(ValueError, match=message):
        LossCurve.from_points(flops, loss)


def test_ema_smoothing_by_hand():
    # weight 0.5: step 1 -> 0.5*1 / (1-0.5) = 1; step 2 -> (0.5*0.5 + 0.5*2) / (1-0.25) = 1.25/0.75.
    assert smooth_ema([1.0, 2.0], weight=0.5) == pytest.approx((1.0, 1.25 / 0.75))
    assert smooth_ema([1.0, 2.0], weight=0.0) == (1.0, 2.0)
    with pytest.raises(ValueError, match="smoothing weight"):
        smooth_ema([1.0], weight=1.0)


def test_smoothing_applies_to_both_curves():
    flops = [1.0, 2.0, 3.0, 4.0, 5.0]
    scratch = LossCurve.from_points(flops, [4.0, 3.0, 3.6, 2.6, 2.4])
    grown = LossCurve.from_points(flops, [4.0, 2.8, 3.4, 2.3, 2.1])
    raw = speedup_at_levels(scratch, grown, [3.0])[0]
    smooth = speedup_at_levels(scratch, grown, [3.0], smoothing=0.5)[0]
    scratch_smooth = LossCurve.from_points(flops, smooth_ema(scratch.loss, weight=0.5))
    grown_smooth = LossCurve.from_points(flops, smooth_ema(grown.loss, weight=0.5))
    assert smooth.scratch_flops == pytest.approx(flops_to_reach(scratch_smooth, 3.0))
    assert smooth.grown_flops == pytest.approx(flops_to_reach(grown_smooth, 3.0))
    assert smooth.speedup != pytest.approx(raw.speedup)


def test_curves_without_a_common_loss_range_raise():
    high = LossCurve.from_points([1.0, 2.0], [5.0, 4.0])
    low = LossCurve.from_points([1.0, 2.0], [3.0, 2.0])
    with pytest.raises(ValueError, match="share no loss range"):
        default_levels(high, low)
