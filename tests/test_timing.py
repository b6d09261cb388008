"""Growth planner (growth.md §9, §10 test 15) and its CLI."""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from growlm.cli.plan import main, parse_count
from growlm.growth.timing import TargetShape, plan, target_shape

REPO_ROOT = Path(__file__).resolve().parents[1]


def independent_eq2(N: float, D: float) -> float:
    """Eq. 2 evaluated separately in numpy float64, via natural logs: d = N^0.88 * 10^(163.27/log10 C - 5.74)."""
    N64, C64 = np.float64(N), np.float64(6.0) * np.float64(N) * np.float64(D)
    log10_c = np.log(C64) / np.log(np.float64(10.0))
    return float(np.power(N64, 0.88) * np.exp(np.log(10.0) * (163.27 / log10_c - 5.74)))


@pytest.mark.parametrize("N", [4.1e8, 1.1e9, 1.364e9, 3.0e9, 1.24e8, 7e9])
@pytest.mark.parametrize("D", [2.5e9, 5e10, 1e11, 3e11])
def test_eq2_matches_independent_float64(N, D):
    result = plan(N, D)
    assert result.d_raw == pytest.approx(independent_eq2(N, D), rel=1e-12)
    assert result.C == 6 * N * D
    assert result.scratch_flops == 6 * N * D


def test_worked_example_by_hand():
    # N = 1.1e9, D = 1e11 (the paper's 1.1B setting): C = 6*1.1e9*1e11 = 6.6e20 (inside [8e19, 1.2e21]).
    # log10 N = 9.041393 -> 0.88 * 9.041393 = 7.956426; log10 C = 20.819544 -> 163.27 / 20.819544 = 7.842151;
    # log10 d = 7.956426 + 7.842151 - 5.74 = 10.058577 -> d = 10**10.058577 = 1.1444e10 (no clamp: < 0.5*D).
    # Base cost 6*(N/4)*d = 6 * 2.75e8 * 1.1444e10 = 1.8883e19; at equal FLOPs D - d/4 = 1e11 - 2.861e9 = 97.14B.
    result = plan(1.1e9, 1e11)
    assert result.C == 6.6e20
    assert result.in_range and result.f_hi == 0.5 and result.warnings == []
    assert result.d == result.d_raw == pytest.approx(1.1444e10, rel=1e-4)
    assert result.base_flops == pytest.approx(1.8883e19, rel=1e-4)
    assert result.grown_total_flops == pytest.approx(6.6e20 + 1.8883e19, rel=1e-6)
    assert result.equal_flops_target_tokens == pytest.approx(97.139e9, rel=1e-4)


def test_d_rises_with_N_at_fixed_C_and_falls_with_C_at_fixed_N():
    sizes = [4.1e8, 7e8, 1.1e9, 2e9, 3e9]
    budgets = [8e19, 2e20, 5e20, 1.2e21]
    for C in budgets:
        d_values = [plan(N, C / (6 * N)).d_raw for N in sizes]
        assert all(a < b for a, b in zip(d_values, d_values[1:]))
    for N in sizes:
        d_values = [plan(N, C / (6 * N)).d_raw for C in budgets]
        assert all(a > b for a, b in zip(d_values, d_values[1:]))


@pytest.mark.parametrize(("N", "D", "expected"), [
    (1e8, 2e11, "N = 1e+08 is 0.61 decades below"),
    (1e10, 2e9, "N = 1e+10 is 0.52 decades above"),
    (1e9, 1e9, "C = 6e+18 is 1.12 decades below"),
    (1e9, 1e12, "C = 6e+21 is 0.70 decades above"),
])
def test_outside_the_fit_box_warns_with_bound_and_decades(N, D, expected):
    result = plan(N, D)
    assert not result.in_range and result.f_hi == 0.1
    assert any(expected in warning and "extrapolation" in warning for warning in result.warnings)


def test_small_model_is_clamped_to_a_tenth_of_D():
    # N = 1.24e8, D = 2.5e9: C = 1.86e18; log10 d = 0.88*8.093422 + 163.27/18.269513 - 5.74 = 10.318957,
    # d_raw = 2.084e10 > D itself; outside the box f_hi = 0.1, so d = 0.1 * 2.5e9 = 2.5e8.
    result = plan(1.24e8, 2.5e9)
    assert result.d_raw == pytest.approx(2.0843e10, rel=1e-4)
    assert result.d == 0.1 * 2.5e9
    assert any(warning.startswith("clamped") and "f_hi = 0.1" in warning for warning in result.warnings)


def test_d_never_exceeds_D_on_random_budgets():
    rng = random.Random(0)
    for _ in range(10_000):
        N, D = 10 ** rng.uniform(5, 13), 10 ** rng.uniform(5, 14)
        d_lo = rng.choice([0.0, rng.uniform(0, 0.1) * D])
        result = plan(N, D, d_lo=d_lo)
        assert d_lo <= result.d <= result.f_hi * D <= D


def test_minimum_base_tokens_raise_the_plan_or_reject_the_budget():
    raised = plan(1.1e9, 1e11, d_lo=4e10)  # Eq. 2 asks for 1.14e10 < d_lo = 4e10 <= 0.5 * D
    assert raised.d == 4e10 and any("below the base's minimum" in w for w in raised.warnings)
    with pytest.raises(ValueError, match="budget too small for growth"):
        plan(1.1e9, 1e11, d_lo=5.1e10)  # inside the box: f_hi*D = 5e10
    with pytest.raises(ValueError, match="budget too small for growth"):
        plan(1.24e8, 2.5e9, d_lo=2.6e8)  # outside: f_hi*D = 2.5e8


@pytest.mark.parametrize("g", [1, 0, 2.5, True])
def test_invalid_growth_factor_raises(g):
    with pytest.raises(ValueError, match="growth factor g"):
        plan(1e9, 1e11, g=g)


def test_registry_shape_gives_N_and_the_base_shape():
    total = target_shape("24L2048H")
    non_embedding = target_shape("24L2048H", count="non_embedding")
    assert (total.num_params, non_embedding.num_params) == (1_364_297_728, 1_233_225_728)  # training.md §3
    result = plan(None, 1e11, target=total)
    assert result.N == 1_364_297_728 and result.params_count == "total"
    assert (result.target_num_layers, result.base_num_layers, result.base_shape_name) == (24, 6, "6L2048H")
    assert result.base_shape["hidden_size"] == 2048
    given = plan(1.1e9, 1e11, target=total)
    assert given.N == 1.1e9 and given.params_count == "given"


def test_growth_factor_that_does_not_divide_the_layers_suggests_alternatives():
    result = plan(1e9, 1e11, g=5, target=TargetShape(num_layers=24, hidden_size=2048))
    assert result.base_num_layers is None
    assert any("g = 5 does not divide the target's 24 layers: use --g 4 or 3 or 2" in w for w in result.warnings)
    odd = plan(1e9, 1e11, g=2, target=TargetShape(num_layers=7))
    assert any("explicit non-uniform layer map" in w for w in odd.warnings)


def test_missing_parameter_count_raises():
    with pytest.raises(ValueError, match="no parameter count"):
        plan(None, 1e11, target=TargetShape(num_layers=24))


@pytest.mark.parametrize(("text", "value"), [
    ("1.1e9", 1.1e9), ("1.1B", 1.1e9), ("300B", 3e11), ("410M", 4.1e8), ("2T", 2e12), ("20k", 2e4), ("1_000", 1e3),
])
def test_parse_count_accepts_suffixes(text, value):
    assert parse_count(text) == pytest.approx(value, rel=1e-15)


@pytest.mark.parametrize("text", ["abc", "-5B", "0", "1.1X", "nan", ""])
def test_parse_count_rejects_bad_input(text):
    with pytest.raises(argparse.ArgumentTypeError, match="not a positive count"):
        parse_count(text)


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO_ROOT / "growth" / "plan.py"), *args],
                          capture_output=True, text=True, cwd=REPO_ROOT, timeout=60)


def test_cli_json_output():
    completed = run_cli("--params", "1.24e8", "--tokens", "2.5e9", "--json")
    assert completed.returncode == 0, completed.stderr
    result = json.loads(completed.stdout)
    assert {"N", "D", "C", "g", "d_raw", "d", "in_range", "warnings", "base_flops", "grown_total_flops",
            "scratch_flops"} <= result.keys()
    assert (result["g"], result["d"], result["in_range"]) == (4, 2.5e8, False)
    assert result["C"] == 6 * 1.24e8 * 2.5e9
    assert "warning: clamped" in completed.stderr


def test_cli_human_output():
    completed = run_cli("--params", "1.1B", "--tokens", "100B", "--num-layers", "24", "--hidden-size", "2048")
    assert completed.returncode == 0, completed.stderr
    assert "base tokens d = 11.4B" in completed.stdout
    assert "base model  6 layers x hidden 2048" in completed.stdout
    assert "grown total = 6.79e+20 vs scratch 6.6e+20" in completed.stdout
    assert completed.stderr == ""


def test_cli_rejects_a_budget_too_small():
    completed = run_cli("--params", "1.1B", "--tokens", "100B", "--min-base-tokens", "60B")
    assert completed.returncode == 2 and "budget too small for growth" in completed.stderr


def test_cli_shape_json_in_process(capsys):
    assert main(["--shape", "3B", "--tokens", "300B", "--param-count", "non-embedding", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["N"] == 2_233_633_280 and result["params_count"] == "non_embedding"
    assert (result["target_num_layers"], result["base_num_layers"]) == (32, 8)
    assert result["base_shape_name"] == "tiny_LLaMA_750M_like3B"


def test_cli_shape_and_layers_conflict(capsys):
    with pytest.raises(SystemExit):
        main(["--shape", "3B", "--num-layers", "8", "--tokens", "300B"])
    assert "not both" in capsys.readouterr().err
