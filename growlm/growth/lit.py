"""prts / lit-gpt checkpoints <-> Hugging Face Llama state dicts (growth.md §8.1).

lit-gpt fuses q, k, v into `attn.attn.weight` of shape [n_kv*(r+2)*d_h, H], **interleaved per KV group**:
viewed as [n_kv, r+2, d_h, H], entries [:, :r] are the group's r query heads, [:, r] its key and
[:, r+1] its value. Both formats use rotate-half RoPE, so no row permutation is needed.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from transformers import GenerationConfig, LlamaConfig

from growlm.atomic import atomic_dir
from growlm.growth.safetensors_io import OutputTensor, write_safetensors
from growlm.modeling import head_dim, tensor_shapes

_LIT_TO_HF = {
    "transformer.wte.weight": "model.embed_tokens.weight",
    "transformer.ln_f.weight": "model.norm.weight",
    "lm_head.weight": "lm_head.weight",
}
_LIT_BLOCK_TO_HF = {
    "norm_1.weight": "input_layernorm.weight",
    "norm_2.weight": "post_attention_layernorm.weight",
    "attn.proj.weight": "self_attn.o_proj.weight",
    "attn.proj.bias": "self_attn.o_proj.bias",
    "mlp.swiglu.w1.weight": "mlp.gate_proj.weight",
    "mlp.swiglu.w1.bias": "mlp.gate_proj.bias",
    "mlp.swiglu.w2.weight": "mlp.up_proj.weight",
    "mlp.swiglu.w2.bias": "mlp.up_proj.bias",
    "mlp.swiglu.w3.weight": "mlp.down_proj.weight",
    "mlp.swiglu.w3.bias": "mlp.down_proj.bias",
}
_HF_BLOCK_TO_LIT = {hf: lit for lit, hf in _LIT_BLOCK_TO_HF.items()}
_LIT_BLOCK = re.compile(r"^transformer\.h\.(\d+)\.(.+)$")
_HF_BLOCK = re.compile(r"^model\.layers\.(\d+)\.(.+)$")


def _head_layout(config: LlamaConfig) -> tuple[int, int, int]:
    """(n_kv, r, d_h) for the fused-attention view."""
    n_q, n_kv = config.num_attention_heads, config.num_key_value_heads
    if n_q % n_kv:
        raise ValueError(f"num_attention_heads={n_q} is not a multiple of num_key_value_heads={n_kv}")
    return n_kv, n_q // n_kv, head_dim(config)


def _owned(t: torch.Tensor) -> torch.Tensor:
    return t.clone(memory_format=torch.contiguous_format)


def strip_wrapper_prefixes(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop leading `model.` / `module.` wrappers (Fabric, DDP) from every key."""
    out = {}
    for key, value in state_dict.items():
        while key.startswith(("model.", "module.")):
            key = key.split(".", 1)[1]
        out[key] = value
    return out


def load_lit_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Load a lit `.pth` (tensors under "model", or a raw state dict) with `weights_only=True`, never a full unpickle."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"lit checkpoint {path} does not exist; set src_init_path to a lit `.pth` file")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:  # torch raises UnpicklingError, RuntimeError or EOFError depending on damage
        raise ValueError(f"cannot load lit checkpoint {path}: {type(err).__name__}: {err} (only tensor checkpoints"
                         " load safely; re-save it as a plain state dict with torch.save(model_state, path))") from None
    state = checkpoint.get("model", checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"lit checkpoint {path} holds no tensor state dict"
                         " (expected tensors under 'model' or a raw dict)")
    return strip_wrapper_prefixes(state)


def split_fused_qkv(fused: torch.Tensor, config: LlamaConfig) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Split lit's interleaved `attn.attn` weight [n_kv*(r+2)*d_h, H] (or bias) into HF q, k, v."""
    n_kv, r, d_h = _head_layout(config)
    if fused.shape[0] != n_kv * (r + 2) * d_h:
        raise ValueError(
            f"fused attn.attn has {fused.shape[0]} rows, expected n_kv*(r+2)*d_h = {n_kv}*{r + 2}*{d_h}; "
            "check the source config name"
        )
    grouped = fused.reshape(n_kv, r + 2, d_h, *fused.shape[1:])
    q = _owned(grouped[:, :r].reshape(n_kv * r * d_h, *fused.shape[1:]))
    k = _owned(grouped[:, r].reshape(n_kv * d_h, *fused.shape[1:]))
    v = _owned(grouped[:, r + 1].reshape(n_kv * d_h, *fused.shape[1:]))
    return q, k, v


def fuse_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, config: LlamaConfig) -> torch.Tensor:
    """Inverse of `split_fused_qkv`."""
    n_kv, r, d_h = _head_layout(config)
    rest = q.shape[1:]
    grouped = torch.cat(
        [q.reshape(n_kv, r, d_h, *rest), k.reshape(n_kv, 1, d_h, *rest), v.reshape(n_kv, 1, d_h, *rest)], dim=1
    )
    return grouped.reshape(n_kv * (r + 2) * d_h, *rest).contiguous()


def lit_to_hf_state_dict(lit: dict[str, torch.Tensor], config: LlamaConfig) -> dict[str, torch.Tensor]:
    """Map a lit-gpt Llama state dict to HF `LlamaForCausalLM` names (tensors own their storage)."""
    hf: dict[str, torch.Tensor] = {}
    for key, value in strip_wrapper_prefixes(lit).items():
        if key in _LIT_TO_HF:
            hf[_LIT_TO_HF[key]] = _owned(value)
            continue
        match = _LIT_BLOCK.match(key)
        if not match:
            raise ValueError(f"unexpected key {key!r} in lit checkpoint;"
                             " expected transformer.wte/ln_f/h.N.* or lm_head")
        layer, rest = match.groups()
        prefix = f"model.layers.{layer}."
        if rest in ("attn.attn.weight", "attn.attn.bias"):
            kind = rest.rsplit(".", 1)[1]
            q, k, v = split_fused_qkv(value, config)
            for proj, tensor in zip(("q_proj", "k_proj", "v_proj"), (q, k, v)):
                hf[f"{prefix}self_attn.{proj}.{kind}"] = tensor
        elif rest in _LIT_BLOCK_TO_HF:
            hf[prefix + _LIT_BLOCK_TO_HF[rest]] = _owned(value)
        else:
            raise ValueError(f"unexpected key {key!r} in lit checkpoint"
                             f" (block part {rest!r} has no HF Llama equivalent)")
    if config.tie_word_embeddings and "lm_head.weight" in hf:
        if not torch.equal(hf["lm_head.weight"], hf["model.embed_tokens.weight"]):
            raise ValueError("config ties embeddings but the lit checkpoint's lm_head differs from wte;"
                             " use an untied config")
        del hf["lm_head.weight"]
    return hf


def hf_to_lit_state_dict(hf: dict[str, torch.Tensor], config: LlamaConfig) -> dict[str, torch.Tensor]:
    """Map HF Llama names to lit-gpt names, fusing q/k/v per KV group (the inverse of `lit_to_hf_state_dict`)."""
    to_lit = {v: k for k, v in _LIT_TO_HF.items()}
    lit: dict[str, torch.Tensor] = {}
    for key, value in hf.items():
        if key in to_lit:
            lit[to_lit[key]] = _owned(value)
            continue
        match = _HF_BLOCK.match(key)
        if not match:
            raise ValueError(f"unexpected key {key!r} in HF Llama state dict")
        layer, rest = match.groups()
        prefix = f"transformer.h.{layer}."
        if rest.startswith("self_attn.q_proj."):
            kind = rest.rsplit(".", 1)[1]
            parts = [hf[f"model.layers.{layer}.self_attn.{p}.{kind}"] for p in ("q_proj", "k_proj", "v_proj")]
            lit[f"{prefix}attn.attn.{kind}"] = fuse_qkv(*parts, config)
        elif rest.startswith(("self_attn.k_proj.", "self_attn.v_proj.")):
            continue  # fused together with q_proj above
        elif rest in _HF_BLOCK_TO_LIT:
            lit[prefix + _HF_BLOCK_TO_LIT[rest]] = _owned(value)
        else:
            raise ValueError(f"unexpected key {key!r} in HF Llama state dict (no lit-gpt equivalent)")
    if config.tie_word_embeddings and "lm_head.weight" not in lit:
        lit["lm_head.weight"] = _owned(lit["transformer.wte.weight"])
    return lit


def convert_lit_checkpoint(
    path: str | Path, config: LlamaConfig, out_dir: str | Path, *,
    max_shard_size: int | str = "2GB",
) -> Path:
    """Write a lit checkpoint as an HF folder (config.json, generation_config.json, safetensors); lit
    checkpoints carry no tokenizer."""
    out_dir = Path(out_dir)
    if out_dir.exists():
        raise ValueError(f"{out_dir} already exists; choose a new folder for the converted checkpoint")
    state = lit_to_hf_state_dict(load_lit_state_dict(path), config)
    expected = tensor_shapes(config)
    if set(state) != set(expected):
        missing, extra = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
        raise ValueError(f"lit checkpoint {path} does not match the config"
                         f": missing {missing[:5]}, unexpected {extra[:5]}")
    with atomic_dir(out_dir) as temp:
        config = LlamaConfig(**config.to_dict())
        config.architectures = ["LlamaForCausalLM"]
        config.dtype = next(iter(state.values())).dtype
        tensors = [OutputTensor(name, state[name].dtype, tuple(state[name].shape), lambda t=state[name]: t)
                   for name in expected]
        write_safetensors(temp, tensors, max_shard_size=max_shard_size)
        config.save_pretrained(temp)
        GenerationConfig.from_model_config(config).save_pretrained(temp)
    return out_dir
