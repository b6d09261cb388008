"""AdamW with decoupled weight decay on matrices only (or on everything, the paper's SP mode)."""

from __future__ import annotations

import torch

from growlm.completep import optim as completep_optim
from growlm.completep.model import is_completep
from growlm.train.config import OptimArgs


def param_groups(model: torch.nn.Module, *, weight_decay: float, weight_decay_all: bool) -> list[dict]:
    """Two groups: 2-D weights decay; norms, biases and (unless `weight_decay_all`) nothing else does.

    Embedding and head matrices are 2-D and decay, as in nanoGPT/TinyLlama. Frozen parameters are left out.
    """
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad:
            (decay if weight_decay_all or param.dim() >= 2 else no_decay).append(param)
    return [g for g in ({"params": decay, "weight_decay": weight_decay},
                        {"params": no_decay, "weight_decay": 0.0}) if g["params"]]


def build_optimizer(model: torch.nn.Module, args: OptimArgs) -> torch.optim.Optimizer:
    """AdamW (betas, eps, lr from `args`); `adamw_8bit` uses bitsandbytes' 8-bit AdamW (GPU only). A CompleteP/μP
    model gets the per-group table (lr, weight decay and eps scaled per group)."""
    if is_completep(model):
        groups = completep_optim.param_groups(model, lr=args.lr, weight_decay=args.weight_decay, eps=args.eps)
    else:
        groups = param_groups(model, weight_decay=args.weight_decay, weight_decay_all=args.weight_decay_all)
    if not groups:
        raise ValueError("no trainable parameters: check train.freeze / train.lora_rank")
    kwargs = dict(lr=args.lr, betas=(args.beta1, args.beta2), eps=args.eps)
    if args.optimizer == "adamw_8bit":
        if not torch.cuda.is_available():
            raise ValueError("optim.optimizer=adamw_8bit needs a CUDA GPU (bitsandbytes); use adamw on CPU")
        import bitsandbytes

        return bitsandbytes.optim.AdamW8bit(groups, **kwargs)
    return torch.optim.AdamW(groups, **kwargs)
