"""Named Llama shapes (the paper's registry plus tiny CPU shapes) and the project's one init rule.

Every arm (small base, scratch baseline, tensors created by growth) uses the same explicit init
(training.md §4, TinyLlama's rule) -- the reference code's PyTorch-default scratch init is a bug
we do not copy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from transformers import LlamaConfig

if TYPE_CHECKING:  # the model classes cost a second to import; growth needs only shapes
    from transformers import LlamaForCausalLM

ATTN_PROJ = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP_PROJ = ("gate_proj", "up_proj", "down_proj")
VOCAB_SIZE = 32000


@dataclass(frozen=True)
class Shape:
    """Decoder shape; vocab is fixed to the Llama 32k tokenizer unless overridden."""

    num_hidden_layers: int
    hidden_size: int
    num_attention_heads: int
    num_key_value_heads: int
    intermediate_size: int
    head_dim: int | None = None
    max_position_embeddings: int = 2048


# The reference registry (training.md §3) and the paper's nominal names, plus tiny CPU shapes.
SHAPES: dict[str, Shape] = {
    "6L1024H": Shape(6, 1024, 16, 16, 2816),
    "6L512H": Shape(6, 512, 8, 8, 1408),
    "24L512H": Shape(24, 512, 8, 8, 1408),
    "3L512H": Shape(3, 512, 8, 8, 1408),  # the GPU operator study's g = 8 / g = 2 bases and width base
    "12L512H": Shape(12, 512, 8, 8, 1408),
    "24L256H": Shape(24, 256, 4, 4, 704),
    "24L1024H": Shape(24, 1024, 16, 16, 2816),
    "410M": Shape(24, 1024, 16, 16, 2816),
    "1L2048H": Shape(1, 2048, 32, 32, 5632),
    "3L2048H": Shape(3, 2048, 32, 32, 5632),
    "6L2048H": Shape(6, 2048, 32, 32, 5632),
    "12L2048H": Shape(12, 2048, 32, 32, 5632),
    "24L2048H": Shape(24, 2048, 32, 32, 5632),
    "1.1B": Shape(24, 2048, 32, 32, 5632),
    "tinyllama-1.1B": Shape(22, 2048, 32, 4, 5632),
    "tiny_LLaMA_750M_like3B": Shape(8, 2560, 20, 4, 7040, head_dim=128),
    "3B": Shape(32, 2560, 20, 4, 7040, head_dim=128),
    "8L4096H": Shape(8, 4096, 32, 32, 11008, head_dim=128),
    "7B": Shape(32, 4096, 32, 32, 11008, head_dim=128),
    # CPU shapes for tests, the demo and laptops.
    "tiny-2L": Shape(2, 64, 4, 2, 176, max_position_embeddings=256),
    "tiny-8L": Shape(8, 64, 4, 2, 176, max_position_embeddings=256),
    "small-1L": Shape(1, 128, 4, 2, 352, max_position_embeddings=512),
    "small-2L": Shape(2, 128, 4, 2, 352, max_position_embeddings=512),
    "small-4L": Shape(4, 128, 4, 2, 352, max_position_embeddings=512),
    "small-8L": Shape(8, 128, 4, 2, 352, max_position_embeddings=512),
    "small-8L-w64": Shape(8, 64, 2, 1, 176, max_position_embeddings=512),  # small-8L at half width (width growth)
}


def llama_config(shape: str | Shape, *, vocab_size: int = VOCAB_SIZE, **overrides) -> LlamaConfig:
    """A `LlamaConfig` for a named shape: untied, no biases, RMSNorm eps 1e-5, RoPE theta 1e4, SiLU."""
    if isinstance(shape, str):
        if shape not in SHAPES:
            raise ValueError(f"unknown model shape {shape!r}; choose one of {sorted(SHAPES)}")
        shape = SHAPES[shape]
    fields = dict(
        vocab_size=vocab_size,
        hidden_size=shape.hidden_size,
        intermediate_size=shape.intermediate_size,
        num_hidden_layers=shape.num_hidden_layers,
        num_attention_heads=shape.num_attention_heads,
        num_key_value_heads=shape.num_key_value_heads,
        head_dim=shape.head_dim or shape.hidden_size // shape.num_attention_heads,
        max_position_embeddings=shape.max_position_embeddings,
        hidden_act="silu",
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        tie_word_embeddings=False,
        attention_bias=False,
        mlp_bias=False,
        bos_token_id=1,
        eos_token_id=2,
    )
    fields.update(overrides)
    return LlamaConfig(**fields)


def init_std(param_name: str, *, hidden_size: int, num_layers: int) -> float | None:
    """TinyLlama init std for a parameter name, or None for norm gains (which are 1)."""
    if param_name.endswith(("o_proj.weight", "down_proj.weight")):
        return 1.0 / (math.sqrt(hidden_size) * num_layers)
    if "norm" in param_name:
        return None
    return math.sqrt(2.0 / (5.0 * hidden_size))


@torch.no_grad()
def init_weights_(model: LlamaForCausalLM, *, rule: str = "tinyllama", seed: int | None = None) -> None:
    """Initialise a Llama in place: `tinyllama` (default, training.md §4) or `hf` (normal(0, initializer_range))."""
    if rule not in ("tinyllama", "hf"):
        raise ValueError(f"unknown init rule {rule!r}; use 'tinyllama' or 'hf'")
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    cfg = model.config
    for name, param in model.named_parameters():
        if rule == "hf":
            std = None if "norm" in name else cfg.initializer_range
        else:
            std = init_std(name, hidden_size=cfg.hidden_size, num_layers=cfg.num_hidden_layers)
        if std is None:
            param.fill_(1.0) if "norm" in name else param.zero_()
        elif name.endswith(".bias"):
            param.zero_()
        else:
            noise = torch.randn(param.shape, generator=generator, dtype=torch.float32)
            param.copy_(noise.mul_(std).to(param.dtype))


def build_model(
    shape: str | Shape | LlamaConfig,
    *,
    init: str = "tinyllama",
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    attn_implementation: str = "sdpa",
    **overrides,
) -> LlamaForCausalLM:
    """A freshly initialised `LlamaForCausalLM` for a shape name, a `Shape` or a ready config."""
    config = shape if isinstance(shape, LlamaConfig) else llama_config(shape, **overrides)
    config._attn_implementation = attn_implementation
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM(config).to(dtype)
    init_weights_(model, rule=init, seed=seed)
    if config.tie_word_embeddings:
        model.tie_weights()
    return model


def empty_model(config: LlamaConfig) -> LlamaForCausalLM:
    """A model of `config` whose fp32 parameters are allocated but never written (so the OS maps no pages for them
    until they are used) and whose buffers (RoPE frequencies) are computed as usual: the placeholder of a rank that
    receives its weights from rank 0 (FSDP2 `cpu_ram_efficient_loading`)."""
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    with init_empty_weights():  # parameters on the meta device, buffers real
        model = AutoModelForCausalLM.from_config(config)
    # Real, distinct storage: accelerate's FSDP2 prepare maps old to sharded parameters by data_ptr (0 on meta).
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            setattr(module, name, torch.nn.Parameter(torch.empty(param.shape), param.requires_grad))
    if config.tie_word_embeddings:
        model.tie_weights()
    return model


def head_dim(config: LlamaConfig) -> int:
    """d_h: the config's `head_dim`, else H / n_q (transformers 5 always fills `head_dim`, and the target
    config inherits the source's, so an H' that n_q' does not divide cannot silently change d_h)."""
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def layer_tensor_shapes(config: LlamaConfig) -> dict[str, tuple[int, ...]]:
    """Per-layer tensor suffix (after `model.layers.{l}.`) -> shape, in Hugging Face state-dict order."""
    H, F, d_h = config.hidden_size, config.intermediate_size, head_dim(config)
    A, K = config.num_attention_heads * d_h, config.num_key_value_heads * d_h
    out_in = {"q_proj": (A, H), "k_proj": (K, H), "v_proj": (K, H), "o_proj": (H, A),
              "gate_proj": (F, H), "up_proj": (F, H), "down_proj": (H, F)}
    shapes: dict[str, tuple[int, ...]] = {}
    for proj in ATTN_PROJ + MLP_PROJ:
        prefix = "self_attn" if proj in ATTN_PROJ else "mlp"
        shapes[f"{prefix}.{proj}.weight"] = out_in[proj]
        if (config.attention_bias if proj in ATTN_PROJ else config.mlp_bias):
            shapes[f"{prefix}.{proj}.bias"] = (out_in[proj][0],)
    shapes["input_layernorm.weight"] = (H,)
    shapes["post_attention_layernorm.weight"] = (H,)
    return shapes


def tensor_shapes(config: LlamaConfig) -> dict[str, tuple[int, ...]]:
    """Every saved tensor name -> shape, in write order; tied embeddings have no `lm_head.weight`."""
    V, H = config.vocab_size, config.hidden_size
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (V, H)}
    per_layer = layer_tensor_shapes(config)
    for layer in range(config.num_hidden_layers):
        shapes.update({f"model.layers.{layer}.{suffix}": shape for suffix, shape in per_layer.items()})
    shapes["model.norm.weight"] = (H,)
    if not config.tie_word_embeddings:
        shapes["lm_head.weight"] = (V, H)
    return shapes


def count_parameters(config: LlamaConfig) -> dict[str, int]:
    """Total and non-embedding parameter counts from `tensor_shapes` (training.md §3); a tied head counts once."""
    sizes = {name: math.prod(shape) for name, shape in tensor_shapes(config).items()}
    embedding = sum(sizes.pop(name, 0) for name in ("model.embed_tokens.weight", "lm_head.weight"))
    non_embedding = sum(sizes.values())
    return {"total": non_embedding + embedding, "non_embedding": non_embedding}
