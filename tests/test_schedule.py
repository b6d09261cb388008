"""LR schedule (training.md §11.3)."""

import math

import pytest

from growlm.train.config import accumulation_steps
from growlm.train.schedule import PAPER_HORIZON_STEPS, horizon_steps, lr_at

LR, W, M = 3e-4, 100, 1000


def lr(step: int) -> float:
    return lr_at(step, lr_max=LR, warmup_steps=W, horizon=M)


def test_anchor_values():
    assert lr(0) == 0.0
    assert lr(W) == pytest.approx(LR)
    assert lr(M) == pytest.approx(LR / 10)
    assert lr(M + 5000) == pytest.approx(LR / 10)
    assert lr((W + M) // 2) == pytest.approx((LR + LR / 10) / 2)


def test_monotone_warmup_then_decay():
    warm = [lr(s) for s in range(W + 1)]
    decay = [lr(s) for s in range(W, M + 1)]
    assert all(a < b for a, b in zip(warm, warm[1:]))
    assert all(a > b for a, b in zip(decay, decay[1:]))


def test_depends_only_on_optimizer_step():
    # Same global batch, different micro-batching: the accumulation differs, the LR per step does not.
    settings = [(4, 1), (2, 2), (8, 1)]
    accums = [accumulation_steps(global_batch_tokens=8 * 64, seq_len=64, micro_batch_size=mb, world_size=ws)
              for mb, ws in settings]
    assert accums == [2, 2, 1]
    assert [lr(37)] * 3 == [lr_at(37, lr_max=LR, warmup_steps=W, horizon=M) for _ in settings]


def test_horizons():
    assert horizon_steps("planned", 1234) == 1234
    assert horizon_steps("paper", 1234) == PAPER_HORIZON_STEPS == 300_000
    with pytest.raises(ValueError, match="horizon"):
        horizon_steps("forever", 10)


def test_no_warmup_starts_at_peak_and_ends_at_floor():
    assert lr_at(0, lr_max=1.0, warmup_steps=0, horizon=10) == 1.0
    assert math.isclose(lr_at(10, lr_max=1.0, warmup_steps=0, horizon=10), 0.1)


def test_indivisible_global_batch_is_an_error():
    with pytest.raises(ValueError, match="multiple of"):
        accumulation_steps(global_batch_tokens=6 * 64, seq_len=64, micro_batch_size=4, world_size=1)


def test_wsd_shape():
    def wsd(step, fraction=0.2):
        return lr_at(step, lr_max=1.0, warmup_steps=10, horizon=100, min_lr_ratio=0.1, schedule="wsd",
                     decay_fraction=fraction)
    assert [wsd(s) for s in (0, 5, 10)] == [0.0, 0.5, 1.0]          # linear warmup
    assert {wsd(s) for s in range(10, 81)} == {1.0}                  # stable until the last 20 %
    decay = [wsd(s) for s in range(80, 101)]
    assert all(a > b for a, b in zip(decay, decay[1:]))              # linear decay ...
    assert decay[10] == pytest.approx(0.55) and decay[-1] == pytest.approx(0.1)  # ... to the floor at the horizon
    assert wsd(150) == pytest.approx(0.1)
    assert {wsd(s, fraction=0.0) for s in range(10, 200)} == {1.0}   # no decay: the stable phase of a run that grows


def test_unknown_schedule_is_an_error():
    with pytest.raises(ValueError, match="unknown schedule 'linear'"):
        lr_at(3, lr_max=1.0, warmup_steps=0, horizon=10, schedule="linear")
