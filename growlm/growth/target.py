"""Target `LlamaConfig` for a growth and every config-level check of growth.md §2 and §7."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

from huggingface_hub.errors import StrictDataclassError
from transformers import LlamaConfig

from growlm.modeling import head_dim, tensor_shapes

GROWABLE_FIELDS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                   "num_key_value_heads")
WIDTH_GROUPS_MSG = "width growth must add whole KV groups of r query heads with unchanged head_dim"


def rope_settings(config: LlamaConfig) -> dict:
    """Rope fields, whichever way this transformers version stores them."""
    return {key: getattr(config, key) for key in ("rope_parameters", "rope_theta", "rope_scaling")
            if getattr(config, key, None) is not None}


def check_source_names(config: LlamaConfig, names: Sequence[str]) -> None:
    """The source tensor names must be exactly those its config implies (a tied `lm_head.weight` is tolerated)."""
    expected = set(tensor_shapes(config))
    given = set(names)
    if config.tie_word_embeddings:
        given.discard("lm_head.weight")
    missing, unexpected = sorted(expected - given), sorted(given - expected)
    if missing or unexpected:
        raise ValueError(f"source tensors do not match the source config: missing {missing[:5]}"
                         f"{'...' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}"
                         f"{'...' if len(unexpected) > 5 else ''}; pass the checkpoint's own config.json")


def check_source_shapes(config: LlamaConfig, shapes: dict[str, tuple[int, ...]]) -> None:
    """Every source tensor's stored shape (from the safetensors headers) must be the one its config implies."""
    check_source_names(config, list(shapes))
    expected = tensor_shapes(config)
    expected.setdefault("lm_head.weight", (config.vocab_size, config.hidden_size))  # a tied head, if stored
    for name, shape in shapes.items():
        if tuple(shape) != expected[name]:
            raise ValueError(f"source tensor {name} has shape {list(shape)} but config.json implies "
                             f"{list(expected[name])}; pass the checkpoint's own config.json")


def build_target_config(src: LlamaConfig, overrides: dict) -> LlamaConfig:
    """Source config plus overrides (None values are ignored); every other field is carried over."""
    fields = src.to_dict()
    fields.update({key: value for key, value in overrides.items() if value is not None})
    for key in ("transformers_version", "architectures", "_name_or_path"):
        fields.pop(key, None)
    try:
        return LlamaConfig(**fields)
    except StrictDataclassError as error:
        raise ValueError(f"target config is invalid: {error}; {WIDTH_GROUPS_MSG}") from error


def _require_equal(src: LlamaConfig, tgt: LlamaConfig, field: str, src_value, tgt_value, why: str) -> None:
    if src_value != tgt_value:
        raise ValueError(f"{field} differs: source {src_value!r}, target {tgt_value!r}; {why}")


def check_target_config(src: LlamaConfig, tgt: LlamaConfig, *, depth_op: str | None, width_op: str | None,
                        expected_eps: float | None = None) -> None:
    """Run every §2/§7 config check before any tensor is touched; raise `ValueError` naming field and values."""
    keep = "growth cannot change it"
    _require_equal(src, tgt, "vocab_size", src.vocab_size, tgt.vocab_size, keep)
    _require_equal(src, tgt, "hidden_act", src.hidden_act, tgt.hidden_act, keep)
    _require_equal(src, tgt, "rope settings", rope_settings(src), rope_settings(tgt), keep)
    _require_equal(src, tgt, "head_dim", head_dim(src), head_dim(tgt), WIDTH_GROUPS_MSG)
    eps = src.rms_norm_eps if expected_eps is None else expected_eps
    _require_equal(src, tgt, "rms_norm_eps", eps, tgt.rms_norm_eps,
                   "only G_zero-> with eps_correction changes it (to eps*H/H')")
    _require_equal(src, tgt, "attention_bias", src.attention_bias, tgt.attention_bias, keep)
    _require_equal(src, tgt, "mlp_bias", src.mlp_bias, tgt.mlp_bias, keep)
    for field in GROWABLE_FIELDS:
        if getattr(tgt, field) < getattr(src, field):
            raise ValueError(f"{field} shrinks from {getattr(src, field)} to {getattr(tgt, field)}; "
                             "growth operators only grow a model")
    if src.tie_word_embeddings is False and tgt.tie_word_embeddings is True:
        raise ValueError("tie_word_embeddings: source False, target True; untied->tied growth would drop lm_head. "
                         "Keep the target untied")
    if src.max_position_embeddings != tgt.max_position_embeddings:
        warnings.warn(f"max_position_embeddings changes from {src.max_position_embeddings} to "
                      f"{tgt.max_position_embeddings}; growth does not adapt RoPE", stacklevel=3)
    if depth_op is None and tgt.num_hidden_layers != src.num_hidden_layers:
        raise ValueError(f"num_hidden_layers changes from {src.num_hidden_layers} to {tgt.num_hidden_layers} "
                         "but no depth operator is given; set depth_op ('stack' or 'zero')")
    width_fields = [f for f in GROWABLE_FIELDS[:2] + GROWABLE_FIELDS[3:] if getattr(src, f) != getattr(tgt, f)]
    if width_op is None and width_fields:
        field = width_fields[0]
        raise ValueError(f"{field} changes from {getattr(src, field)} to {getattr(tgt, field)} but no width "
                         "operator is given; a depth operator needs equal hidden_size, intermediate_size and "
                         "heads: set width_op ('split' or 'zero')")
    if width_op is not None:
        _check_width(src, tgt)


def _check_width(src: LlamaConfig, tgt: LlamaConfig) -> None:
    for field in ("attention_bias", "mlp_bias"):
        if getattr(src, field):
            raise ValueError(f"{field}=True is not supported by width operators (v1); grow depth only, "
                             "or use a source without biases")
    r_src = src.num_attention_heads / src.num_key_value_heads
    if tgt.num_attention_heads % tgt.num_key_value_heads != 0:
        raise ValueError(f"num_attention_heads={tgt.num_attention_heads} is not a multiple of "
                         f"num_key_value_heads={tgt.num_key_value_heads}; {WIDTH_GROUPS_MSG}")
    r_tgt = tgt.num_attention_heads // tgt.num_key_value_heads
    if r_tgt != r_src:
        raise ValueError(f"num_attention_heads/num_key_value_heads changes from {r_src:g} "
                         f"({src.num_attention_heads}/{src.num_key_value_heads}) to {r_tgt} "
                         f"({tgt.num_attention_heads}/{tgt.num_key_value_heads}); {WIDTH_GROUPS_MSG}")
