"""Build the model to train: a fresh named shape or `--init-from` weights, plus optional freezing, LoRA and
GPU-only speed-ups that switch on only where they are available."""

from __future__ import annotations

import importlib.util
import json
import logging
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel

from growlm.growth.layer_map import later_copies, parse_id_ranges
from growlm.modeling import build_model, empty_model, llama_config
from growlm.train.config import ModelArgs, PretrainConfig, UsageError

logger = logging.getLogger(__name__)
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def resolve_init_dir(init_from: str, revision: str | None) -> tuple[Path, str | None]:
    """A local folder for `--init-from` (Hub ids are downloaded) and its repo id, if any."""
    from growlm.source import resolve_source  # H-io's resolver; imported only when needed

    source = resolve_source(init_from, revision=revision)
    return Path(source.path), source.repo_id


def attn_implementation(args: ModelArgs) -> str:
    """The requested attention kernel, or SDPA when flash-attention-2 is not usable here."""
    if args.attn_implementation == "flash_attention_2" and not (
        torch.cuda.is_available() and importlib.util.find_spec("flash_attn")
    ):
        logger.warning("flash_attention_2 needs a CUDA GPU and the flash-attn package; using sdpa")
        return "sdpa"
    return args.attn_implementation


def receives_weights(accelerator) -> bool:
    """Whether this rank gets its weights from rank 0 inside `accelerator.prepare`, so it need neither build nor read
    them: FSDP2 with `fsdp_cpu_ram_efficient_loading` (accelerate's fsdp2_prepare_model shards the model on the meta
    device and fsdp2_load_full_state_dict broadcasts the main process's full state dict into every rank's shards)."""
    plugin = accelerator.state.fsdp_plugin if accelerator.is_fsdp2 else None
    return bool(plugin is not None and plugin.cpu_ram_efficient_loading) and not accelerator.is_main_process


def load_or_build(cfg: PretrainConfig, init_dir: Path | None, *, weights: bool = True) -> PreTrainedModel:
    """fp32 master weights: `from_pretrained(init_dir)` (weights only), else a freshly initialised shape; under
    `scaling.parametrization` mup/completep the CompleteP model (growlm.completep). `weights=False` (a rank that
    `receives_weights`, SP only): the same model with allocated but unwritten parameters, so only the main process
    holds a full model in CPU memory."""
    attn = attn_implementation(cfg.model)
    if cfg.scaling.parametrization != "sp":
        from growlm.completep.run import load_or_build as load_or_build_scaled

        return load_or_build_scaled(cfg, init_dir, attn)
    if not weights:
        config = (AutoConfig.from_pretrained(init_dir, trust_remote_code=False) if init_dir is not None
                  else llama_config(cfg.model.shape, vocab_size=cfg.model.vocab_size))
        config._attn_implementation = attn
        return empty_model(config)
    if init_dir is not None:
        return AutoModelForCausalLM.from_pretrained(init_dir, dtype=torch.float32, attn_implementation=attn,
                                                    trust_remote_code=False)
    return build_model(cfg.model.shape, init=cfg.model.init, seed=cfg.train.seed, vocab_size=cfg.model.vocab_size,
                       attn_implementation=attn)


def grown_layers(growth: dict) -> list[int]:
    """Target layers a growth record marks as new: every layer that repeats a source layer already used."""
    layer_map = growth.get("layer_map") or growth.get("depth", {}).get("layer_map")
    if not isinstance(layer_map, list):
        raise UsageError("train.freeze=grown needs a growth.json with a 'layer_map' list (a depth-grown model)")
    return later_copies(layer_map)


def apply_freeze(model: PreTrainedModel, spec: str, init_dir: Path | None) -> list[int] | None:
    """Freeze every parameter except the listed decoder layers; returns the trained layers (None: all)."""
    if spec == "none":
        return None
    if spec == "grown":
        if init_dir is None or not (init_dir / "growth.json").is_file():
            raise UsageError("train.freeze=grown needs --init-from a grown model folder that holds growth.json")
        layers = grown_layers(json.loads((init_dir / "growth.json").read_text()))
    else:
        layers = parse_id_ranges(spec, "train.freeze", alternatives="'none' / 'grown'")
    num_layers = model.config.num_hidden_layers
    if not layers or max(layers) >= num_layers:
        raise UsageError(f"train.freeze={spec!r} selects layers {layers}; the model has layers 0-{num_layers - 1}")
    prefixes = tuple(f"model.layers.{i}." for i in layers)
    for name, param in model.named_parameters():
        param.requires_grad_(name.startswith(prefixes))
    return layers


def apply_lora(model: PreTrainedModel, *, rank: int, alpha: float) -> PreTrainedModel:
    """Wrap in peft LoRA adapters on every projection; the base weights are frozen."""
    from peft import LoraConfig, get_peft_model

    return get_peft_model(model, LoraConfig(r=rank, lora_alpha=alpha, target_modules=LORA_TARGETS, lora_dropout=0.0))


def apply_speedups(model: PreTrainedModel, cfg: PretrainConfig) -> dict[str, bool]:
    """Activation checkpointing anywhere; Liger kernels only on a GPU with liger-kernel. Returns what is on."""
    on_gpu = torch.cuda.is_available()
    if cfg.train.activation_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    liger = cfg.train.liger and on_gpu and importlib.util.find_spec("liger_kernel") is not None
    if cfg.train.liger and not liger:
        logger.warning("train.liger needs a CUDA GPU and the liger-kernel package; training without it")
    if liger:
        from liger_kernel.transformers import apply_liger_kernel_to_llama

        apply_liger_kernel_to_llama(model=model)
    compile_ = cfg.train.compile and on_gpu
    if cfg.train.compile and not compile_:
        logger.warning("train.compile is used only on a CUDA GPU; training uncompiled")
    return {"liger": liger, "compile": compile_, "activation_checkpointing": cfg.train.activation_checkpointing}
