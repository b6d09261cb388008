"""G_learn (growth.md §3.5, §4.5; LiGO-style): a learnable linear growth operator.

Depth: one mix `M_X` [L', L] per layer tensor kind X, `T_X[i] = sum_j M_X[i, j] S_X[j]`, initialised one-hot on the
layer map, so the initial output is G_stack's, bitwise. Width: maps B (`emb` [H', H], `q`, `k`, `v`, `o` over the
attention dimensions, `ffn` [F', F]) shared by all layers, initialised `[I; G]` with G ~ N(0, 1/rows); each layer is
widened first, then mixed. Growth writes the initial output as a plain Llama folder (the planners below);
pretraining trains the operator (`LearnedGrowth`, with `torch.func.functional_call` over the target model) and
materialises its output into that model (`growlm.train.learn_phase`).

The spec's one B_emb on both sides of every matrix cannot express the direct split (fan-out copies units, fan-in
must halve them), so width growth starts from `[I; G]`, not from G_direct; depth growth starts from G_stack.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from functools import cache

import torch
from transformers import LlamaConfig

from growlm.growth.depth import split_layer_name, stack_layers
from growlm.growth.noise import seeded_generator
from growlm.growth.types import Builder, Copy, GrowthOptions, Stage, TensorGetter
from growlm.modeling import head_dim, layer_tensor_shapes, tensor_shapes

EMBED, FINAL_NORM, LM_HEAD = "model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"
# W' = B_left W B_right^T per tensor (None: that side keeps its size); every norm gain is B_emb mu.
WIDTH_SIDES = {
    "self_attn.q_proj.weight": ("q", "emb"), "self_attn.k_proj.weight": ("k", "emb"),
    "self_attn.v_proj.weight": ("v", "emb"), "self_attn.o_proj.weight": ("emb", "o"),
    "mlp.gate_proj.weight": ("ffn", "emb"), "mlp.up_proj.weight": ("ffn", "emb"),
    "mlp.down_proj.weight": ("emb", "ffn"), EMBED: (None, "emb"), LM_HEAD: (None, "emb"),
}


def phase_record(options: GrowthOptions) -> dict:
    """Check the G_learn options; growth.json's `learn` section (the phase that pretraining runs)."""
    for field in ("depth_op", "width_op"):
        op = getattr(options, field)
        if op not in (None, "learn"):
            raise ValueError(f"{field}={op!r} cannot be combined with G_learn: the learned operator generates every "
                             "tensor itself; set both operators to 'learn', or grow in two steps")
    learn = options.learn
    problems = [] if options.width_op == "learn" or not options.head_structured else \
        ["head_structured=True applies to width_op='learn' only"]
    if isinstance(learn.steps, bool) or not isinstance(learn.steps, int) or learn.steps < 1:
        problems.append(f"learn.steps={learn.steps!r} must be a positive int (the paper: 100)")
    elif isinstance(learn.warmup, bool) or not isinstance(learn.warmup, int) or not 0 <= learn.warmup <= learn.steps:
        problems.append(f"learn.warmup={learn.warmup!r} must be an int in [0, learn.steps={learn.steps}]")
    if not (math.isfinite(learn.lr) and learn.lr > 0):
        problems.append(f"learn.lr={learn.lr} must be a positive number (the paper: 7e-5)")
    elif not 0 <= learn.min_lr <= learn.lr:
        problems.append(f"learn.min_lr={learn.min_lr} must lie in [0, learn.lr={learn.lr}]")
    if not (math.isfinite(learn.weight_decay) and learn.weight_decay >= 0):
        problems.append(f"learn.weight_decay={learn.weight_decay} must be >= 0")
    if problems:
        raise ValueError("invalid G_learn options: " + "; ".join(problems))
    return {"learn": {**dataclasses.asdict(learn), "head_structured": options.head_structured}}


def plan_depth(stage: Stage, src: LlamaConfig, layer_map: list[int], options: GrowthOptions) -> tuple[Stage, dict]:
    """G_learn-up's initial output: exactly G_stack over `layer_map` (the mixes start one-hot)."""
    return stack_layers(stage, layer_map), {"function_preserving": False}


def _identity_over_noise(rows: int, cols: int, generator: torch.Generator) -> torch.Tensor:
    """[I; G] of shape [rows, cols], G ~ N(0, 1/rows) (growth.md §4.5)."""
    noise = torch.randn((rows - cols, cols), generator=generator, dtype=torch.float32) / math.sqrt(rows)
    return torch.cat([torch.eye(cols), noise])


def initial_maps(src: LlamaConfig, tgt: LlamaConfig, *, head_structured: bool, seed: int) -> dict[str, torch.Tensor]:
    """The trainable width maps at initialisation, each from its own (seed, name) RNG; with `head_structured` the
    attention maps act on whole heads ([n_q', n_q] and [n_kv', n_kv]) and `full_maps` expands them."""
    d_h = 1 if head_structured else head_dim(src)
    sizes = {"emb": (tgt.hidden_size, src.hidden_size),
             "q": (tgt.num_attention_heads * d_h, src.num_attention_heads * d_h),
             "k": (tgt.num_key_value_heads * d_h, src.num_key_value_heads * d_h),
             "v": (tgt.num_key_value_heads * d_h, src.num_key_value_heads * d_h),
             "o": (tgt.num_attention_heads * d_h, src.num_attention_heads * d_h),
             "ffn": (tgt.intermediate_size, src.intermediate_size)}
    return {name: _identity_over_noise(*shape, seeded_generator(seed, f"learn:B_{name}"))
            for name, shape in sizes.items()}


def full_maps(maps, *, head_dim: int, head_structured: bool) -> dict[str, torch.Tensor]:
    """Every B at full size: head-level maps become `kron(B_heads, I_{d_h})`, keeping RoPE pairs inside heads."""
    if not head_structured:
        return dict(maps)
    eye = torch.eye(head_dim, dtype=maps["emb"].dtype, device=maps["emb"].device)
    return {name: torch.kron(b, eye) if name in ("q", "k", "v", "o") else b for name, b in maps.items()}


def widen(key: str, tensor: torch.Tensor, maps: dict[str, torch.Tensor]) -> torch.Tensor:
    """One generated width tensor (growth.md §4.5); `key` is a layer suffix or a full outer tensor name."""
    if key.endswith("norm.weight"):
        return maps["emb"] @ tensor
    left, right = WIDTH_SIDES[key]
    out = tensor if left is None else maps[left] @ tensor
    return out @ maps[right].T


def plan_width(stage: Stage, src: LlamaConfig, tgt: LlamaConfig, options: GrowthOptions,
               num_tgt_layers: int) -> tuple[Stage, dict]:
    """G_learn->'s initial output, per source layer (depth growth, if any, stacks it next)."""
    @cache
    def maps() -> dict[str, torch.Tensor]:
        base = initial_maps(src, tgt, head_structured=options.head_structured, seed=options.seed)
        return full_maps(base, head_dim=head_dim(src), head_structured=options.head_structured)

    def builder(name: str, source: Copy) -> Builder:
        parsed = split_layer_name(name)
        key = parsed[1] if parsed is not None else name

        def build(get: TensorGetter) -> torch.Tensor:
            tensor = get(source.source)
            dtype = torch.float64 if tensor.dtype == torch.float64 else torch.float32
            with exact_fp32():
                out = widen(key, tensor.to(dtype), {k: b.to(dtype) for k, b in maps().items()})
            return out.to(tensor.dtype)

        return build

    return {name: builder(name, source) for name, source in stage.items()}, {
        "head_structured": options.head_structured, "map_init": "[I; G], G ~ N(0, 1/rows)",
        "function_preserving": False}


@contextlib.contextmanager
def exact_fp32():
    """float32 matmuls at full precision (no TF32): a one-hot mix then copies its source bitwise."""
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(previous)


def _attr(name: str) -> str:
    return name.replace(".", "__")


class LearnedGrowth(torch.nn.Module):
    """The trainable G_learn operator over frozen source tensors; `forward()` returns every target tensor by name
    (tied heads have none), ready for `torch.func.functional_call(target_model, ...)` or `materialise`.

    Parameters: one mix per layer tensor kind (`layer_map` given), the width maps (`width`), and the embedding,
    final norm and head with `train_io` (else frozen copies). Source layer tensors are non-persistent buffers.
    """

    def __init__(self, src: LlamaConfig, tgt: LlamaConfig, source: dict[str, torch.Tensor], *,
                 layer_map: list[int] | None, width: bool, head_structured: bool = False, train_io: bool = False,
                 seed: int = 3407):
        super().__init__()
        self.names = list(tensor_shapes(tgt))
        self.kinds = list(layer_tensor_shapes(src))
        self.head_dim, self.head_structured = head_dim(src), head_structured
        num_layers = src.num_hidden_layers
        for k, kind in enumerate(self.kinds):
            stacked = torch.stack([source[f"model.layers.{layer}.{kind}"] for layer in range(num_layers)])
            self.register_buffer(f"layers_{k}", stacked, persistent=False)
        self.io_names = [name for name in (EMBED, FINAL_NORM, LM_HEAD) if name in self.names]
        for name in self.io_names:
            tensor = source.get(name, source[EMBED]).clone()  # a tied source's head is its embedding
            if train_io:
                self.register_parameter(_attr(name), torch.nn.Parameter(tensor))
            else:
                self.register_buffer(_attr(name), tensor, persistent=False)
        self.mix = None
        if layer_map is not None:
            one_hot = torch.zeros(len(layer_map), num_layers, dtype=stacked.dtype, device=stacked.device)
            one_hot[torch.arange(len(layer_map)), torch.tensor(layer_map)] = 1.0
            self.mix = torch.nn.ParameterList([one_hot.clone() for _ in self.kinds])
        self.maps = None
        if width:
            maps = initial_maps(src, tgt, head_structured=head_structured, seed=seed)
            self.maps = torch.nn.ParameterDict({k: b.to(stacked) for k, b in maps.items()})

    def forward(self) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        device_type = self.layers_0.device.type
        with exact_fp32(), torch.autocast(device_type, enabled=False):
            maps = None if self.maps is None else full_maps(self.maps, head_dim=self.head_dim,
                                                            head_structured=self.head_structured)
            for name in self.io_names:
                tensor = getattr(self, _attr(name))
                out[name] = tensor if maps is None else widen(name, tensor, maps)
            for k, kind in enumerate(self.kinds):
                layers = getattr(self, f"layers_{k}")
                if maps is not None:
                    layers = torch.stack([widen(kind, layer, maps) for layer in layers])
                if self.mix is not None:
                    layers = (self.mix[k] @ layers.flatten(1)).view(-1, *layers.shape[1:])
                out.update({f"model.layers.{i}.{kind}": tensor for i, tensor in enumerate(layers)})
        return {name: out[name] for name in self.names}

    @torch.no_grad()
    def materialise(self, model: torch.nn.Module) -> None:
        """Copy the operator's output into `model`'s parameters: a plain Llama from here on."""
        params = dict(model.named_parameters())
        if set(params) != set(self.names):
            raise ValueError(f"the model's parameters {sorted(set(params) ^ set(self.names))[:4]} do not match the "
                             "G_learn operator's target tensors; the --init-from folder is not this growth's target")
        for name, tensor in self().items():
            params[name].copy_(tensor)
