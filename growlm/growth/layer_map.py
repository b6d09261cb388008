"""Depth layer maps (the prts `stacking_list`, growth.md §3.1): forms, parsing, validation, connection rate."""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence

NAMED_LAYER_MAPS = ("stack", "interpolate")
_PARTIAL_RUN = re.compile(r"^([1-9]+)(?:\*([1-9][0-9]*))?$")
_RANGE_ITEM = re.compile(r"^([0-9]+)(?:-([0-9]+))?$")


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def named_layer_map(name: str, num_src_layers: int, num_tgt_layers: int) -> list[int]:
    """`"stack"` -> `[i % L ...]`, `"interpolate"` -> `[i // (L'/L) ...]`; both need L' % L == 0."""
    if name not in NAMED_LAYER_MAPS:
        raise ValueError(f"layer_map={name!r} is not a named map; use one of {list(NAMED_LAYER_MAPS)}, "
                         "partial notation like '1-234*7-56', or an explicit list of ints")
    if num_tgt_layers % num_src_layers != 0:
        multiples = [num_src_layers * k for k in range(1, 5)]
        raise ValueError(
            f"layer_map={name!r} needs num_hidden_layers={num_tgt_layers} to be a multiple of the source's "
            f"{num_src_layers} layers; choose a target depth like {multiples}, a source depth among the divisors "
            f"{_divisors(num_tgt_layers)} of {num_tgt_layers}, or pass an explicit layer_map list")
    g = num_tgt_layers // num_src_layers
    if name == "stack":
        return [i % num_src_layers for i in range(num_tgt_layers)]
    return [i // g for i in range(num_tgt_layers)]


def parse_partial(text: str, num_src_layers: int) -> list[int]:
    """Paper Appendix H.3 notation: `-`-separated runs of 1-based single-digit ids, each optionally `*k`.

    `"1-234*7-56"` -> `[0] + [1, 2, 3] * 7 + [4, 5]`. Valid only for sources with at most 9 layers.
    """
    if num_src_layers > 9:
        raise ValueError(f"layer_map={text!r}: partial notation uses single-digit layer ids and needs a source with "
                         f"at most 9 layers, got {num_src_layers}; pass an explicit list instead")
    result: list[int] = []
    for run in text.strip().split("-"):
        match = _PARTIAL_RUN.match(run.strip())
        if match is None:
            raise ValueError(f"layer_map={text!r}: cannot parse run {run!r}; partial notation is '-'-separated runs "
                             "of 1-based digits, each optionally '*k', e.g. '1-234*7-56'")
        ids = [int(c) - 1 for c in match.group(1)]
        for layer in ids:
            if layer >= num_src_layers:
                raise ValueError(f"layer_map={text!r}: layer id {layer + 1} out of range for source with "
                                 f"{num_src_layers} layers (ids are 1-based)")
        result.extend(ids * int(match.group(2) or 1))
    return result


def parse_stacking_list(text: str) -> list[int] | str:
    """CLI text -> layer map: "stack", "interpolate", or comma-separated 0-based ints / inclusive ranges ("0-5,0-5")."""
    text = text.strip()
    if text in NAMED_LAYER_MAPS:
        return text
    if not text:
        raise ValueError("layer_map is empty; use 'stack', 'interpolate' or comma-separated 0-based layer ids")
    return parse_id_ranges(text, "layer_map", alternatives="'stack' / 'interpolate'")


def parse_id_ranges(text: str, option: str, *, alternatives: str) -> list[int]:
    """'0,2,8-11' -> [0, 2, 8, 9, 10, 11]: 0-based layer ids and inclusive ranges; errors name `option`."""
    result: list[int] = []
    for item in text.split(","):
        match = _RANGE_ITEM.match(item.strip())
        if match is None:
            raise ValueError(f"{option}={text!r}: cannot parse {item!r}; use 0-based ints and inclusive ranges "
                             f"like '0-5,0-5' or '0,0,1,1' (or {alternatives})")
        start = int(match.group(1))
        stop = int(match.group(2)) if match.group(2) is not None else start
        if stop < start:
            raise ValueError(f"{option}={text!r}: range {item!r} is decreasing; write it as ids, e.g. '3,2,1'")
        result.extend(range(start, stop + 1))
    return result


def validate_layer_map(layer_map: Sequence[int], num_src_layers: int, num_tgt_layers: int) -> list[int]:
    """Check an explicit map (§3.1, §7): length L', int (not bool) entries in [0, L). Unused source layers warn."""
    if isinstance(layer_map, (str, bytes)) or not isinstance(layer_map, Sequence):
        raise ValueError(f"layer_map must be a list of ints, 'stack' or 'interpolate', got {layer_map!r}")
    if len(layer_map) == 0:
        raise ValueError("layer_map is empty; it needs one source layer id per target layer")
    if len(layer_map) != num_tgt_layers:
        raise ValueError(f"layer_map has length {len(layer_map)} but num_hidden_layers={num_tgt_layers}; "
                         "it needs exactly one source layer id per target layer")
    for i, j in enumerate(layer_map):
        if isinstance(j, bool) or not isinstance(j, int):
            raise ValueError(f"layer_map[{i}]={j!r} must be an int source layer id (not {type(j).__name__})")
        if not 0 <= j < num_src_layers:
            raise ValueError(f"layer_map[{i}]={j} out of range for source with {num_src_layers} layers")
    unused = sorted(set(range(num_src_layers)) - set(layer_map))
    if unused:
        warnings.warn(f"layer_map does not use source layers {unused}; they are dropped", stacklevel=3)
    return list(layer_map)


def resolve_layer_map(layer_map: Sequence[int] | str, num_src_layers: int, num_tgt_layers: int) -> list[int]:
    """Any accepted form (explicit list, named map, partial notation) -> a validated list of L' source ids."""
    if isinstance(layer_map, str):
        if layer_map in NAMED_LAYER_MAPS:
            return named_layer_map(layer_map, num_src_layers, num_tgt_layers)
        layer_map = parse_partial(layer_map, num_src_layers)
    return validate_layer_map(layer_map, num_src_layers, num_tgt_layers)


def connection_rate(layer_map: Sequence[int | None]) -> float:
    """Rc = #{i < L'-1 : map[i+1] == map[i] + 1} / (L'-1); 1.0 for a single layer (a new `None` layer connects
    to nothing)."""
    if len(layer_map) < 2:
        return 1.0
    connected = sum(1 for a, b in zip(layer_map, layer_map[1:]) if a is not None and b == a + 1)
    return connected / (len(layer_map) - 1)


def later_copies(layer_map: Sequence[int | None]) -> list[int]:
    """The "new" target layers: those that repeat a source layer an earlier target layer already copies, and the
    `None` entries of a G_random map."""
    return [i for i, j in enumerate(layer_map) if j is None or list(layer_map).index(j) != i]


def first_occurrences_in_order(layer_map: Sequence[int], num_src_layers: int) -> bool:
    """True when every source layer occurs and their first occurrences are in increasing source order."""
    later = set(later_copies(layer_map))
    return [j for i, j in enumerate(layer_map) if i not in later] == list(range(num_src_layers))
