"""Self-describing run records: versions, hardware, tokenizer hash, resolved options (training.md §10)."""

from __future__ import annotations

import json
import platform
from importlib import metadata
from pathlib import Path

import torch
from transformers import PretrainedConfig

from growlm.train.config import PretrainConfig
from growlm.modeling import count_parameters
from growlm.train.flops import training_flops

VERSIONED_PACKAGES = ("torch", "transformers", "accelerate", "datasets", "lm_eval", "peft", "growlm")


def package_versions() -> dict[str, str | None]:
    versions = {}
    for name in VERSIONED_PACKAGES:
        try:
            versions[name] = metadata.version(name.replace("_", "-"))
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def hardware(world_size: int) -> str:
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU ({platform.processor() or 'cpu'})"
    return f"{world_size} x {device}"


def flat_hyperparameters(cfg: PretrainConfig) -> dict[str, str | int | float | bool]:
    """`section.key` -> value, with lists and None as strings (TensorBoard's hparams take scalars only)."""
    flat = {}
    for section, values in cfg.to_dict().items():
        for key, value in values.items():
            flat[f"{section}.{key}"] = value if isinstance(value, (int, float, str, bool)) else str(value)
    return flat


def run_record(cfg: PretrainConfig, *, tokenizer, init_dir: Path | None, init_repo: str | None, features: dict,
               trained_layers: list[int] | None, accumulation: int, world_size: int) -> dict:
    """What a run used: options, versions, hardware, tokenizer SHA-256, data source, initial weights."""
    return {
        "dataset": cfg.data.source,
        "hyperparameters": flat_hyperparameters(cfg),
        "gradient_accumulation_steps": accumulation,
        "world_size": world_size,
        "features": features,
        "trained_layers": trained_layers,
        "init_from": init_repo or (str(init_dir) if init_dir else None),
        "tokenizer_sha256": getattr(tokenizer, "growlm_sha256", None),
        "versions": package_versions(),
        "hardware": hardware(world_size),
    }


def training_record(run_info: dict, state: dict, config: PretrainedConfig, init_dir: Path | None) -> dict:
    """`training.json` of the exported model; tokens and FLOPs of an `--init-from` model's own training.json
    (a pretrained base) are carried into `total_tokens` and `flops` (training.md §6.3). A G_learn phase's record
    (`learn`) is kept; its tokens are in `tokens`, its operator's mixing FLOPs in `flops`."""
    base = {}
    if init_dir is not None and (init_dir / "training.json").is_file():
        base = json.loads((init_dir / "training.json").read_text())
    learn = state.get("learn")
    flops = training_flops(count_parameters(config)["non_embedding"], state["tokens"]) + \
        (learn["mixing_flops"] if learn else 0)
    return {
        **run_info,
        "steps": state["step"],
        "tokens": state["tokens"],
        "total_tokens": state["tokens"] + (base.get("total_tokens") or 0),
        "flops": flops + (base.get("flops") or 0),
        "this_run_flops": flops,
        "learn": learn,
    }
