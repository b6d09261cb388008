"""The per-group AdamW table (completep.md §2, §3.2): LR scale, weight decay and eps for every parameter."""

from __future__ import annotations

import re

import torch

from growlm.completep.model import Parametrization, parametrization_of

_LAYER = r"model\.layers\.\d+\."
_PROJ = r"(self_attn\.[qkvo]_proj|mlp\.(gate|up|down)_proj)"
GROUP_PATTERNS = {
    "embedding": re.compile(r"model\.embed_tokens\.weight"),
    "block_norms": re.compile(_LAYER + r"(input_layernorm|post_attention_layernorm)\.weight"),
    "hidden_weights": re.compile(_LAYER + _PROJ + r"\.weight"),
    "hidden_biases": re.compile(_LAYER + _PROJ + r"\.bias"),
    "final_norm": re.compile(r"model\.norm\.weight"),
    "unembedding": re.compile(r"lm_head\.weight"),
}


def group_of(name: str) -> str:
    """The table group of a parameter name; an unknown name is an error."""
    for group, pattern in GROUP_PATTERNS.items():
        if pattern.fullmatch(name):
            return group
    raise ValueError(f"parameter {name!r} matches no CompleteP group; known patterns: "
                     f"{[p.pattern for p in GROUP_PATTERNS.values()]}")


def group_rules(p: Parametrization, config, *, lr: float, weight_decay: float, eps: float) -> dict[str, dict]:
    """group -> {lr_scale, lr, weight_decay, eps} for base eta = lr, lambda = weight_decay, eps_base = eps."""
    m_n, m_l, a = p.width_mult(config), p.depth_mult(config), p.alpha
    depth_lr = m_l ** (a - 1)
    outer_eps, block_eps = eps / m_n, eps / (m_n * m_l ** a)
    if p.eps_mode == "global":  # the reference repo: one eps, and none scaled in its μP-only path
        outer_eps = block_eps = block_eps if p.parametrization == "completep" else eps
    rules = {
        "embedding": (1.0, weight_decay, outer_eps),
        "block_norms": (depth_lr, 0.0, block_eps),
        "hidden_weights": (depth_lr / m_n, weight_decay * m_n, block_eps),
        "hidden_biases": (depth_lr, 0.0, block_eps),
        "final_norm": (1.0, 0.0, outer_eps),
        "unembedding": (1.0, weight_decay, outer_eps),
    }
    return {g: {"lr_scale": s, "lr": lr * s, "weight_decay": wd, "eps": e} for g, (s, wd, e) in rules.items()}


def param_groups(model: torch.nn.Module, *, lr: float, weight_decay: float, eps: float) -> list[dict]:
    """One AdamW group per non-empty table group (trainable parameters only; a tied head is the embedding)."""
    rules = group_rules(parametrization_of(model.config), model.config, lr=lr, weight_decay=weight_decay, eps=eps)
    members: dict[str, list] = {group: [] for group in rules}
    for name, param in model.named_parameters():  # tied weights appear once, under the embedding's name
        if param.requires_grad:
            members[group_of(name)].append(param)
    return [{"name": g, "params": params, **rules[g]} for g, params in members.items() if params]
