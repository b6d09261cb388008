"""Growth of a CompleteP model (completep.md §6): new base/depth bookkeeping and the chosen correction.

Depth growth L_s -> L_t multiplies m_L by g = L_t/L_s, so r_t = g^-alpha r_s; with c = r_s/r_t = g^alpha:
  naive   keep r_s and the old optimizer settings (base_depth x g): exact, but not CompleteP at depth L_t
  fold    r = r_t, every o_proj/down_proj (and bias) x c: exact
  gauge   r = r_t, embed_tokens x 1/c, rms_norm_eps x 1/c^2 (tied: model.norm x c): exact (the default)
  rescale r = r_t, nothing else: not function preserving
Width growth by k = H'/H shrinks alpha_out/m_N by k; k is folded into lm_head (tied: model.norm) to keep the function.
The plan runs in CompleteP space: a plain source is unfolded on read, every target tensor folded on write.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from typing import TYPE_CHECKING

from transformers import LlamaConfig

from growlm.completep import PARAM_FILE

if TYPE_CHECKING:  # the model module imports the Llama model classes (a second); plain sources never need it
    from growlm.completep.model import Parametrization

CORRECTIONS = ("naive", "fold", "gauge", "rescale")
_BRANCH = re.compile(r"model\.layers\.\d+\.(self_attn\.o_proj|mlp\.down_proj)\.(weight|bias)")


def read_source(src_dir: Path, config: LlamaConfig) -> tuple[LlamaConfig, tuple[Parametrization, bool] | None]:
    """(plain config, (settings, weights are folded)) for a CompleteP source, (config, None) for a plain one."""
    if getattr(config, "completep", None) is None and not (Path(src_dir) / PARAM_FILE).is_file():
        return config, None
    from growlm.completep.model import parametrization_of, plain_config, read_parametrization

    if getattr(config, "completep", None) is not None:  # a save_pretrained CompletePLlamaForCausalLM folder
        return plain_config(config), (parametrization_of(config), False)
    saved = read_parametrization(src_dir)
    return config, (None if saved is None else (saved, True))


def correction_factors(src: LlamaConfig, tgt: LlamaConfig, c: float, correction: str) -> dict[str, float]:
    """CompleteP-space factors per target tensor name (absent: 1), and the eps factor under key 'rms_norm_eps'."""
    k = tgt.hidden_size / src.hidden_size
    factors = {"lm_head.weight" if not tgt.tie_word_embeddings else "model.norm.weight": k}
    if correction == "gauge":
        factors["model.embed_tokens.weight"] = 1.0 / c
        factors["rms_norm_eps"] = c ** -2
        if tgt.tie_word_embeddings:
            factors["model.norm.weight"] *= c
    return factors


def correct_plan(plan, src: LlamaConfig, source: tuple[Parametrization, bool], correction: str):
    """The plan rewritten for a CompleteP source (see the module docstring); the record gains a 'completep' entry."""
    from growlm.completep.model import fold_factor, scale_tensor

    if correction not in CORRECTIONS:
        raise ValueError(f"completep correction {correction!r}: choose one of {list(CORRECTIONS)}")
    p_s, folded = source
    tgt = plan.config
    layer_map = (plan.record.get("depth") or {}).get("layer_map") or list(range(src.num_hidden_layers))
    src_scales = p_s.branch_scales(src)
    if correction == "naive":
        p_t = dataclasses.replace(p_s, base_depth=p_s.base_depth * tgt.num_hidden_layers / src.num_hidden_layers,
                                  branch_scale=[src_scales[j] for j in layer_map])
        c = 1.0
    else:
        p_t = dataclasses.replace(p_s, branch_scale=None)
        c = p_s.residual(src) / p_t.residual(tgt)
        p_t.branch_scale = [src_scales[j] / c for j in layer_map]
    factors = correction_factors(src, tgt, c, correction)
    tgt.rms_norm_eps *= factors.pop("rms_norm_eps", 1.0)

    def src_get(get):
        return (lambda name: scale_tensor(get(name), 1.0 / fold_factor(name, src, p_s))) if folded else get

    def corrected(name, build):
        factor = factors.get(name, 1.0) * (c if correction == "fold" and _BRANCH.fullmatch(name) else 1.0)
        total = factor * fold_factor(name, tgt, p_t)
        return lambda get: scale_tensor(build(src_get(get)), total)

    plan.tensors = {name: corrected(name, build) for name, build in plan.tensors.items()}
    plan.record["completep"] = {"correction": correction, "g_alpha": c, "source": p_s.to_dict(),
                                "target": p_t.to_dict()}
    plan.record["function_preserving"] = plan.record["function_preserving"] and (correction != "rescale" or c == 1)
    return plan


def write_target(out_dir: Path, plan) -> None:
    """`parameterization.json` of a grown CompleteP model (nothing for a plain source)."""
    if "completep" in plan.record:
        from growlm.completep.model import Parametrization, write_parametrization

        write_parametrization(out_dir, Parametrization.from_dict(plan.record["completep"]["target"]))

