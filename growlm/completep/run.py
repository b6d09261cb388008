"""The pretraining side of CompleteP: settings from the `scaling:` section, the model to train, and the resume
check that the optimizer groups rebuilt from the config equal the saved ones."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, LlamaConfig

from growlm.completep.model import (
    Parametrization,
    build,
    from_plain,
    is_completep,
    parametrization_of,
    read_parametrization,
)
from growlm.modeling import llama_config

GROUP_KEYS = ("name", "lr_scale", "weight_decay", "eps")


def settings_for_run(cfg, config: LlamaConfig) -> Parametrization:
    """The run's settings; an unset base shape is the model's own (m_N = m_L = 1)."""
    s = cfg.scaling
    return Parametrization(
        parametrization=s.parametrization, alpha=s.alpha, base_width=s.base_width or config.hidden_size,
        base_depth=s.base_depth or config.num_hidden_layers, alpha_in=s.alpha_in, alpha_out=s.alpha_out,
        attn_scale=s.attn_scale, init_std=s.init_std, eps_mode=s.eps_mode,
        base_hyperparameters={"lr": cfg.optim.lr, "weight_decay": cfg.optim.weight_decay, "eps": cfg.optim.eps})


def load_or_build(cfg, init_dir: Path | None, attn: str):
    """A fresh CompleteP/μP model, or `--init-from` weights read as one.

    A plain folder is read as the folded form of the CompleteP model its `parameterization.json` describes (the
    function is unchanged); without that file, the run's `scaling:` settings describe it.
    """
    if init_dir is None:
        config = llama_config(cfg.model.shape, vocab_size=cfg.model.vocab_size)
        return build(config, settings_for_run(cfg, config), seed=cfg.train.seed, attn_implementation=attn)
    model = AutoModelForCausalLM.from_pretrained(init_dir, dtype=torch.float32, attn_implementation=attn,
                                                 trust_remote_code=False)
    saved = parametrization_of(model.config) if is_completep(model) else read_parametrization(init_dir)
    if saved is None:
        return from_plain(model, settings_for_run(cfg, model.config))
    s = cfg.scaling
    asked = {"parametrization": s.parametrization, "base_width": s.base_width, "base_depth": s.base_depth}
    clashes = [f"{k}={v} (folder: {getattr(saved, k)})" for k, v in asked.items()
               if v is not None and v != getattr(saved, k)]
    if clashes:
        raise ValueError(f"--init-from {init_dir} was saved with other CompleteP settings: {', '.join(clashes)}; "
                         "leave base_width/base_depth unset to continue with the folder's")
    saved = dataclasses.replace(saved, base_hyperparameters=settings_for_run(cfg, model.config).base_hyperparameters)
    return from_plain(model, saved) if not is_completep(model) else model


def group_settings(optimizer: torch.optim.Optimizer) -> list[dict]:
    return [{k: g.get(k) for k in GROUP_KEYS} for g in optimizer.param_groups]


def check_resumed_groups(optimizer: torch.optim.Optimizer, rebuilt: list[dict], folder: Path) -> None:
    """After loading a checkpoint, its groups must equal the ones the config rebuilt (same table, same run)."""
    saved = group_settings(optimizer)
    if saved != rebuilt:
        raise ValueError(f"{folder} holds optimizer groups {saved} but the config builds {rebuilt}; resume with "
                         "the run's own scaling/optim settings")
