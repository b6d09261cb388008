"""Depth operators (growth.md §3): G_stack (= G_direct-up) and G_zero-up over any layer map."""

from __future__ import annotations

import re

from transformers import LlamaConfig

from growlm.growth.layer_map import first_occurrences_in_order, later_copies
from growlm.growth.types import Builder, GrowthOptions, Stage, Zeros

_LAYER_NAME = re.compile(r"^model\.layers\.(\d+)\.(.+)$")
EMBED = "model.embed_tokens.weight"
ZEROED_SUFFIXES = ("self_attn.o_proj.weight", "self_attn.o_proj.bias", "mlp.down_proj.weight", "mlp.down_proj.bias")


def split_layer_name(name: str) -> tuple[int, str] | None:
    """`model.layers.3.mlp.up_proj.weight` -> (3, "mlp.up_proj.weight"); None for non-block tensors."""
    match = _LAYER_NAME.match(name)
    return (int(match.group(1)), match.group(2)) if match else None


def stack_layers(stage: Stage, layer_map: list[int]) -> Stage:
    """G_stack: target layer i takes every tensor of source layer `layer_map[i]` (biases included);
    embedding, final norm and head are carried unchanged, in write order."""
    by_layer: dict[int, dict[str, Builder]] = {}
    outer: Stage = {}
    for name, builder in stage.items():
        parsed = split_layer_name(name)
        if parsed is not None:
            by_layer.setdefault(parsed[0], {})[parsed[1]] = builder
        else:
            outer[name] = builder
    grown: Stage = {name: outer.pop(name) for name in list(outer) if name == EMBED}
    for target_layer, source_layer in enumerate(layer_map):
        for suffix, builder in by_layer[source_layer].items():
            grown[f"model.layers.{target_layer}.{suffix}"] = builder
    grown.update(outer)
    return grown


def zero_duplicate_outputs(stage: Stage, layer_map: list[int]) -> Stage:
    """G_zero-up after stacking: zero o_proj/down_proj weights and biases at every non-first copy of a layer."""
    later = set(later_copies(layer_map))
    zeroed: Stage = {}
    for name, builder in stage.items():
        parsed = split_layer_name(name)
        duplicate = parsed is not None and parsed[0] in later
        zeroed[name] = Zeros(builder) if duplicate and parsed[1] in ZEROED_SUFFIXES else builder
    return zeroed


def plan_stack(stage: Stage, src: LlamaConfig, layer_map: list[int], options: GrowthOptions) -> tuple[Stage, dict]:
    """G_stack planner: FP only for the identity map."""
    identity = layer_map == list(range(src.num_hidden_layers))
    return stack_layers(stage, layer_map), {"function_preserving": identity}


def plan_zero(stage: Stage, src: LlamaConfig, layer_map: list[int], options: GrowthOptions) -> tuple[Stage, dict]:
    """G_zero-up planner; the map must use every layer with first occurrences in order unless `allow_non_fp`."""
    in_order = first_occurrences_in_order(layer_map, src.num_hidden_layers)
    if not in_order and not options.allow_non_fp:
        raise ValueError(f"G_zero depth map is not function preserving: layer_map={layer_map} must use every "
                         f"source layer 0..{src.num_hidden_layers - 1} with first occurrences in increasing order "
                         "('stack' and 'interpolate' qualify); set allow_non_fp=True to accept it")
    zeroed = later_copies(layer_map)
    return zero_duplicate_outputs(stack_layers(stage, layer_map), layer_map), {
        "function_preserving": in_order, "zeroed_layers": zeroed}
