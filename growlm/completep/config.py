"""The pretraining config section `scaling:` (flags `--parametrization`, `--alpha`, `--base-width`, ...)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from growlm.config_io import arg


@dataclass
class ScalingArgs:
    parametrization: Literal["sp", "mup", "completep"] = arg(
        "sp", "sp (one LR for all), mup (width scaling) or completep (width and depth scaling, completep.md)")
    alpha: float = arg(1.0, "completep depth exponent: 1.0 = CompleteP, 0.5 = depth-muP")
    base_width: int | None = arg(None, "hidden size of the tuned proxy (default: this model's, m_N = 1)")
    base_depth: int | None = arg(None, "decoder layers of the tuned proxy (default: this model's, m_L = 1)")
    alpha_in: float = arg(1.0, "embedding output multiplier")
    alpha_out: float = arg(1.0, "logit multiplier (logits x alpha_out / m_N)")
    attn_scale: Literal["sqrt", "inverse"] = arg("sqrt", "attention logits scale: 1/sqrt(d_h) (HF) or 1/d_h")
    init_std: float = arg(0.02, "sigma_base: init std of embedding and head (hidden matrices: sigma_base/sqrt(m_N))")
    eps_mode: Literal["table", "global"] = arg(
        "table", "Adam eps: per group as in the table, or global (one eps_base/(m_N m_L^alpha), the reference repo)")


def scaling_problems(scaling: ScalingArgs, *, weight_decay_all: bool, lora_rank: int) -> list[str]:
    """Problems with the `scaling` section (empty when valid)."""
    if scaling.parametrization == "sp":
        return []
    problems = []
    if not 0 < scaling.alpha <= 1:
        problems.append(f"scaling.alpha={scaling.alpha} must lie in (0, 1] (1 = CompleteP, 0.5 = depth-muP)")
    for name in ("base_width", "base_depth"):
        value = getattr(scaling, name)
        if value is not None and value <= 0:
            problems.append(f"scaling.{name}={value} must be positive")
    if scaling.init_std <= 0 or scaling.alpha_in <= 0 or scaling.alpha_out <= 0:
        problems.append("scaling.init_std, scaling.alpha_in and scaling.alpha_out must be positive")
    if weight_decay_all:
        problems.append(f"optim.weight_decay_all is the SP recipe; scaling.parametrization="
                        f"{scaling.parametrization} sets weight decay per group (drop --weight-decay-all)")
    if lora_rank:
        problems.append(f"train.lora_rank does not combine with scaling.parametrization={scaling.parametrization}")
    return problems
