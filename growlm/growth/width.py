"""Width operators (growth.md §4.1-§4.3): G_direct-> split (even / uneven) and G_zero->, under GQA.

Builders compute in float32 (float64 for float64 sources) and cast back to the source dtype, one block of output
rows at a time (`row_blocks`): each entry gets the same float ops as on the whole tensor, random draws included, but
only the output tensor and its source are held whole.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import LlamaConfig

from growlm.growth.noise import row_blocks, seeded_generator
from growlm.growth.types import Builder, Copy, GrowthOptions, Stage, TensorGetter
from growlm.modeling import head_dim, init_std, tensor_shapes

INDEX_RULES = ("balanced", "cyclic", "random")
SPLITS = ("uneven", "even")
EMBED, FINAL_NORM, LM_HEAD = "model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def index_map(old: int, new: int, rule: str, generator: torch.Generator) -> torch.Tensor:
    """sigma: [0,new) -> [0,old), the identity on the old prefix; new slot k goes to pi(k mod old) (`balanced`:
    seeded permutation, `cyclic`: identity) or to an i.i.d. draw (`random`, the reference; unequal counts)."""
    if rule not in INDEX_RULES:
        raise ValueError(f"index_rule={rule!r} is unknown; use one of {list(INDEX_RULES)}")
    extra = torch.arange(new - old)
    if rule == "balanced":
        extra = torch.randperm(old, generator=generator)[extra % old]
    elif rule == "cyclic":
        extra = extra % old
    else:
        extra = torch.randint(old, (new - old,), generator=generator)
    return torch.cat([torch.arange(old), extra])


@dataclass(frozen=True)
class IndexMaps:
    """sigma_H, sigma_F, sigma_G and the head layout they induce (§4.1)."""

    hidden: torch.Tensor
    ffn: torch.Tensor
    groups: torch.Tensor
    queries_per_group: int
    head_dim: int

    def query_heads(self) -> torch.Tensor:
        """tau_q(j*r + t) = sigma_G(j)*r + t."""
        r = self.queries_per_group
        return (self.groups[:, None] * r + torch.arange(r)[None, :]).reshape(-1)

    def attn(self) -> torch.Tensor:
        """sigma_A(h*d_h + e) = tau_q(h)*d_h + e."""
        return (self.query_heads()[:, None] * self.head_dim + torch.arange(self.head_dim)[None, :]).reshape(-1)

    def kv(self) -> torch.Tensor:
        """sigma_K(j*d_h + e) = sigma_G(j)*d_h + e."""
        return (self.groups[:, None] * self.head_dim + torch.arange(self.head_dim)[None, :]).reshape(-1)

    def to_record(self) -> dict:
        return {"sigma_hidden": self.hidden.tolist(), "sigma_ffn": self.ffn.tolist(),
                "sigma_kv_groups": self.groups.tolist()}


def build_index_maps(src: LlamaConfig, tgt: LlamaConfig, rule: str, seed: int) -> IndexMaps:
    """Seeded index maps for hidden units, FFN units and KV groups (each from its own (seed, name) RNG)."""
    def one(field: str) -> torch.Tensor:
        return index_map(getattr(src, field), getattr(tgt, field), rule, seeded_generator(seed, f"sigma:{field}"))

    return IndexMaps(hidden=one("hidden_size"), ffn=one("intermediate_size"), groups=one("num_key_value_heads"),
                     queries_per_group=src.num_attention_heads // src.num_key_value_heads, head_dim=head_dim(src))


def counts(sigma: torch.Tensor, old: int) -> torch.Tensor:
    """c(u) = |sigma^{-1}(u)|."""
    return torch.bincount(sigma, minlength=old)


def split_coefficients(sigma: torch.Tensor, old: int, rows: int, *, split: str, std: float,
                       generator: torch.Generator, dtype: torch.dtype) -> torch.Tensor:
    """beta [rows, len(sigma)] with sum over the copies of each unit = 1 in every row: `even` 1/c, or `uneven`
    1/c + xi on the new copies (xi ~ N(0, std^2)) and the remainder on the original column."""
    inverse_counts = 1.0 / counts(sigma, old).to(dtype)
    beta = inverse_counts[sigma].expand(rows, -1).clone()
    if split == "uneven" and len(sigma) > old:
        xi = torch.randn((rows, len(sigma) - old), generator=generator, dtype=torch.float32).to(dtype) * std
        beta[:, old:] += xi
        copies_sum = torch.zeros((rows, old), dtype=dtype).index_add_(1, sigma[old:], beta[:, old:])
        beta[:, :old] = 1.0 - copies_sum
    return beta


@dataclass(frozen=True)
class _Linear:
    """How one Linear [out', in'] reads its source: row/column maps, output scale a_row, input scale 1/a_col."""

    row_map: torch.Tensor
    col_map: torch.Tensor
    col_old: int
    row_scale: torch.Tensor | None
    col_scale: torch.Tensor | None


def _split_linear(name: str, spec: _Linear, *, split: str, std: float, seed: int) -> Builder:
    def build(get: TensorGetter) -> torch.Tensor:
        source = get(name)
        dtype = _compute_dtype(source.dtype)
        rows, cols = len(spec.row_map), len(spec.col_map)
        out = torch.empty((rows, cols), dtype=source.dtype)
        generator = seeded_generator(seed, f"split:{name}")
        row_scale = spec.row_scale.to(dtype)[:, None] if spec.row_scale is not None else None
        col_scale = spec.col_scale.to(dtype)[None, :] if spec.col_scale is not None else None
        # beta's noise is drawn block by block from one generator: blocks aligned to its column count
        for start, stop in row_blocks(rows, cols - spec.col_old, cols):
            weight = source[spec.row_map[start:stop]].to(dtype)[:, spec.col_map]
            beta = split_coefficients(spec.col_map, spec.col_old, stop - start, split=split, std=std,
                                      generator=generator, dtype=dtype)
            weight.mul_(beta)  # (in place: the same float ops, fewer temporaries)
            if row_scale is not None:
                weight.mul_(row_scale[start:stop])
            if col_scale is not None:
                weight.div_(col_scale)
            out[start:stop] = weight
        return out

    return build


def _gather_vector(name: str, sigma: torch.Tensor, divisor: float) -> Builder:
    def build(get: TensorGetter) -> torch.Tensor:
        source = get(name)
        return (source.to(_compute_dtype(source.dtype))[sigma] / divisor).to(source.dtype)

    return build


def _split_embedding(name: str, sigma: torch.Tensor, scale: torch.Tensor) -> Builder:
    def build(get: TensorGetter) -> torch.Tensor:
        source = get(name)
        dtype = _compute_dtype(source.dtype)
        column_scale = scale.to(dtype)[None, :]
        out = torch.empty((source.shape[0], len(sigma)), dtype=source.dtype)
        for start, stop in row_blocks(source.shape[0], 0, len(sigma)):
            out[start:stop] = source[start:stop].to(dtype)[:, sigma].mul_(column_scale)
        return out

    return build


def stream_scale(sigma_hidden: torch.Tensor, old: int, norm_aware: bool) -> torch.Tensor:
    """a_i = sqrt(kappa / c_H(sigma_H(i))) with kappa = H'/H (float64), or all ones without `norm_aware`."""
    if not norm_aware:
        return torch.ones(len(sigma_hidden), dtype=torch.float64)
    kappa = len(sigma_hidden) / old
    return torch.sqrt(kappa / counts(sigma_hidden, old).to(torch.float64)[sigma_hidden])


def plan_split(stage: Stage, src: LlamaConfig, tgt: LlamaConfig, options: GrowthOptions,
               num_tgt_layers: int) -> tuple[Stage, dict]:
    """G_direct-> (§4.2): every unit/head/group copy computes its source's pre-activation; stream x'_i =
    a_i x_sigma(i). `tgt` has the source depth; `num_tgt_layers` (L') sets the uneven noise std."""
    if options.split not in SPLITS:
        raise ValueError(f"split={options.split!r} is unknown; use one of {list(SPLITS)}")
    maps = build_index_maps(src, tgt, options.index_rule, options.seed)
    H, F = src.hidden_size, src.intermediate_size
    A = src.num_attention_heads * head_dim(src)
    a = stream_scale(maps.hidden, H, options.norm_aware)
    kappa = tgt.hidden_size / H
    sigma_a, sigma_k = maps.attn(), maps.kv()
    vocab_rows = torch.arange(tgt.vocab_size)
    linears = {
        "self_attn.q_proj.weight": _Linear(sigma_a, maps.hidden, H, None, a),
        "self_attn.k_proj.weight": _Linear(sigma_k, maps.hidden, H, None, a),
        "self_attn.v_proj.weight": _Linear(sigma_k, maps.hidden, H, None, a),
        "self_attn.o_proj.weight": _Linear(maps.hidden, sigma_a, A, a, None),
        "mlp.gate_proj.weight": _Linear(maps.ffn, maps.hidden, H, None, a),
        "mlp.up_proj.weight": _Linear(maps.ffn, maps.hidden, H, None, a),
        "mlp.down_proj.weight": _Linear(maps.hidden, maps.ffn, F, a, None),
    }
    grown: Stage = {}
    for name in stage:
        suffix = name.split(".", 3)[-1] if name.startswith("model.layers.") else name
        if name == EMBED:
            grown[name] = _split_embedding(name, maps.hidden, a)
        elif name == FINAL_NORM:
            grown[name] = _gather_vector(name, maps.hidden, kappa if tgt.tie_word_embeddings else 1.0)
        elif suffix.endswith("layernorm.weight"):
            grown[name] = _gather_vector(name, maps.hidden, 1.0)
        else:
            spec = _Linear(vocab_rows, maps.hidden, H, None, a) if name == LM_HEAD else linears[suffix]
            std = options.uneven_std
            if std is None:
                std = 1.0 / (len(spec.col_map) ** 0.5 * num_tgt_layers)
            grown[name] = _split_linear(name, spec, split=options.split, std=std, seed=options.seed)
    equal_counts = bool((counts(maps.hidden, H) == counts(maps.hidden, H)[0]).all())
    return _with_source_getter(stage, grown), {
        **maps.to_record(), "index_rule": options.index_rule, "split": options.split,
        "norm_aware": options.norm_aware, "function_preserving": options.norm_aware or equal_counts}


def _zero_pad_linear(name: str, shape: tuple[int, int], std: float, seed: int) -> Builder:
    def build(get: TensorGetter) -> torch.Tensor:
        source = get(name)
        dtype = _compute_dtype(source.dtype)
        out_old, in_old = source.shape
        weight = torch.zeros(shape, dtype=source.dtype)
        for start, stop in row_blocks(out_old, 0, in_old):
            weight[start:stop, :in_old] = source[start:stop].to(dtype).to(source.dtype)
        generator = seeded_generator(seed, f"zero:{name}")
        new = shape[1] - in_old
        for start, stop in row_blocks(shape[0], new, shape[1]):
            new_cols = torch.randn((stop - start, new), generator=generator, dtype=torch.float32)
            weight[start:stop, in_old:] = (new_cols.to(dtype) * std).to(source.dtype)
        return weight

    return build


def _zero_pad_embedding(name: str, hidden: int) -> Builder:
    def build(get: TensorGetter) -> torch.Tensor:
        source = get(name)
        weight = torch.zeros((source.shape[0], hidden), dtype=source.dtype)
        weight[:, : source.shape[1]] = source
        return weight

    return build


def _zero_pad_norm(name: str, hidden: int) -> Builder:
    def build(get: TensorGetter) -> torch.Tensor:
        source = get(name)
        dtype = _compute_dtype(source.dtype)
        gain = torch.ones(hidden, dtype=dtype)
        gain[: len(source)] = source.to(dtype) * (len(source) / hidden) ** 0.5
        return gain.to(source.dtype)

    return build


def plan_zero(stage: Stage, src: LlamaConfig, tgt: LlamaConfig, options: GrowthOptions,
              num_tgt_layers: int) -> tuple[Stage, dict]:
    """G_zero-> (§4.3): old block kept, new rows read zero from old units, new columns random (target init),
    embedding padded with 0, norm gains sqrt(H/H')*mu then 1. FP with the eps correction."""
    H_new = tgt.hidden_size
    shapes = tensor_shapes(tgt)
    grown: Stage = {}
    for name in stage:
        if name == EMBED:
            grown[name] = _zero_pad_embedding(name, H_new)
        elif name.endswith("norm.weight"):
            grown[name] = _zero_pad_norm(name, H_new)
        else:
            std = init_std(name, hidden_size=H_new, num_layers=num_tgt_layers)
            grown[name] = _zero_pad_linear(name, shapes[name], std, options.seed)
    return _with_source_getter(stage, grown), {
        "eps_correction": options.eps_correction, "function_preserving": options.eps_correction}


def zero_target_eps(src: LlamaConfig, hidden_size: int, options: GrowthOptions) -> float:
    """rms_norm_eps for G_zero->: eps*H/H' with the eps correction, else unchanged."""
    return src.rms_norm_eps * src.hidden_size / hidden_size if options.eps_correction else src.rms_norm_eps


def _with_source_getter(stage: Stage, grown: Stage) -> Stage:
    """Width builders read the previous stage's tensor by name: route `get(name)` through that stage's builder."""
    def source_getter(get: TensorGetter) -> TensorGetter:
        def source(name: str) -> torch.Tensor:
            previous = stage[name]
            # an unchanged source tensor is read as is, not cloned: width builders never write into what they read
            return get(previous.source) if isinstance(previous, Copy) else previous(get)

        return source

    def wire(builder: Builder) -> Builder:
        def build(get: TensorGetter) -> torch.Tensor:
            return builder(source_getter(get))

        return build

    return {name: wire(builder) for name, builder in grown.items()}
