"""G_random, masked growth (growth.md §3.4, §4.4): the grown tensors and the `masked_growth` record of growth.json
that `scripts/pretrain.py` follows to ramp the new layers or units in (`growlm.train.ramp`).

Depth: a layer map with `None` for each new layer (default: new layers on top); new layers get the target init.
Width: each old tensor in the top-left block, every new entry the target init, norm gains `[mu, 1]`.
The grown folder is a plain Llama; it computes the source's function only under the ramp's masks at t = 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
from transformers import LlamaConfig

from growlm.config_io import build as build_dataclass
from growlm.growth.depth import split_layer_name, stack_layers
from growlm.growth.noise import row_blocks, seeded_generator
from growlm.growth.types import WIDTH_FIELDS, Builder, GrowthOptions, Stage, TensorGetter, Zeros
from growlm.growth.width import _compute_dtype, _with_source_getter
from growlm.modeling import init_std, layer_tensor_shapes, tensor_shapes

GATE_MODES = ("sublayer", "block")
FINAL_NORM = "model.norm.weight"


@dataclass(frozen=True)
class MaskedGrowth:
    """growth.json's `masked_growth`: what is new and how it ramps in. t counts optimizer steps since growth;
    depth has one phase (gate m = t/G_r), width three (FFN units, then the stream, then new heads)."""

    kind: str  # "depth" | "width"
    ramp_steps: int
    new_layers: list[int] | None = None  # depth: the target layers that are new
    gate_mode: str | None = None  # depth: "sublayer" | "block"
    old_sizes: dict[str, int] | None = None  # width: the source's hidden_size, intermediate_size and head counts

    @classmethod
    def from_dict(cls, data: dict, origin: str) -> MaskedGrowth:
        growth = build_dataclass(cls, data, origin, "masked_growth")
        if growth.kind not in ("depth", "width") or growth.ramp_steps <= 0:
            raise ValueError(f"{origin}: masked_growth has kind={growth.kind!r}, ramp_steps={growth.ramp_steps}; "
                             "expected kind 'depth' or 'width' and ramp_steps > 0 (regrow it with growlm-stack)")
        return growth

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def end_step(self) -> int:
        """t at which every mask is 1 and the gates come off."""
        return self.ramp_steps * (1 if self.kind == "depth" else 3)

    def values(self, t: int) -> dict[str, float]:
        """The masks on new entries after t steps: depth {"layers": m}, width {"ffn", "hidden", "heads"} (§4.4)."""
        def phase(k: int) -> float:
            return min(max((t - k * self.ramp_steps) / self.ramp_steps, 0.0), 1.0)

        if self.kind == "depth":
            return {"layers": phase(0)}
        return {"ffn": phase(0), "hidden": phase(1), "heads": phase(2)}

    def fold_problem(self, t: int) -> str | None:
        """Why the gated model at step t is not a plain Llama once the masks are folded into weights (None: it is)."""
        values = self.values(t)
        if self.kind == "depth" and self.gate_mode == "block" and 0 < values["layers"] < 1:
            return (f"block gates m*Block(h) + (1-m)*h at m = {values['layers']:g} do not fold into a plain Llama "
                    f"(gate_mode='sublayer' does); end the run at t >= ramp_steps = {self.ramp_steps}")
        if self.kind == "width" and values["hidden"] < 1:
            return (f"the masked RMSNorm (hidden mask {values['hidden']:g} on new units) does not fold into a plain "
                    f"Llama before phase 3 of the width ramp; end the run at t >= 2*ramp_steps = "
                    f"{2 * self.ramp_steps} or lower ramp_steps")
        return None


def masked_growth_of(plan_record: dict) -> dict | None:
    """The `masked_growth` entry a G_random planner put into a plan record (None for other operators)."""
    for part in ("depth", "width"):
        found = (plan_record.get(part) or {}).get("masked_growth")
        if found is not None:
            return found
    return None


def check_ramp(options: GrowthOptions) -> None:
    """ramp_steps, gate_mode and the operator combination of a G_random growth (§7)."""
    ramp = options.ramp_steps
    if isinstance(ramp, bool) or not isinstance(ramp, int) or ramp <= 0:
        raise ValueError(f"ramp_steps={ramp!r} must be a positive int: the optimizer steps of each ramp phase")
    if options.gate_mode not in GATE_MODES:
        raise ValueError(f"gate_mode={options.gate_mode!r} is unknown; use one of {list(GATE_MODES)}")
    if options.depth_op == "random" and options.width_op is not None:
        raise ValueError(f"depth_op='random' with width_op={options.width_op!r} is not supported (one ramp per "
                         "growth); grow in two steps, or pair width_op='random' with depth_op 'stack' or 'zero'")


def random_layer_map(spec: Sequence[int | None] | str | None, num_src_layers: int,
                     num_tgt_layers: int) -> list[int | None]:
    """The G_random map (§3.4): `None` marks a new layer, the other entries are exactly 0..L-1 in order; the
    default (`spec` None) puts the new layers on top, as the reference does."""
    example = list(range(num_src_layers)) + [None] * max(num_tgt_layers - num_src_layers, 1)
    if spec is None:
        layer_map = list(range(num_src_layers)) + [None] * (num_tgt_layers - num_src_layers)
    elif isinstance(spec, (str, bytes)) or not isinstance(spec, Sequence):
        raise ValueError(f"layer_map={spec!r}: G_random needs a list with None (JSON null) for each new layer, e.g. "
                         f"{example}, or no layer_map (new layers on top)")
    else:
        layer_map = list(spec)
        if len(layer_map) != num_tgt_layers:
            raise ValueError(f"layer_map has length {len(layer_map)} but num_hidden_layers={num_tgt_layers}; "
                             "it needs one entry (a source layer id or None) per target layer")
        for i, j in enumerate(layer_map):
            if j is not None and (isinstance(j, bool) or not isinstance(j, int)):
                raise ValueError(f"layer_map[{i}]={j!r} must be an int source layer id or None (a new layer)")
    kept = [j for j in layer_map if j is not None]
    if kept != list(range(num_src_layers)):
        raise ValueError(f"layer_map={layer_map}: G_random keeps every source layer once, so its non-null entries "
                         f"must be exactly 0..{num_src_layers - 1} in order (got {kept})")
    if len(kept) == len(layer_map):
        raise ValueError(f"G_random adds no new layer: the target has {num_tgt_layers} layers like the source; raise "
                         "g or num_layers, or put None entries in layer_map")
    return layer_map


def _initialised(name: str, shape: tuple[int, ...], std: float | None, seed: int) -> Builder:
    """A new tensor with the target init: N(0, std^2) seeded by (seed, name), or ones for a norm gain (std None);
    in the source's dtype."""
    def build(get: TensorGetter) -> torch.Tensor:
        dtype = get(FINAL_NORM).dtype
        if std is None:
            return torch.ones(shape, dtype=dtype)
        noise = torch.randn(shape, generator=seeded_generator(seed, f"random:{name}"), dtype=torch.float32)
        return noise.to(_compute_dtype(dtype)).mul_(std).to(dtype)

    return build


def plan_depth(stage: Stage, src: LlamaConfig, layer_map: list[int | None],
               options: GrowthOptions) -> tuple[Stage, dict]:
    """G_random-up planner: source layers at their map positions, new layers (None) with the target init and
    zero biases."""
    check_ramp(options)
    new_layers = [i for i, j in enumerate(layer_map) if j is None]
    # layer 0's tensor names stand in for the new layers' names; their builders are replaced below
    stacked = stack_layers(stage, [0 if j is None else j for j in layer_map])
    shapes = layer_tensor_shapes(src)
    grown: Stage = {}
    for name, builder in stacked.items():
        parsed = split_layer_name(name)
        if parsed is None or parsed[0] not in new_layers:
            grown[name] = builder
        elif name.endswith(".bias"):
            grown[name] = Zeros(builder)
        else:
            std = init_std(name, hidden_size=src.hidden_size, num_layers=len(layer_map))
            grown[name] = _initialised(name, shapes[parsed[1]], std, options.seed)
    growth = MaskedGrowth(kind="depth", ramp_steps=options.ramp_steps, new_layers=new_layers,
                          gate_mode=options.gate_mode)
    return grown, {"function_preserving": True, "new_layers": new_layers, "masked_growth": growth.to_dict()}


def _random_padded(name: str, shape: tuple[int, int], std: float, seed: int) -> Builder:
    """`[[W, A], [B, C]]`: the source tensor top left, every new entry N(0, std^2) seeded by (seed, name)."""
    def build(get: TensorGetter) -> torch.Tensor:
        source = get(name)
        dtype = _compute_dtype(source.dtype)
        out = torch.empty(shape, dtype=source.dtype)
        generator = seeded_generator(seed, f"random:{name}")
        for start, stop in row_blocks(shape[0], shape[1]):
            noise = torch.randn((stop - start, shape[1]), generator=generator, dtype=torch.float32)
            out[start:stop] = noise.to(dtype).mul_(std).to(source.dtype)
        out[: source.shape[0], : source.shape[1]] = source
        return out

    return build


def _padded_norm(name: str, hidden: int) -> Builder:
    def build(get: TensorGetter) -> torch.Tensor:
        source = get(name)
        gain = torch.ones(hidden, dtype=source.dtype)
        gain[: len(source)] = source
        return gain

    return build


def plan_width(stage: Stage, src: LlamaConfig, tgt: LlamaConfig, options: GrowthOptions,
               num_tgt_layers: int) -> tuple[Stage, dict]:
    """G_random-> planner (§4.4): new heads as whole KV groups after the old ones, every new entry random."""
    check_ramp(options)
    shapes = tensor_shapes(tgt)
    grown: Stage = {}
    for name in stage:
        if name.endswith("norm.weight"):
            grown[name] = _padded_norm(name, tgt.hidden_size)
        else:
            std = init_std(name, hidden_size=tgt.hidden_size, num_layers=num_tgt_layers)
            grown[name] = _random_padded(name, shapes[name], std, options.seed)
    growth = MaskedGrowth(kind="width", ramp_steps=options.ramp_steps,
                          old_sizes={field: getattr(src, field) for field in WIDTH_FIELDS})
    return _with_source_getter(stage, grown), {"function_preserving": True, "masked_growth": growth.to_dict()}
