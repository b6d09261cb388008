"""G_learn's operator-training phase (growth.md §3.5), run by pretraining when `--init-from` names a folder grown with
G_learn: before the grown model trains, its operator trains for `learn.steps` global batches of the run's own data
stream (the batches, global batch and sample order the run reads anyway; the main phase continues after them).
Only the operator's parameters train, through `torch.func.functional_call` over the target model; then its output
is copied into the model, which continues as a plain `LlamaForCausalLM` with a fresh optimizer and warmup.

The phase is atomic: no checkpoint is written inside it, so a run stopped during it (or before its first checkpoint)
starts again from the beginning, phase included, and repeats it exactly. Checkpoints hold the materialised model,
so resuming after them is unchanged. The phase's tokens count in the run's `tokens`, its FLOPs in `flops` and
`flops_full`: the target model's forward and backward at the run's per-token counts, plus the operator's own mixing
(one forward and backward measured with torch's `FlopCounterMode`, times steps and processes).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from pathlib import Path

import torch
from accelerate.utils import DistributedType
from torch.func import functional_call
from torch.optim.lr_scheduler import LambdaLR
from torch.utils.flop_counter import FlopCounterMode
from transformers import AutoConfig, PretrainedConfig

from growlm.growth.learn import LearnedGrowth
from growlm.growth.safetensors_io import LazySafetensorsReader
from growlm.source import resolve_source
from growlm.train.config import PretrainConfig, UsageError
from growlm.train.flops import training_flops
from growlm.train.schedule import lr_at

logger = logging.getLogger(__name__)
START_TOLERANCE = 1e-2  # relative: the folder may hold the start in bf16; a changed folder differs by far more


def pending_learn(init_dir: Path | None, cfg: PretrainConfig, accelerator) -> dict | None:
    """The growth record of an `--init-from` folder grown with G_learn (its operator still has to train), once the
    run is checked to support the phase; None for any other start."""
    if init_dir is None or not (init_dir / "growth.json").is_file():
        return None
    growth = json.loads((init_dir / "growth.json").read_text())
    if not growth.get("learn"):
        return None
    problems = [why for bad, why in (
        (accelerator.distributed_type == DistributedType.FSDP, "it runs on one process or DDP, not FSDP (use a DDP "
                                                                "accelerate config)"),
        (cfg.train.lora_rank > 0, "it trains the whole generated model, not LoRA adapters (drop --lora-rank)"),
        (cfg.train.activation_checkpointing, "recomputed activations would not see the generated weights (drop "
                                             "--activation-checkpointing)"),
        (cfg.scaling.parametrization != "sp", "it supports the standard parametrization only (--parametrization sp)"),
    ) if bad]
    if problems:
        raise UsageError(f"--init-from {init_dir} was grown with G_learn, whose operator trains when the run starts: "
                         + "; ".join(problems))
    return growth


def build_operator(growth: dict, target: PretrainedConfig, device: torch.device) -> LearnedGrowth:
    """The operator at its start, from the source that growth.json names (whose weights must be unchanged)."""
    source = resolve_source(growth["source"], growth.get("source_commit"))
    with LazySafetensorsReader(source.path) as reader:
        if reader.content_sha256() != growth["source_sha256"]:
            raise UsageError(f"the G_learn source {source.path} is not the one this model was grown from (its weights' "
                             f"SHA-256 differs from growth.json's source_sha256); restore it or grow again")
        tensors = {name: reader.get_tensor(name).to(device, torch.float32) for name in reader.names}
    plan = growth["plan"]
    depth = (plan.get("depth") or {}).get("op") == "learn"
    return LearnedGrowth(AutoConfig.from_pretrained(source.path, trust_remote_code=False), target, tensors,
                         layer_map=growth["layer_map"] if depth else None,
                         width=(plan.get("width") or {}).get("op") == "learn",
                         head_structured=growth["learn"]["head_structured"], train_io=growth["learn"]["train_io"],
                         seed=growth["seed"])


@torch.no_grad()
def check_start(op: LearnedGrowth, model: torch.nn.Module, init_dir: Path) -> None:
    """The `--init-from` weights must be the operator's start (what growth wrote), up to the folder's dtype."""
    params = dict(model.named_parameters())
    for name, tensor in op().items():
        have = params.get(name)
        if have is None or have.shape != tensor.shape or \
                (tensor - have).abs().max() > START_TOLERANCE * have.abs().max():
            raise UsageError(f"{init_dir} does not hold G_learn's starting weights ({name} differs from what the "
                             "operator generates from its source): it changed after growth; grow it again")


def operator_flops(op: LearnedGrowth) -> int:
    """FLOPs of one operator forward and backward on one process."""
    with FlopCounterMode(display=False) as counter:
        trained = [tensor for tensor in op().values() if tensor.requires_grad]
        torch.autograd.backward(trained, [torch.ones_like(tensor) for tensor in trained])
    op.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def operator_step(op: LearnedGrowth, model: torch.nn.Module, micro_batches: list[torch.Tensor], *, num_items: int,
                  autocast=contextlib.nullcontext) -> torch.Tensor:
    """Forward/backward over this process's micro-batches of blocks `[b, seq_len + 1]`: the operator generates the
    target tensors once, the model runs on them (`functional_call`), their gradients flow back into the operator.
    Returns the summed loss (this process's share of the global batch's mean token loss)."""
    generated = op()
    leaves = {name: tensor.detach().requires_grad_() if tensor.requires_grad else tensor
              for name, tensor in generated.items()}
    device = next(iter(generated.values())).device
    loss_sum, num_items = torch.zeros((), device=device), torch.tensor(num_items, device=device)
    for batch in micro_batches:
        batch = batch.to(device)
        x, y = batch[:, :-1].contiguous(), batch[:, 1:].contiguous()
        with autocast():
            loss = functional_call(model, leaves, args=(), kwargs={
                "input_ids": x, "labels": y, "shift_labels": y, "num_items_in_batch": num_items}).loss
        loss.backward()
        loss_sum += loss.detach().float()
    trained = [name for name, tensor in generated.items() if tensor.requires_grad]
    torch.autograd.backward([generated[name] for name in trained], [leaves[name].grad for name in trained])
    return loss_sum


def run_learn_phase(accelerator, model: torch.nn.Module, growth: dict, stream, *, cfg: PretrainConfig,
                    init_dir: Path, accumulation: int, metrics, flops_per_token: int, n_ne: int) -> dict:
    """Train the operator on the run's next `learn.steps` global batches, copy its output into `model` (unwrapped)
    and return the phase's record (steps, tokens, final loss, mixing FLOPs) for the train state."""
    from growlm.train.loop import NonFiniteLossError  # the loop imports this module

    learn, t, world = growth["learn"], cfg.train, accelerator.num_processes
    op = build_operator(growth, model.config, accelerator.device)
    check_start(op, model, init_dir)
    mixing = operator_flops(op) * world
    optimizer = torch.optim.AdamW(op.parameters(), lr=learn["lr"], betas=(cfg.optim.beta1, cfg.optim.beta2),
                                  eps=cfg.optim.eps, weight_decay=learn["weight_decay"])
    scheduler = LambdaLR(optimizer, lambda s: lr_at(s, lr_max=1.0, warmup_steps=learn["warmup"],
                                                    horizon=learn["steps"], min_lr_ratio=learn["min_lr"] / learn["lr"]))
    if accelerator.is_main_process:
        logger.info("G_learn: training the growth operator for %d steps (%d parameters) before the grown model",
                    learn["steps"], sum(p.numel() for p in op.parameters()))
    model.train()
    tokens = 0
    with contextlib.closing(iter(stream)) as blocks:
        for step in range(1, learn["steps"] + 1):
            started = time.perf_counter()
            micro_batches = [torch.stack([next(blocks) for _ in range(t.micro_batch_size)])
                             for _ in range(accumulation)]
            local = sum(int((mb[:, 1:] != -100).sum()) for mb in micro_batches)
            num_valid = int(accelerator.reduce(torch.tensor(local, device=accelerator.device), "sum"))
            loss_sum = operator_step(op, model, micro_batches, num_items=num_valid, autocast=accelerator.autocast)
            if world > 1:  # the operator is not wrapped in DDP: sum its gradients over the global batch
                for param in op.parameters():
                    param.grad = accelerator.reduce(param.grad, "sum")
            grad_norm = float(torch.nn.utils.clip_grad_norm_(op.parameters(), cfg.optim.grad_clip))
            loss = accelerator.reduce(loss_sum, "sum").item()
            if not (math.isfinite(loss) and math.isfinite(grad_norm)):
                raise NonFiniteLossError(f"non-finite loss {loss} or grad norm {grad_norm} at G_learn step {step}; "
                                         "stopping (nothing was saved). Lower the operator LR (--learn-lr at growth)")
            lr = optimizer.param_groups[0]["lr"]
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            tokens += t.global_batch_tokens
            seconds = time.perf_counter() - started
            metrics.write({"type": "learn", "step": 0, "learn_step": step, "tokens": tokens, "loss": loss, "lr": lr,
                           "grad_norm": grad_norm, "tokens_per_s": t.global_batch_tokens / seconds,
                           "flops": training_flops(n_ne, tokens) + step * mixing,
                           "flops_full": flops_per_token * tokens + step * mixing})
            if accelerator.is_main_process and (step == learn["steps"] or
                                                (cfg.log.log_every and step % cfg.log.log_every == 0)):
                logger.info("G_learn step %d/%d | loss %.4f | lr %.3e | grad_norm %.3f", step, learn["steps"], loss,
                            lr, grad_norm)
    op.materialise(model)
    return {"steps": learn["steps"], "tokens": tokens, "final_loss": loss, "mixing_flops": learn["steps"] * mixing}
