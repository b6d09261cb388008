"""The masked-growth ramp while training (G_random, growth.md §3.4, §4.4), driven by growth.json's `masked_growth`.

Depth: forward hooks scale the new layers' o_proj and down_proj outputs by m ("sublayer"), or blend the whole block
as m*Block(h) + (1-m)*h ("block"). Width: hooks mask embed_tokens, q/k/v, o_proj/down_proj and gate/up outputs, and
every LlamaRMSNorm becomes a MaskedRMSNorm by swapping the instance's class. Parameter names, FSDP2 sharding and
checkpoints are unchanged. t = optimizer steps since growth = the run's step; the masks live on the training
device and are updated in place after each step. When the ramp is over, the hooks and norm swaps go and the model is
a plain Llama again. An export before that folds the masks into the weights (`Ramp.fold`).
"""

from __future__ import annotations

import dataclasses
import functools
import json
from pathlib import Path

import torch
from transformers import LlamaForCausalLM
from transformers.models.llama.modeling_llama import LlamaRMSNorm

from growlm.completep.model import scale_tensor
from growlm.growth.masked import MaskedGrowth
from growlm.modeling import head_dim
from growlm.train.config import PretrainConfig, UsageError

# width: which mask each projection's output rows get; the query and KV masks follow the "heads" phase
ROW_MASKS = {"self_attn.q_proj": "attn", "self_attn.k_proj": "kv", "self_attn.v_proj": "kv",
             "self_attn.o_proj": "hidden", "mlp.gate_proj": "ffn", "mlp.up_proj": "ffn", "mlp.down_proj": "hidden"}
PHASE_OF = {"attn": "heads", "kv": "heads"}


class MaskedRMSNorm(LlamaRMSNorm):
    """`y = m_H * mu * x / sqrt(sum_j m_H[j] x_j^2 / sum_j m_H[j] + eps)` (§4.4), in float32 like LlamaRMSNorm; the
    source's norm when the new entries of m_H are 0, the plain norm when they are 1."""

    growth_mask: torch.Tensor  # m_H, set when the class is swapped in

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        input_dtype = hidden_states.dtype
        mask = self.growth_mask
        hidden_states = hidden_states.to(torch.float32)
        variance = (hidden_states.pow(2) * mask).sum(-1, keepdim=True) / mask.sum()
        hidden_states = hidden_states * torch.rsqrt(variance + self.variance_epsilon)
        return self.weight * (hidden_states * mask).to(input_dtype)


def _scale_output(mask: torch.Tensor, module, args, output: torch.Tensor) -> torch.Tensor:
    return output * mask.to(output.dtype)


def _blend_block(gate: torch.Tensor, module, args, kwargs, output: torch.Tensor) -> torch.Tensor:
    hidden = args[0] if args else kwargs["hidden_states"]
    gate = gate.to(output.dtype)
    return gate * output + (1 - gate) * hidden


class Ramp:
    """The gates of one masked growth on a `LlamaForCausalLM` (not yet wrapped by accelerate), at step `step`."""

    def __init__(self, model: LlamaForCausalLM, growth: MaskedGrowth, *, device: torch.device, step: int = 0):
        self.growth, self.step = growth, step
        self._handles: list = []
        self._norms: list[MaskedRMSNorm] = []
        self._masks: dict[str, tuple[torch.Tensor, int]] = {}  # name -> (mask, number of old entries)
        config = model.config
        if growth.kind == "depth":
            layers = growth.new_layers or []
            if not layers or max(layers) >= config.num_hidden_layers:
                raise ValueError(f"masked_growth new_layers={layers} do not fit a model with "
                                 f"{config.num_hidden_layers} layers; pass the folder growlm-stack wrote")
            gate = self._mask("layers", 1, 0, device).reshape(())  # one scalar gate (a view) for every new layer
            for i in layers:
                layer = model.model.layers[i]
                if growth.gate_mode == "block":
                    self._hook(layer, functools.partial(_blend_block, gate), with_kwargs=True)
                else:
                    self._hook(layer.self_attn.o_proj, functools.partial(_scale_output, gate))
                    self._hook(layer.mlp.down_proj, functools.partial(_scale_output, gate))
        else:
            self._install_width(model, device)
        self.set_step(step)

    def _mask(self, name: str, size: int, old: int, device: torch.device) -> torch.Tensor:
        mask = torch.ones(size, device=device)
        self._masks[name] = (mask, old)
        return mask

    def _hook(self, module: torch.nn.Module, hook, **kwargs) -> None:
        self._handles.append(module.register_forward_hook(hook, **kwargs))

    def _install_width(self, model: LlamaForCausalLM, device: torch.device) -> None:
        config, old = model.config, self.growth.old_sizes or {}
        d_h = head_dim(config)
        sizes = {"hidden": (config.hidden_size, old.get("hidden_size")),
                 "ffn": (config.intermediate_size, old.get("intermediate_size")),
                 "attn": (config.num_attention_heads * d_h, (old.get("num_attention_heads") or 0) * d_h),
                 "kv": (config.num_key_value_heads * d_h, (old.get("num_key_value_heads") or 0) * d_h)}
        for name, (size, old_size) in sizes.items():
            if not old_size or old_size > size:
                raise ValueError(f"masked_growth old_sizes={old} do not fit the model (hidden_size "
                                 f"{config.hidden_size}, intermediate_size {config.intermediate_size}, "
                                 f"{config.num_attention_heads}/{config.num_key_value_heads} heads)")
            if old_size < size:  # a dimension that did not grow needs no mask
                self._mask(name, size, old_size, device)
        if "hidden" in self._masks:
            mask = self._masks["hidden"][0]
            self._hook(model.model.embed_tokens, functools.partial(_scale_output, mask))
            norms = [model.model.norm] + [n for layer in model.model.layers
                                          for n in (layer.input_layernorm, layer.post_attention_layernorm)]
            for norm in norms:
                if type(norm) is not LlamaRMSNorm:
                    raise ValueError(f"masked width growth needs LlamaRMSNorm norms, found {type(norm).__name__}")
                norm.__class__ = MaskedRMSNorm
                norm.growth_mask = mask
                self._norms.append(norm)
        for layer in model.model.layers:
            for path, name in ROW_MASKS.items():
                if name in self._masks:
                    self._hook(layer.get_submodule(path), functools.partial(_scale_output, self._masks[name][0]))

    @property
    def active(self) -> bool:
        """Whether the gates are still installed (t < end of the ramp)."""
        return bool(self._handles)

    def set_step(self, step: int) -> None:
        """Set t = `step` optimizer steps since growth; at the end of the ramp remove every hook and norm swap."""
        self.step = step
        if step >= self.growth.end_step:
            self.remove()
            return
        values = self.growth.values(step)
        with torch.no_grad():
            for name, (mask, old) in self._masks.items():
                mask[old:] = values[PHASE_OF.get(name, name)]

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        for norm in self._norms:
            norm.__class__ = LlamaRMSNorm
            del norm.growth_mask
        self._handles, self._norms = [], []

    def fold(self, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Plain-Llama weights computing what the gated model computes at this step (new tensors where a mask is
        folded in; a finished ramp returns `state_dict` itself). Raises where no plain Llama can (`fold_problem`)."""
        if not self.active:
            return state_dict
        problem = self.growth.fold_problem(self.step)
        if problem is not None:
            raise ValueError(f"cannot export at step {self.step} of the masked-growth ramp: {problem}")
        folded = dict(state_dict)
        if self.growth.kind == "depth":  # sublayer gates, or block gates at m = 0 (zeroed branches: the identity)
            gate = self.growth.values(self.step)["layers"]
            for i in self.growth.new_layers:
                for path in ("self_attn.o_proj", "mlp.down_proj"):
                    for kind in ("weight", "bias"):
                        name = f"model.layers.{i}.{path}.{kind}"
                        if name in folded:
                            folded[name] = scale_tensor(folded[name], gate)
            return folded
        # width: the stream mask m_H is 1 here (fold_problem), so only q/k/v/gate/up rows carry a mask
        for name, tensor in state_dict.items():
            path = name.removesuffix(".weight").split(".", 3)[-1]
            mask_name = ROW_MASKS.get(path)
            if mask_name in self._masks and mask_name != "hidden":
                mask = self._masks[mask_name][0].to(device=tensor.device, dtype=torch.float64)
                folded[name] = (tensor.double() * mask[:, None]).to(tensor.dtype)
        return folded

    def record(self) -> dict:
        """What training.json says about the ramp: its description, t at the end and whether masks were folded."""
        return {**self.growth.to_dict(), "t": self.step, "folded": self.active}


def read_masked_growth(init_dir: Path | None) -> MaskedGrowth | None:
    """The masked growth an `--init-from` folder's growth.json describes (None: no growth.json or another
    operator)."""
    path = init_dir / "growth.json" if init_dir is not None else None
    if path is None or not path.is_file():
        return None
    entry = json.loads(path.read_text()).get("masked_growth")
    return MaskedGrowth.from_dict(entry, str(path)) if entry is not None else None


def start_ramp(model: LlamaForCausalLM, init_dir: Path | None, cfg: PretrainConfig, *, steps: int,
               device: torch.device) -> Ramp | None:
    """The ramp of a masked-growth `--init-from` folder at t = 0 (None for any other model), checked against the
    run: the export after the last planned step must fold into a plain Llama."""
    try:
        growth = read_masked_growth(init_dir)
    except ValueError as err:
        raise UsageError(str(err)) from None
    t = cfg.train
    if growth is None:
        if t.ramp_steps is not None:
            raise UsageError(f"train.ramp_steps={t.ramp_steps} needs --init-from a masked-growth folder (growlm-stack "
                             "--operator random or --width-operator random); drop --ramp-steps")
        return None
    if t.ramp_steps is not None:
        growth = dataclasses.replace(growth, ramp_steps=t.ramp_steps)
    if t.lora_rank or cfg.scaling.parametrization != "sp":
        raise UsageError(f"--init-from {init_dir} is a masked-growth (G_random) model: train it without LoRA and "
                         "with scaling.parametrization=sp (the ramp gates and folds plain Llama weights only)")
    if t.liger and growth.kind == "width":
        raise UsageError("train.liger replaces the RMSNorms that masked width growth masks during its ramp; "
                         "turn train.liger off for this run")
    problem = growth.fold_problem(steps)
    if problem is not None:
        raise UsageError(f"the run ends at step {steps}, inside the masked-growth ramp of --init-from {init_dir}, "
                         f"where the export could not be a plain Llama: {problem}")
    try:
        return Ramp(model, growth, device=device)
    except ValueError as err:
        raise UsageError(f"--init-from {init_dir}: {err}") from None
