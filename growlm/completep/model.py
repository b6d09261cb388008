"""CompleteP settings, the thin `LlamaForCausalLM` subclass that applies them with hooks, the table's init, and the
folds between the CompleteP form and a plain Llama (completep.md §2-§4).

Folders on disk are always plain Llamas: multipliers folded into the weights, the settings beside them in
`parameterization.json`. Reading such a folder as CompleteP divides the folds out again (`from_plain`).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from huggingface_hub.dataclasses import strict
from transformers import AutoConfig, AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from growlm.completep import PARAM_FILE
MODEL_TYPE = "completep_llama"
_BRANCH = re.compile(r"model\.layers\.(\d+)\.(self_attn\.o_proj|mlp\.down_proj)\.(weight|bias)")
_QUERY = re.compile(r"model\.layers\.\d+\.self_attn\.q_proj\.(weight|bias)")


@dataclass
class Parametrization:
    """One model's μP/CompleteP settings; m_N and m_L are always computed from the config, never passed in."""

    parametrization: str = "completep"  # "mup" (no depth factors, r = 1) or "completep"
    alpha: float = 1.0
    base_width: int = 64
    base_depth: float = 2  # float: a naive-corrected growth keeps m_L with base_depth * L'/L
    alpha_in: float = 1.0
    alpha_out: float = 1.0
    attn_scale: str = "sqrt"
    init_std: float = 0.02
    eps_mode: str = "table"
    branch_scale: list[float] | None = None  # per-layer r * gate; None: r in every layer
    base_hyperparameters: dict | None = None  # eta, lambda, eps of the run (provenance)

    def __post_init__(self) -> None:
        if self.parametrization not in ("mup", "completep"):
            raise ValueError(f"parametrization={self.parametrization!r}: use 'mup' or 'completep'")
        if self.attn_scale not in ("sqrt", "inverse") or self.eps_mode not in ("table", "global"):
            raise ValueError(f"attn_scale={self.attn_scale!r} / eps_mode={self.eps_mode!r}: use sqrt|inverse, "
                             "table|global")

    @classmethod
    def from_dict(cls, values: dict) -> Parametrization:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown parameterization keys {unknown}; known: {sorted(known)}")
        return cls(**values)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def width_mult(self, config: LlamaConfig) -> float:
        return config.hidden_size / self.base_width

    def depth_mult(self, config: LlamaConfig) -> float:
        """m_L for the depth rules: L / L_base under completep, 1 under mup."""
        return config.num_hidden_layers / self.base_depth if self.parametrization == "completep" else 1.0

    def residual(self, config: LlamaConfig) -> float:
        """r = m_L^-alpha."""
        return self.depth_mult(config) ** -self.alpha

    def branch_scales(self, config: LlamaConfig) -> list[float]:
        scales = self.branch_scale or [self.residual(config)] * config.num_hidden_layers
        if len(scales) != config.num_hidden_layers:
            raise ValueError(f"branch_scale has {len(scales)} entries for {config.num_hidden_layers} layers")
        return list(scales)


@strict
class CompletePLlamaConfig(LlamaConfig):
    """`LlamaConfig` plus the `completep` settings dict."""

    model_type = MODEL_TYPE
    completep: dict | None = None


def _scale_output(factor: float, module, args, output):
    return output * factor


def _reject_inputs_embeds(model, args, kwargs):
    if kwargs.get("inputs_embeds") is not None:
        raise ValueError("inputs_embeds bypasses the embedding multiplier alpha_in; pass input_ids")


class CompletePLlamaForCausalLM(LlamaForCausalLM):
    """A stock Llama whose multipliers are forward hooks (same state-dict keys; SDPA/FSDP/compile unchanged)."""

    config_class = CompletePLlamaConfig

    def __init__(self, config: CompletePLlamaConfig):
        super().__init__(config)
        p = parametrization_of(config)
        if p.alpha_in != 1:
            self.model.embed_tokens.register_forward_hook(functools.partial(_scale_output, p.alpha_in))
            self.register_forward_pre_hook(_reject_inputs_embeds, with_kwargs=True)
        for layer, scale in zip(self.model.layers, p.branch_scales(config), strict=True):
            layer.self_attn.o_proj.register_forward_hook(functools.partial(_scale_output, scale))
            layer.mlp.down_proj.register_forward_hook(functools.partial(_scale_output, scale))
            if p.attn_scale == "inverse":
                layer.self_attn.scaling = 1.0 / config.head_dim
        self.lm_head.register_forward_hook(functools.partial(_scale_output, p.alpha_out / p.width_mult(config)))


AutoConfig.register(MODEL_TYPE, CompletePLlamaConfig)
AutoModelForCausalLM.register(CompletePLlamaConfig, CompletePLlamaForCausalLM)


def parametrization_of(config) -> Parametrization:
    if getattr(config, "completep", None) is None:
        raise ValueError("not a CompleteP config (no 'completep' settings)")
    return Parametrization.from_dict(config.completep)


def is_completep(model) -> bool:
    return isinstance(model, CompletePLlamaForCausalLM)


def completep_config(config: LlamaConfig, p: Parametrization) -> CompletePLlamaConfig:
    """The CompleteP config for a plain Llama config and settings."""
    fields = {k: v for k, v in plain_config(config).to_dict().items()
              if k not in ("model_type", "transformers_version", "architectures", "completep")}
    cfg = CompletePLlamaConfig(**fields, completep=p.to_dict())
    cfg._attn_implementation = getattr(config, "_attn_implementation", None) or "sdpa"
    return cfg


def plain_config(config: LlamaConfig) -> LlamaConfig:
    """The stock `LlamaConfig` with the same shapes (and the current rms_norm_eps), no CompleteP fields."""
    fields = {k: v for k, v in config.to_dict().items()
              if k not in ("model_type", "transformers_version", "architectures", "completep", "_name_or_path")}
    cfg = LlamaConfig(**fields)
    cfg.architectures = ["LlamaForCausalLM"]
    return cfg


@torch.no_grad()
def init_weights_(model: CompletePLlamaForCausalLM, *, seed: int) -> None:
    """The table's init: embedding and head N(0, sigma^2), hidden matrices N(0, sigma^2/m_N), norms 1, biases 0."""
    p = parametrization_of(model.config)
    generator = torch.Generator().manual_seed(seed)
    hidden_std = p.init_std / math.sqrt(p.width_mult(model.config))
    for name, param in model.named_parameters():
        if "norm" in name:
            param.fill_(1.0)
        elif name.endswith(".bias"):
            param.zero_()
        else:
            std = hidden_std if name.startswith("model.layers.") else p.init_std
            param.copy_(torch.randn(param.shape, generator=generator).mul_(std).to(param.dtype))


def build(config: LlamaConfig, p: Parametrization, *, seed: int, attn_implementation: str = "sdpa"):
    """A freshly initialised CompleteP model for a plain Llama config."""
    config = completep_config(config, p)
    config._attn_implementation = attn_implementation
    model = CompletePLlamaForCausalLM(config)
    init_weights_(model, seed=seed)
    if config.tie_word_embeddings:
        model.tie_weights()
    return model


def fold_factor(name: str, config: LlamaConfig, p: Parametrization) -> float:
    """The factor a tensor of the CompleteP form is multiplied by in the plain form (completep.md §4)."""
    branch = _BRANCH.fullmatch(name)
    if branch:
        return p.branch_scales(config)[int(branch.group(1))]
    if name == "model.embed_tokens.weight":
        return p.alpha_in
    head = p.alpha_out / p.width_mult(config)
    if name == "lm_head.weight" and not config.tie_word_embeddings:
        return head
    if name == "model.norm.weight" and config.tie_word_embeddings:
        return head / p.alpha_in  # model.norm feeds only the (tied) head: exact
    if p.attn_scale == "inverse" and _QUERY.fullmatch(name):
        return 1.0 / math.sqrt(config.head_dim)
    return 1.0


def scale_tensor(tensor: torch.Tensor, factor: float) -> torch.Tensor:
    """`tensor * factor` computed in fp64 and cast back once (a factor of 1 returns the tensor itself)."""
    return tensor if factor == 1.0 else (tensor.double() * factor).to(tensor.dtype)


def fold_state_dict(state_dict: dict[str, torch.Tensor], config: LlamaConfig, p: Parametrization) -> dict:
    """CompleteP-form tensors -> plain-Llama tensors (a tied head is dropped: it is the embedding)."""
    return {name: scale_tensor(t, fold_factor(name, config, p)) for name, t in state_dict.items()
            if not (config.tie_word_embeddings and name == "lm_head.weight")}


def unfold_state_dict(state_dict: dict[str, torch.Tensor], config: LlamaConfig, p: Parametrization) -> dict:
    return {name: scale_tensor(t, 1.0 / fold_factor(name, config, p)) for name, t in state_dict.items()}


def to_plain(model: CompletePLlamaForCausalLM, state_dict: dict | None = None) -> LlamaForCausalLM:
    """The equivalent stock `LlamaForCausalLM` (weights folded; built on the meta device, no extra init)."""
    p = parametrization_of(model.config)
    folded = fold_state_dict(state_dict if state_dict is not None else model.state_dict(), model.config, p)
    config = plain_config(model.config)
    with torch.device("meta"):
        plain = LlamaForCausalLM(config)
    plain.load_state_dict(folded, strict=False, assign=True)
    plain.model.rotary_emb = model.model.rotary_emb  # non-persistent inv_freq: not in the state dict
    if config.tie_word_embeddings:
        plain.tie_weights()
    missing = [n for n, t in plain.state_dict().items() if t.is_meta]
    if missing:
        raise ValueError(f"state dict lacks {missing[:3]}")
    return plain


def from_plain(plain: LlamaForCausalLM, p: Parametrization) -> CompletePLlamaForCausalLM:
    """Read a plain Llama as the folded form of a CompleteP model with settings `p` (same function)."""
    config = completep_config(plain.config, p)
    with torch.device("meta"):
        model = CompletePLlamaForCausalLM(config)
    model.load_state_dict(unfold_state_dict(plain.state_dict(), plain.config, p), strict=False, assign=True)
    if config.tie_word_embeddings:
        model.tie_weights()
    model.model.rotary_emb = plain.model.rotary_emb  # non-persistent inv_freq: not in the state dict
    return model


def save_plain(model: CompletePLlamaForCausalLM, out_dir: Path, *, state_dict: dict | None = None) -> None:
    """Write a plain Llama folder (no custom code needed to load it) plus `parameterization.json`."""
    to_plain(model, state_dict).save_pretrained(out_dir, safe_serialization=True)
    write_parametrization(out_dir, parametrization_of(model.config))


def write_parametrization(out_dir: Path, p: Parametrization) -> None:
    (Path(out_dir) / PARAM_FILE).write_text(json.dumps(p.to_dict(), indent=2) + "\n")


def read_parametrization(model_dir: Path) -> Parametrization | None:
    """The settings saved beside a plain folder, or None for a folder of a plain (SP) run."""
    path = Path(model_dir) / PARAM_FILE
    return Parametrization.from_dict(json.loads(path.read_text())) if path.is_file() else None
