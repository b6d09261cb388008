"""Growth planner: typed options, the operator registries and `plan_growth` (width first, then depth, then noise).

A plan maps every target tensor name to a builder that reads only the source tensors it needs through a getter,
so callers can stream a checkpoint of any size; `grow_state_dict` is the in-memory convenience. Builders that are
`Copy` (an unchanged source tensor) or `Zeros` say so, so that writers can copy bytes instead of building.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from transformers import LlamaConfig

from growlm.growth import depth, learn, masked, width
from growlm.growth.layer_map import NAMED_LAYER_MAPS, connection_rate, parse_partial, resolve_layer_map
from growlm.growth.noise import check_noise_alpha, is_noised, noisy_builder
from growlm.growth.target import build_target_config, check_source_names, check_target_config
from growlm.growth.types import WIDTH_FIELDS, Builder, Copy, GrowthOptions, Stage, TensorGetter, Zeros
from growlm.modeling import layer_tensor_shapes, tensor_shapes


@dataclass
class GrowthPlan:
    """The full target config, one builder per target tensor (in write order) and a JSON-serialisable record."""

    config: LlamaConfig
    tensors: dict[str, Builder]
    record: dict


DepthPlanner = Callable[[Stage, LlamaConfig, list, GrowthOptions], tuple[Stage, dict]]
WidthPlanner = Callable[[Stage, LlamaConfig, LlamaConfig, GrowthOptions, int], tuple[Stage, dict]]
# An operator that leaves a phase to pretraining (G_learn) checks its options and returns that phase's record.
TrainingPhase = Callable[[GrowthOptions], dict]


@dataclass(frozen=True)
class DepthOperator:
    """A registered depth operator: its planner, default layer map, noise policy and layer-map resolver."""

    planner: DepthPlanner
    default_layer_map: str | None
    allows_noise: bool
    resolve_map: Callable[[list | str | None, int, int], list] = resolve_layer_map
    training_phase: TrainingPhase | None = None


@dataclass(frozen=True)
class WidthOperator:
    """A registered width operator: its planner, target eps rule and noise policy (None: noise raises)."""

    planner: WidthPlanner
    target_eps: Callable[[LlamaConfig, int, GrowthOptions], float]
    noise_scope: str | None
    training_phase: TrainingPhase | None = None


def _same_eps(src: LlamaConfig, hidden_size: int, options: GrowthOptions) -> float:
    return src.rms_norm_eps


# The operator registries: a new operator (e.g. G_random, G_learn) is one more entry.
DEPTH_OPERATORS: dict[str, DepthOperator] = {
    "stack": DepthOperator(depth.plan_stack, "stack", allows_noise=True),
    "zero": DepthOperator(depth.plan_zero, "interpolate", allows_noise=False),
    "random": DepthOperator(masked.plan_depth, None, allows_noise=False, resolve_map=masked.random_layer_map),
    "learn": DepthOperator(learn.plan_depth, "stack", allows_noise=False, training_phase=learn.phase_record),
}
WIDTH_OPERATORS: dict[str, WidthOperator] = {
    "split": WidthOperator(width.plan_split, _same_eps, noise_scope="new_entries"),
    "zero": WidthOperator(width.plan_zero, width.zero_target_eps, noise_scope=None),
    "random": WidthOperator(masked.plan_width, _same_eps, noise_scope=None),
    "learn": WidthOperator(learn.plan_width, _same_eps, noise_scope=None, training_phase=learn.phase_record),
}


def _lookup(registry: dict, field: str, name: str | None):
    if name is None:
        return None
    if name not in registry:
        raise ValueError(f"{field}={name!r} is not a registered operator; choose one of {sorted(registry)}")
    return registry[name]


def target_num_layers(src: LlamaConfig, options: GrowthOptions) -> int:
    """L' from `num_layers`, else g*L, else the length of an explicit or partial-notation layer map, else L."""
    L = src.num_hidden_layers
    if options.g is not None:
        if isinstance(options.g, bool) or not isinstance(options.g, int) or options.g < 1:
            raise ValueError(f"g={options.g!r} must be a positive int growth factor (L' = g*L)")
        if options.num_layers is not None and options.num_layers != options.g * L:
            raise ValueError(f"num_layers={options.num_layers} contradicts g={options.g} for a source with {L} "
                             f"layers (g*L = {options.g * L}); give only one of them")
        return options.g * L
    if options.num_layers is not None:
        return options.num_layers
    if isinstance(options.layer_map, str) and options.layer_map not in NAMED_LAYER_MAPS:
        return len(parse_partial(options.layer_map, L))
    return L if options.layer_map is None or isinstance(options.layer_map, str) else len(options.layer_map)


def _source_stage(src: LlamaConfig, tgt: LlamaConfig) -> Stage:
    """Copies of the source tensors; tied->untied adds lm_head copied from the embedding."""
    stage: Stage = {name: Copy(name) for name in tensor_shapes(src)}
    if src.tie_word_embeddings and not tgt.tie_word_embeddings:
        stage["lm_head.weight"] = Copy("model.embed_tokens.weight")
    return stage


def _source_shape(src: LlamaConfig, name: str) -> tuple[int, ...]:
    parsed = depth.split_layer_name(name)
    if parsed is not None:
        return layer_tensor_shapes(src)[parsed[1]]
    return (src.vocab_size, src.hidden_size) if name == "lm_head.weight" else tensor_shapes(src)[name]


def _owned(builder: Builder) -> Builder:
    """Every built tensor is contiguous and owns its storage: results that alias a source tensor are cloned
    (`Copy` and `Zeros` already own theirs and stay recognisable to writers)."""
    if isinstance(builder, (Copy, Zeros)):
        return builder

    def build(get: TensorGetter) -> torch.Tensor:
        source_storages: set[int] = set()

        def tracked_get(name: str) -> torch.Tensor:
            tensor = get(name)
            source_storages.add(tensor.untyped_storage().data_ptr())
            return tensor

        result = builder(tracked_get).detach()
        if result.untyped_storage().data_ptr() in source_storages or not result.is_contiguous():
            return result.clone(memory_format=torch.contiguous_format)
        return result

    return build


def _check_operators(options: GrowthOptions) -> tuple[DepthOperator | None, WidthOperator | None]:
    """Look up the operators and check the option combinations that do not need a config."""
    depth_op = _lookup(DEPTH_OPERATORS, "depth_op", options.depth_op)
    width_op = _lookup(WIDTH_OPERATORS, "width_op", options.width_op)
    if depth_op is None and width_op is None:
        raise ValueError("depth_op and width_op are both None; give at least one growth operator "
                         f"(depth: {sorted(DEPTH_OPERATORS)}, width: {sorted(WIDTH_OPERATORS)})")
    if depth_op is None and options.layer_map is not None:
        raise ValueError(f"layer_map={options.layer_map!r} is given but depth_op is None; set depth_op")
    check_noise_alpha(options.noise_alpha)
    if options.noise_alpha > 0:
        if depth_op is not None and not depth_op.allows_noise:
            raise ValueError(f"noise_alpha={options.noise_alpha} with depth_op={options.depth_op!r}: noise would break "
                             "its zero, mask or exact starting structure; use noise_alpha=0")
        if width_op is not None and width_op.noise_scope is None:
            raise ValueError(f"noise_alpha={options.noise_alpha} with width_op={options.width_op!r}: noise would break "
                             "its zero, mask or exact starting structure; use noise_alpha=0")
    return depth_op, width_op


def _target_config(src_config: LlamaConfig, options: GrowthOptions, width_op: WidthOperator | None) -> LlamaConfig:
    """Source config plus the option overrides, checked against the source (§2, §7)."""
    num_layers = target_num_layers(src_config, options)
    hidden_size = options.hidden_size or src_config.hidden_size
    overrides = {
        "num_hidden_layers": num_layers, "hidden_size": options.hidden_size,
        "intermediate_size": options.intermediate_size, "num_attention_heads": options.num_attention_heads,
        "num_key_value_heads": options.num_key_value_heads, "tie_word_embeddings": options.tie_word_embeddings,
        "max_position_embeddings": options.max_position_embeddings,
    }
    eps = width_op.target_eps(src_config, hidden_size, options) if width_op else src_config.rms_norm_eps
    overrides["rms_norm_eps"] = eps
    config = build_target_config(src_config, overrides)
    check_target_config(src_config, config, depth_op=options.depth_op, width_op=options.width_op, expected_eps=eps)
    return config


def with_default_operators(src: LlamaConfig, options: GrowthOptions) -> GrowthOptions:
    """Options that name no operator get the defaults: `stack` when the depth changes (g, num_layers or a layer
    map), `split` when a width field differs from the source. Naming one operator leaves the other unset."""
    if options.depth_op is not None or options.width_op is not None:
        return options
    deeper = options.layer_map is not None or target_num_layers(src, options) != src.num_hidden_layers
    wider = any(getattr(options, f) not in (None, getattr(src, f)) for f in WIDTH_FIELDS)
    return dataclasses.replace(options, depth_op=options.depth_op or ("stack" if deeper else None),
                               width_op=options.width_op or ("split" if wider else None))


def target_config(src_config: LlamaConfig, options: GrowthOptions) -> LlamaConfig:
    """The checked target config alone (cheap at any size: no layer map or builders), e.g. to size the output."""
    options = with_default_operators(src_config, options)
    _, width_op = _check_operators(options)
    return _target_config(src_config, options, width_op)


def plan_growth(src_config: LlamaConfig, src_names: Sequence[str], options: GrowthOptions) -> GrowthPlan:
    """Validate everything (growth.md §2, §7) and return the target config, tensor builders and record."""
    options = with_default_operators(src_config, options)
    depth_op, width_op = _check_operators(options)
    config = _target_config(src_config, options, width_op)
    num_layers = config.num_hidden_layers
    check_source_names(src_config, src_names)
    layer_map = None
    if depth_op is not None:
        spec = options.layer_map if options.layer_map is not None else depth_op.default_layer_map
        layer_map = depth_op.resolve_map(spec, src_config.num_hidden_layers, num_layers)

    stage = _source_stage(src_config, config)
    record: dict = {"source_layers": src_config.num_hidden_layers, "target_layers": num_layers,
                    "seed": options.seed, "options": dataclasses.asdict(options)}
    for op in (width_op, depth_op):
        if op is not None and op.training_phase is not None:
            record.update(op.training_phase(options))
    claims = []
    if width_op is not None:
        width_config = build_target_config(config, {"num_hidden_layers": src_config.num_hidden_layers})
        stage, width_record = width_op.planner(stage, src_config, width_config, options, num_layers)
        record["width"] = {"op": options.width_op, **width_record}
        claims.append(width_record["function_preserving"])
    if depth_op is not None:
        stage, depth_record = depth_op.planner(stage, src_config, layer_map, options)
        record["depth"] = {"op": options.depth_op, "layer_map": layer_map,
                           "connection_rate": connection_rate(layer_map), **depth_record}
        claims.append(depth_record["function_preserving"])
    if options.noise_alpha > 0:
        new_only = width_op is not None and width_op.noise_scope == "new_entries"
        stage = {name: noisy_builder(builder, name, alpha=options.noise_alpha, seed=options.seed,
                                     hidden_size=config.hidden_size, num_layers=num_layers,
                                     old_shape=_source_shape(src_config, name) if new_only else None)
                 if is_noised(name, noise_head=options.noise_head) else builder
                 for name, builder in stage.items()}
        claims.append(False)
    record["noise"] = {"alpha": options.noise_alpha, "head": options.noise_head}
    record["function_preserving"] = all(claims)
    expected = list(tensor_shapes(config))
    if list(stage) != expected:
        raise RuntimeError(f"growth plan tensors {list(stage)[:4]}... do not match the target config {expected[:4]}")
    return GrowthPlan(config=config, tensors={name: _owned(b) for name, b in stage.items()}, record=record)


def grow_state_dict(src_config: LlamaConfig, state_dict: dict[str, torch.Tensor],
                    options: GrowthOptions) -> tuple[LlamaConfig, dict[str, torch.Tensor]]:
    """Grow an in-memory state dict (tests, small models); a tied `lm_head.weight` entry is ignored."""
    names = [n for n in state_dict if not (src_config.tie_word_embeddings and n == "lm_head.weight")]
    plan = plan_growth(src_config, names, options)
    return plan.config, {name: build(state_dict.__getitem__) for name, build in plan.tensors.items()}
