"""Growth config files: the prts JSON (growth.md §8.1, read-compatible) and the project JSON (§8.2).

Both become a `GrowthJob`: resolved `GrowthOptions` plus where the source lives and in which format.
prts names shapes by registry name ("6L2048H" -> `growlm.modeling.SHAPES`) and its source is a lit
checkpoint, converted to a Hugging Face folder before growth.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path

from transformers import LlamaConfig

from growlm.growth.operators import GrowthOptions
from growlm.modeling import SHAPES, llama_config

PRTS_KEYS = {
    "src_config_name", "trg_config_name", "src_init_path", "stacking_list", "embd_name", "ln_name",
    "head_name", "layer_name", "from_left", "inner_stacking", "src_path", "grow_step",
}
PRTS_DEFAULT_NAMES = {"embd_name": "wte", "ln_name": "ln_f", "head_name": "lm_head", "layer_name": "h"}
PRTS_METHODS = ("stacking", "b2b", "zero", "msg", "ligo")
PROJECT_SECTIONS = {"source", "target", "depth", "width", "noise", "seed", "output"}
_DEPTH_KEYS = {"op", "layer_map", "allow_non_fp"}
_WIDTH_KEYS = {"op", "index_rule", "split", "norm_aware", "eps_correction"}
_TRAINING_LOOP_OPS = {"random", "learn"}
_WIDTH_FIELDS = ("hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads")


@dataclass
class GrowthJob:
    """What a growth config file asks for: options, the source and its format, and an optional output."""

    options: GrowthOptions
    source: str | None
    source_format: str = "hf"  # "hf" (folder or Hub id) | "lit" (a lit `.pth`, needs `lit_config`)
    lit_config: LlamaConfig | None = None
    revision: str | None = None
    output: str | None = None


def read_json_object(path: str | Path) -> dict:
    """Load a JSON object file with a clear error."""
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ValueError(f"growth config {path} does not exist") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"growth config {path} is not valid JSON: {err}") from None
    if not isinstance(data, dict):
        raise ValueError(f"growth config {path} must hold a JSON object, got {type(data).__name__}")
    return data


def read_growth_config(path: str | Path, *, prts_method: str | None = None) -> GrowthJob:
    """Read a prts JSON (has `src_config_name`) or a project JSON (has `source`/`depth`/`width`)."""
    data = read_json_object(path)
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
    if method in ("msg", "ligo"):
        raise ValueError(f"prts method {method!r} needs the training loop, not yet supported by growth/stack.py; "
                         "use stacking, b2b or zero")
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
    wider = {f: getattr(trg, f) for f in _WIDTH_FIELDS if getattr(trg, f) != getattr(src, f)}
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
    else:  # zero
        options.width_op = "zero" if wider else None
        options.depth_op = "zero" if deeper else None
    for field, value in wider.items():
        setattr(options, field, value)
    return GrowthJob(options=options, source=str(source), source_format="lit", lit_config=src)


def _section(data: dict, name: str, allowed: set[str], origin: str) -> dict:
    section = data.get(name) or {}
    if not isinstance(section, dict):
        raise ValueError(f"{origin}: '{name}' must be an object or null, got {section!r}")
    unknown = sorted(set(section) - allowed)
    if unknown:
        raise ValueError(f"{origin}: unknown keys {unknown} in '{name}'; allowed: {sorted(allowed)}")
    return section


def project_to_job(data: dict, *, origin: str = "growth config") -> GrowthJob:
    """Map the project's JSON (§8.2) to a `GrowthJob`; unknown keys are an error."""
    unknown = sorted(set(data) - PROJECT_SECTIONS)
    if unknown:
        raise ValueError(f"{origin}: unknown keys {unknown}; allowed top-level keys: {sorted(PROJECT_SECTIONS)}")
    source = _section(data, "source", {"path", "format", "revision"}, origin)
    target = _section(data, "target", {"overrides"}, origin)
    depth = _section(data, "depth", _DEPTH_KEYS | {"ramp_steps", "gate_mode", "learn"}, origin)
    width = _section(data, "width", _WIDTH_KEYS | {"uneven_std", "ramp_steps", "head_structured"}, origin)
    noise = _section(data, "noise", {"alpha", "head"}, origin)
    for name, section in (("depth", depth), ("width", width)):
        if section.get("op") in _TRAINING_LOOP_OPS:
            raise ValueError(f"{origin}: {name}.op={section['op']!r} needs the training loop, not yet supported by "
                             "growth/stack.py; use 'stack'/'zero' (depth) or 'split'/'zero' (width)")
        unsupported = sorted(set(section) - (_DEPTH_KEYS if name == "depth" else _WIDTH_KEYS))
        if unsupported:
            raise ValueError(f"{origin}: {name} keys {unsupported} only apply to the random/learn operators")
    overrides = target.get("overrides") or {}
    bad_overrides = sorted(set(overrides) - {"num_hidden_layers", *_WIDTH_FIELDS})
    if bad_overrides:
        raise ValueError(f"{origin}: target.overrides {bad_overrides} cannot be grown; allowed: "
                         f"num_hidden_layers, {', '.join(_WIDTH_FIELDS)}")
    options = GrowthOptions(
        depth_op=depth.get("op"), layer_map=depth.get("layer_map"), num_layers=overrides.get("num_hidden_layers"),
        width_op=width.get("op"), noise_alpha=noise.get("alpha", 0.0), noise_head=noise.get("head", True),
        **{f: overrides[f] for f in _WIDTH_FIELDS if f in overrides},
        **{k: depth[k] for k in ("allow_non_fp",) if k in depth},
        **{k: width[k] for k in ("index_rule", "split", "norm_aware", "eps_correction") if k in width},
        **({"seed": data["seed"]} if "seed" in data else {}),
    )
    fmt = source.get("format", "hf")
    if fmt not in ("hf", "lit"):
        raise ValueError(f"{origin}: source.format={fmt!r} is unknown; use 'hf' or 'lit'")
    if fmt == "lit":
        raise ValueError(f"{origin}: source.format='lit' needs the lit shape; use a prts JSON "
                         "(src_config_name + src_init_path) for lit checkpoints")
    return GrowthJob(options=options, source=source.get("path"), source_format=fmt,
                     revision=source.get("revision"), output=data.get("output"))
