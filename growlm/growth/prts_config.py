"""Growth config files: the prts JSON (growth.md §8.1, read-compatible) and the project JSON (§8.2).

Both become a `GrowthJob`: resolved `GrowthOptions` plus where the source lives and in which format.
prts names shapes by registry name ("6L2048H" -> `growlm.modeling.SHAPES`) and its source is a lit
checkpoint, converted to a Hugging Face folder before growth.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from transformers import LlamaConfig

from growlm.config_io import build, read_mapping
from growlm.growth.types import WIDTH_FIELDS, GrowthOptions, LearnOptions
from growlm.modeling import SHAPES, llama_config

PRTS_KEYS = {
    "src_config_name", "trg_config_name", "src_init_path", "stacking_list", "embd_name", "ln_name",
    "head_name", "layer_name", "from_left", "inner_stacking", "src_path", "grow_step",
}
PRTS_DEFAULT_NAMES = {"embd_name": "wte", "ln_name": "ln_f", "head_name": "lm_head", "layer_name": "h"}
PRTS_METHODS = ("stacking", "b2b", "zero", "msg", "ligo")
# keys that only one operator reads: (section, key) -> operator
_OPERATOR_KEYS = {("depth", "ramp_steps"): "random", ("depth", "gate_mode"): "random",
                  ("width", "ramp_steps"): "random", ("width", "head_structured"): "learn"}


@dataclass
class GrowthJob:
    """What a growth config file asks for: options, the source and its format, and an optional output."""

    options: GrowthOptions
    source: str | None
    source_format: str = "hf"  # "hf" (folder or Hub id) | "lit" (a lit `.pth`, needs `lit_config`)
    lit_config: LlamaConfig | None = None
    revision: str | None = None
    output: str | None = None


@dataclass
class SourceSection:
    path: str | None = None
    format: Literal["hf", "lit"] = "hf"
    revision: str | None = None


@dataclass
class TargetOverrides:
    """The target fields growth can change (the rest come from the source)."""

    num_hidden_layers: int | None = None
    hidden_size: int | None = None
    intermediate_size: int | None = None
    num_attention_heads: int | None = None
    num_key_value_heads: int | None = None


@dataclass
class TargetSection:
    overrides: TargetOverrides | None = None


@dataclass
class DepthSection:
    op: str | None = None
    layer_map: list[int | None] | str | None = None
    allow_non_fp: bool = GrowthOptions.allow_non_fp
    ramp_steps: int | None = None  # random
    gate_mode: Literal["sublayer", "block"] | None = None  # random
    learn: LearnOptions | None = None  # op "learn" only


@dataclass
class WidthSection:
    op: str | None = None
    index_rule: str = GrowthOptions.index_rule
    split: str = GrowthOptions.split
    norm_aware: bool = GrowthOptions.norm_aware
    eps_correction: bool = GrowthOptions.eps_correction
    uneven_std: Any = None  # the split operator's key, not read yet
    ramp_steps: int | None = None  # random
    head_structured: bool | None = None  # op "learn" only


@dataclass
class NoiseSection:
    alpha: float = GrowthOptions.noise_alpha
    head: bool = GrowthOptions.noise_head


@dataclass
class ProjectGrowthConfig:
    """The project's growth JSON (growth.md §8.2); a null section keeps its defaults."""

    source: SourceSection | None = None
    target: TargetSection | None = None
    depth: DepthSection | None = None
    width: WidthSection | None = None
    noise: NoiseSection | None = None
    seed: int = GrowthOptions.seed
    output: str | None = None


def read_growth_config(path: str | Path, *, prts_method: str | None = None) -> GrowthJob:
    """Read a prts JSON (has `src_config_name`) or a project JSON (has `source`/`depth`/`width`)."""
    data = read_mapping(path, "growth config")
    if "src_config_name" in data or "stacking_list" in data:
        return prts_to_job(data, method=prts_method or "stacking", origin=str(path))
    if prts_method is not None:
        raise ValueError(f"--prts-method applies to prts JSON files, but {path} is a project growth config")
    return project_to_job(data, origin=str(path))


def _registry_config(name: object, key: str) -> LlamaConfig:
    if not isinstance(name, str) or name not in SHAPES:
        raise ValueError(f"{key}={name!r} is not a known registry name; use one of {sorted(SHAPES)}")
    return llama_config(name)


def prts_to_job(data: dict, *, method: str = "stacking", origin: str = "prts config") -> GrowthJob:
    """Map a prts growth JSON (§8.1) and its method (§8.2) to a `GrowthJob` with a lit source."""
    unknown = sorted(set(data) - PRTS_KEYS)
    if unknown:
        warnings.warn(f"{origin}: ignoring unknown prts keys {unknown}", stacklevel=2)
    if method not in PRTS_METHODS:
        raise ValueError(f"prts method {method!r} is unknown; use one of {list(PRTS_METHODS)}")
    if method == "ligo":
        raise ValueError("prts method 'ligo' grows a lit checkpoint, but G_learn trains its operator from a Hugging "
                         "Face source folder when pretraining starts; convert the checkpoint first "
                         "(growlm.growth.lit.convert_lit_checkpoint) and grow it with --src DIR --operator learn")
    for key, default in PRTS_DEFAULT_NAMES.items():
        if data.get(key, default) != default:
            raise ValueError(f"{origin}: {key}={data[key]!r} is not supported; only lit-gpt Llama names "
                             f"({key}={default!r}) can be converted")
    src = _registry_config(data.get("src_config_name"), "src_config_name")
    trg = _registry_config(data.get("trg_config_name"), "trg_config_name")
    source = data.get("src_init_path") or data.get("src_path")
    if not source:
        raise ValueError(f"{origin}: src_init_path is missing; set it to the lit checkpoint (.pth) to grow")
    deeper = trg.num_hidden_layers != src.num_hidden_layers
    wider = {f: getattr(trg, f) for f in WIDTH_FIELDS if getattr(trg, f) != getattr(src, f)}
    options = GrowthOptions(num_layers=trg.num_hidden_layers)
    if method == "stacking":
        if wider:
            names = f"{data['src_config_name']} -> {data['trg_config_name']}"
            raise ValueError(f"{origin}: stacking keeps the width, but {names} changes {sorted(wider)}; "
                             "use method b2b or zero")
        stacking_list = data.get("stacking_list")
        if stacking_list is None:
            raise ValueError(f"{origin}: method stacking needs a stacking_list")
        if not isinstance(stacking_list, list) or len(stacking_list) != trg.num_hidden_layers:
            length = len(stacking_list) if isinstance(stacking_list, list) else type(stacking_list).__name__
            raise ValueError(f"{origin}: stacking_list has length {length} but {data['trg_config_name']} has n_layer="
                             f"{trg.num_hidden_layers}; give one source layer per target layer")
        options.depth_op, options.layer_map = "stack", stacking_list
    elif method == "b2b":
        options.width_op, options.split, options.norm_aware = "split", "even", False
        options.index_rule = "cyclic" if data.get("from_left") else "random"
        if deeper:
            options.depth_op = "stack"
            options.layer_map = "interpolate" if data.get("inner_stacking") else "stack"
    else:  # zero, msg (= random)
        op = "zero" if method == "zero" else "random"
        options.width_op = op if wider else None
        options.depth_op = op if deeper else None
        if method == "msg":
            options.ramp_steps = data.get("grow_step", GrowthOptions.ramp_steps)
    for name, value in wider.items():
        setattr(options, name, value)
    return GrowthJob(options=options, source=str(source), source_format="lit", lit_config=src)


def project_to_job(data: dict, *, origin: str = "growth config") -> GrowthJob:
    """Map the project's JSON (§8.2) to a `GrowthJob`; unknown keys are an error."""
    cfg = build(ProjectGrowthConfig, data, origin)
    source, overrides = cfg.source or SourceSection(), (cfg.target or TargetSection()).overrides or TargetOverrides()
    depth, width, noise = cfg.depth or DepthSection(), cfg.width or WidthSection(), cfg.noise or NoiseSection()
    for name, section, extra in (("depth", depth, ("ramp_steps", "gate_mode")),
                                 ("width", width, ("uneven_std", "ramp_steps"))):
        unsupported = [key for key in extra if getattr(section, key) is not None
                       and _OPERATOR_KEYS.get((name, key)) != section.op]
        if unsupported:
            raise ValueError(f"{origin}: {name} keys {unsupported} do not apply to {name}.op={section.op!r}")
    if depth.learn is not None and "learn" not in (depth.op, width.op):
        raise ValueError(f"{origin}: depth.learn sets up G_learn; set depth.op and/or width.op to 'learn'")
    if width.head_structured is not None and width.op != "learn":
        raise ValueError(f"{origin}: width.head_structured applies to width.op='learn' only (got {width.op!r})")
    if source.format == "lit":
        raise ValueError(f"{origin}: source.format='lit' needs the lit shape; use a prts JSON "
                         "(src_config_name + src_init_path) for lit checkpoints")
    options = GrowthOptions(
        depth_op=depth.op, layer_map=depth.layer_map, num_layers=overrides.num_hidden_layers,
        allow_non_fp=depth.allow_non_fp, width_op=width.op, index_rule=width.index_rule, split=width.split,
        norm_aware=width.norm_aware, eps_correction=width.eps_correction, noise_alpha=noise.alpha,
        noise_head=noise.head, seed=cfg.seed, gate_mode=depth.gate_mode or GrowthOptions.gate_mode,
        ramp_steps=depth.ramp_steps or width.ramp_steps or GrowthOptions.ramp_steps,
        learn=depth.learn or LearnOptions(), head_structured=bool(width.head_structured),
        **{f: getattr(overrides, f) for f in WIDTH_FIELDS})
    return GrowthJob(options=options, source=source.path, source_format=source.format, revision=source.revision,
                     output=cfg.output)
