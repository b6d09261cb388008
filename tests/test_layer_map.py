"""Layer maps: named forms, partial notation, CLI parsing, validation and connection rates (growth.md §3.1, §10.2)."""

from __future__ import annotations

from fractions import Fraction

import pytest

from growlm.growth.layer_map import (
    connection_rate,
    first_occurrences_in_order,
    parse_partial,
    parse_stacking_list,
    resolve_layer_map,
)


def rc(layer_map) -> Fraction:
    return Fraction(connection_rate(layer_map)).limit_denominator(1000)


def test_partial_notation_expands_like_the_paper():
    assert parse_partial("1-234*7-56", 6) == [0] + [1, 2, 3] * 7 + [4, 5]
    assert resolve_layer_map("1-234*7-56", 6, 24) == [0] + [1, 2, 3] * 7 + [4, 5]


@pytest.mark.parametrize(("notation", "expected"), [
    ("12-3456*5-56", Fraction(18, 23)),
    ("1-234*7-56", Fraction(17, 23)),
    ("123*7-456", Fraction(17, 23)),
    ("12-345*7-6", Fraction(17, 23)),
    ("123-456*7", Fraction(17, 23)),
    ("12-34*10-56", Fraction(14, 23)),
    ("1234-56*10", Fraction(14, 23)),
])
def test_partial_connection_rates_6_to_24(notation, expected):
    assert rc(resolve_layer_map(notation, 6, 24)) == expected


@pytest.mark.parametrize(("form", "src", "tgt", "expected"), [
    ("stack", 6, 24, Fraction(20, 23)),
    ("stack", 8, 24, Fraction(21, 23)),
    ("interpolate", 8, 24, Fraction(7, 23)),
    ("stack", 3, 6, Fraction(4, 5)),
    ("interpolate", 3, 6, Fraction(2, 5)),
])
def test_named_map_connection_rates(form, src, tgt, expected):
    assert rc(resolve_layer_map(form, src, tgt)) == expected


def test_named_maps():
    assert resolve_layer_map("stack", 3, 6) == [0, 1, 2, 0, 1, 2]
    assert resolve_layer_map("interpolate", 3, 12) == [0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2]


def test_parse_stacking_list_cli_forms():
    assert parse_stacking_list("stack") == "stack"
    assert parse_stacking_list(" interpolate ") == "interpolate"
    assert parse_stacking_list("0-2,0-2") == [0, 1, 2, 0, 1, 2]
    assert parse_stacking_list("0,0,1,1") == [0, 0, 1, 1]
    for bad in ("", "a,b", "3-1", "0,,1", "-1"):
        with pytest.raises(ValueError, match="layer_map"):
            parse_stacking_list(bad)


@pytest.mark.parametrize(("layer_map", "message"), [
    ([], "layer_map is empty"),
    ([0, 1, 2], "length 3 but num_hidden_layers=4"),
    ([0, True, 1, 2], r"layer_map\[1\]=True must be an int"),
    ([0, 1.0, 1, 2], r"layer_map\[1\]=1.0 must be an int"),
    ([0, -1, 1, 2], r"layer_map\[1\]=-1 out of range for source with 3 layers"),
    ([0, 1, 2, 3], r"layer_map\[3\]=3 out of range for source with 3 layers"),
])
def test_invalid_explicit_maps_raise(layer_map, message):
    with pytest.raises(ValueError, match=message):
        resolve_layer_map(layer_map, 3, 4)


def test_named_map_needs_a_multiple_and_suggests_fixes():
    with pytest.raises(ValueError, match=r"num_hidden_layers=7 to be a multiple of the source's 3 layers.*divisors"):
        resolve_layer_map("stack", 3, 7)
    with pytest.raises(ValueError, match="multiple"):
        resolve_layer_map("interpolate", 3, 8)


def test_invalid_partial_notation_raises():
    with pytest.raises(ValueError, match="at most 9 layers, got 12"):
        resolve_layer_map("1-23", 12, 24)
    with pytest.raises(ValueError, match="cannot parse run"):
        resolve_layer_map("1-2x3", 6, 24)
    with pytest.raises(ValueError, match="length 23 but num_hidden_layers=24"):
        resolve_layer_map("1-234*7-5", 6, 24)
    with pytest.raises(ValueError, match="layer id 7 out of range"):
        resolve_layer_map("1234567", 6, 7)


def test_unused_source_layer_only_warns():
    with pytest.warns(UserWarning, match=r"does not use source layers \[2\]"):
        assert resolve_layer_map([0, 1, 1, 0], 3, 4) == [0, 1, 1, 0]


def test_first_occurrence_order():
    assert first_occurrences_in_order([0, 0, 1, 1, 2, 2], 3)
    assert first_occurrences_in_order([0, 1, 2, 0, 1, 2], 3)
    assert not first_occurrences_in_order([2, 0, 1, 1], 3)
    assert not first_occurrences_in_order([0, 1, 1, 0], 3)
