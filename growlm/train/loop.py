"""The pretraining loop: batch -> forward/backward (accumulate) -> clip -> guard -> step -> log -> eval -> save.

The same code runs on one CPU, one GPU, DDP and FSDP2 (the accelerate config decides). Sample k of the run is
global block k of the data stream; rank r trains blocks r, r + P, ... so the data order does not depend on the
world size, micro-batch or accumulation. The loss is normalised by the valid tokens of the whole global batch.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import resource
import signal
import time
from pathlib import Path

import torch
import yaml
from accelerate import Accelerator, PartialState
from accelerate.utils import (DistributedType, FullyShardedDataParallelPlugin, broadcast_object_list, gather_object,
                               set_seed)
from torch.optim.lr_scheduler import LambdaLR

from growlm.completep.run import check_resumed_groups, group_settings
from growlm.data import build_train_stream, global_data_state, load_tokenizer, validation_blocks
from growlm.modeling import count_parameters
from growlm.train import checkpoint as ckpt
from growlm.train.config import PretrainConfig, UsageError, accumulation_steps, planned_steps
from growlm.train.export import export_final, read_data_position
from growlm.train.flops import default_peak_tflops, full_flops_per_token, mfu, training_flops
from growlm.train.learn_phase import pending_learn, run_learn_phase
from growlm.train.metrics import MetricsLog, ProgressLog
from growlm.train.model_setup import (apply_freeze, apply_lora, apply_speedups, load_or_build, receives_weights,
                                      resolve_init_dir)
from growlm.train.optim import build_optimizer
from growlm.train.ramp import start_ramp
from growlm.train.records import run_record, training_record
from growlm.train.schedule import horizon_steps, lr_at

logger = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
    """A NaN/Inf loss or gradient norm: raised before `optimizer.step()`, so the last checkpoint stays good."""


def make_accelerator(cfg: PretrainConfig) -> Accelerator:
    """bf16 autocast on GPU and fp32 on CPU by default; FSDP2 reduces gradients in fp32 under bf16."""
    precision = cfg.train.mixed_precision
    if precision == "auto":
        precision = "bf16" if torch.cuda.is_available() else "no"
    accelerator = Accelerator(mixed_precision=precision, step_scheduler_with_optimizer=False,
                              log_with="tensorboard" if cfg.log.tensorboard else None,
                              project_dir=cfg.train.output_dir)
    if accelerator.distributed_type == DistributedType.MULTI_CPU and os.environ.get("ACCELERATE_USE_FSDP") == "true":
        # An FSDP launch config on CPU (ACCELERATE_USE_CPU=1): accelerate turns FSDP on only for GPU-like device
        # types (accelerate/state.py:986-1016) and would silently train DDP over gloo. FSDP2 runs on CPU/gloo, so
        # honour the config with a plugin read from the launcher's FSDP_* variables (as accelerator.py:388-393 does).
        accelerator.state.distributed_type = PartialState._shared_state["distributed_type"] = DistributedType.FSDP
        accelerator.state.fsdp_plugin = FullyShardedDataParallelPlugin()
    fsdp = accelerator.state.fsdp_plugin if accelerator.distributed_type == DistributedType.FSDP else None
    if fsdp is not None and fsdp.fsdp_version == 2 and precision == "bf16":
        from torch.distributed.fsdp import MixedPrecisionPolicy

        # accelerate's default would also reduce gradients in bf16; keep compute in bf16, reductions in fp32.
        fsdp.mixed_precision_policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    return accelerator


class StopRequest:
    """Set by SIGTERM (e.g. Slurm preemption): checked right after each `optimizer.step()`, so the run saves the
    step during which the signal arrived and exits without starting another one."""

    def __init__(self) -> None:
        self.requested = False
        signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame) -> None:
        self.requested = True

    def agreed(self, accelerator) -> bool:
        """Whether any rank got the signal (an all-reduce MAX of the flag), so that all ranks stop at the same step."""
        flag = torch.tensor(int(self.requested), device=accelerator.device)
        return bool(accelerator.reduce(flag, "max"))


def accumulate_gradients(accelerator, model, micro_batches: list[torch.Tensor], *, num_valid: int) -> torch.Tensor:
    """Forward/backward over this rank's micro-batches of blocks `[b, seq_len + 1]`. Returns this rank's share of the
    global batch's mean token loss.

    Gradients are synced on the last micro-batch only (DDP: `no_sync` keeps a full local gradient anyway), except
    under FSDP2, where every micro-batch reduce-scatters into the sharded gradient: FSDP2's `no_sync` would keep an
    unsharded gradient of the whole model per rank (in the fp32 reduce dtype), i.e. full model memory per GPU. The
    cost is accumulation - 1 extra reduce-scatters per step, overlapped with the backward."""
    loss_sum = torch.zeros((), device=accelerator.device)
    num_items = torch.tensor(num_valid, device=accelerator.device)
    for i, batch in enumerate(micro_batches):
        batch = batch.to(accelerator.device)
        x, y = batch[:, :-1].contiguous(), batch[:, 1:].contiguous()
        last = i == len(micro_batches) - 1
        sync = contextlib.nullcontext() if last or accelerator.is_fsdp2 else accelerator.no_sync(model)
        with sync:
            with accelerator.autocast():
                # Sum of token CE over this micro-batch / valid tokens of the whole global batch.
                loss = model(input_ids=x, labels=y, shift_labels=y, num_items_in_batch=num_items).loss
            # DDP/FSDP average gradients over ranks; undo that so the global batch is one sum.
            accelerator.backward(loss * accelerator.num_processes)
        loss_sum += loss.detach().float()
    return loss_sum


@torch.no_grad()
def validation_loss(accelerator, model, blocks: torch.Tensor, micro_batch_size: int) -> float:
    """Mean token cross-entropy over the fixed validation blocks, split over ranks (equal forwards on each)."""
    model.eval()
    mine = blocks[accelerator.process_index::accelerator.num_processes]
    num_batches = math.ceil(math.ceil(len(blocks) / accelerator.num_processes) / micro_batch_size)
    totals = torch.zeros(2, dtype=torch.float64, device=accelerator.device)
    for b in range(num_batches):
        chunk = mine[b * micro_batch_size:(b + 1) * micro_batch_size]
        weight = 1.0 if len(chunk) else 0.0  # a rank with no blocks left still runs a forward (FSDP collectives)
        chunk = (chunk if len(chunk) else blocks[:1]).to(accelerator.device)
        x, y = chunk[:, :-1].contiguous(), chunk[:, 1:].contiguous()
        with accelerator.autocast():
            loss_sum = model(input_ids=x, labels=y, shift_labels=y, num_items_in_batch=1).loss
        totals += torch.stack([loss_sum.double() * weight, torch.tensor(y.numel() * weight, device=totals.device)])
    totals = accelerator.reduce(totals, "sum")
    model.train()
    return (totals[0] / totals[1]).item()


def peak_memory_gb() -> float:
    """Peak memory in GiB: the GPU's max allocated on CUDA, else the process's peak RSS."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def train(cfg: PretrainConfig) -> Path:
    """Run (or resume) one pretraining run; returns the exported `OUTPUT_DIR/final` folder."""
    out, t = Path(cfg.train.output_dir), cfg.train
    accelerator = make_accelerator(cfg)
    set_seed(t.seed)
    world, rank, main = accelerator.num_processes, accelerator.process_index, accelerator.is_main_process
    accum = accumulation_steps(global_batch_tokens=t.global_batch_tokens, seq_len=cfg.data.seq_len,
                               micro_batch_size=t.micro_batch_size, world_size=world)
    # Which checkpoint to resume (verified, of this folder's run), or whether a fresh run may use the folder.
    plan = ckpt.plan_run(out, resume=cfg.checkpoint.resume, overwrite=cfg.checkpoint.overwrite)
    plan.run_id = broadcast_object_list([plan.run_id])[0]  # a fresh run's id is drawn on every rank: take rank 0's
    resume_dir = plan.resume_dir
    init_dir, init_repo = (resolve_init_dir(cfg.checkpoint.init_from, cfg.checkpoint.init_revision)
                           if cfg.checkpoint.init_from else (None, None))
    tokenizer = load_tokenizer(cfg.data.tokenizer)
    model = load_or_build(cfg, init_dir, weights=not receives_weights(accelerator))
    learn = pending_learn(init_dir, cfg, accelerator) if resume_dir is None else None  # G_learn: operator first
    if len(tokenizer) > model.config.vocab_size:
        raise UsageError(f"tokenizer has {len(tokenizer)} tokens but the model only {model.config.vocab_size} "
                         f"embeddings; set model.vocab_size >= {len(tokenizer)} or use the matching tokenizer")
    if t.lora_rank and accelerator.distributed_type == DistributedType.FSDP:
        raise UsageError("train.lora_rank is supported with single-process or DDP runs, not FSDP")
    trained_layers = apply_freeze(model, t.freeze, init_dir)
    # masked growth (G_random): gates on the new layers/units, None for any other model
    ramp = start_ramp(model, init_dir, cfg, steps=planned_steps(t), device=accelerator.device)
    model = apply_lora(model, rank=t.lora_rank, alpha=t.lora_alpha) if t.lora_rank else model
    features = apply_speedups(model, cfg)
    model_config = model.config
    steps = planned_steps(t)
    horizon = horizon_steps(cfg.schedule.horizon, steps)
    optimizer = build_optimizer(model, cfg.optim)
    sched = cfg.schedule
    scheduler = LambdaLR(optimizer, lambda s: lr_at(s, lr_max=1.0, warmup_steps=sched.warmup_steps, horizon=horizon,
                                                    min_lr_ratio=sched.min_lr_ratio, schedule=sched.schedule,
                                                    decay_fraction=sched.decay_fraction))
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    stream = build_train_stream(cfg.data, rank=rank, world_size=world, tokenizer=tokenizer)
    val_blocks = validation_blocks(cfg.data, tokenizer=tokenizer)
    state = {"step": 0, "tokens": 0, "nonfinite_skips": 0}
    if resume_dir is not None:
        rebuilt = group_settings(optimizer)
        state, data_state = ckpt.load_checkpoint(accelerator, resume_dir, seed=t.seed)
        check_resumed_groups(optimizer, rebuilt, resume_dir)
        stream.load_state_dict(data_state)
        if ramp is not None:
            ramp.set_step(state["step"])
        logger.info("resumed from %s at step %d", resume_dir, state["step"])
    elif cfg.checkpoint.data_from:
        stream.load_state_dict(read_data_position(cfg.checkpoint.data_from))
    if main:  # the first write to the output folder
        ckpt.prepare_output(plan)
    metrics = MetricsLog(out / "metrics.jsonl", resumed_step=state["step"] if resume_dir else None, enabled=main)
    if main:
        (out / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    run_info = run_record(cfg, tokenizer=tokenizer, init_dir=init_dir, init_repo=init_repo, features=features,
                          trained_layers=trained_layers, accumulation=accum, world_size=world)
    if cfg.log.tensorboard:
        accelerator.init_trackers("pretrain", config=run_info["hyperparameters"])
    flops_per_token = full_flops_per_token(model_config, cfg.data.seq_len)
    n_ne = count_parameters(model_config)["non_embedding"]
    peak_tflops = cfg.log.peak_tflops or default_peak_tflops()
    tokens_per_step = t.global_batch_tokens
    if learn is not None:  # trains on the run's first batches, then leaves the materialised plain Llama in `model`
        state["learn"] = run_learn_phase(accelerator, accelerator.unwrap_model(model), learn, stream, cfg=cfg,
                                         init_dir=init_dir, accumulation=accum, metrics=metrics,
                                         flops_per_token=flops_per_token, n_ne=n_ne)
        state["tokens"] = state["learn"]["tokens"]
    mixing_flops = state.get("learn", {}).get("mixing_flops", 0)  # G_learn's operator, counted in both FLOPs
    if features["compile"]:
        model.compile()
    blocks, stop = iter(stream), StopRequest()

    def evaluate() -> None:
        val = validation_loss(accelerator, model, val_blocks, t.micro_batch_size)
        metrics.write({"type": "eval", "step": state["step"], "tokens": state["tokens"], "val_loss": val})
        if main:
            logger.info("eval at step %d/%d: val_loss %.4f", state["step"], steps, val)
        accelerator.log({"val_loss": val}, step=state["step"])

    pusher = None
    if t.push_to_hub and main:
        from growlm.hub_push import BackgroundPusher  # imported only when publishing

        pusher = BackgroundPusher(t.push_to_hub)

    def save() -> None:
        folder = ckpt.save_checkpoint(accelerator, out / "checkpoints", step=state["step"], train_state=state,
                                      data_state=stream.state_dict(), config=cfg.to_dict(),
                                      keep_last=cfg.checkpoint.keep_last, run_id=plan.run_id,
                                      prune_ids=plan.run_ids)
        if main:
            ckpt.drop_replaced(plan)  # the replaced run (--overwrite) goes once this run has a checkpoint
        if pusher is not None:  # uploads a hard-linked snapshot in the background, as branch step-N
            pusher.submit(folder, revision=folder.name, commit_message=f"growlm pretrain checkpoint {folder.name}")

    if resume_dir is None:
        evaluate()
    progress = ProgressLog(total_steps=steps, every=cfg.log.log_every, start_step=state["step"], enabled=main)
    model.train()
    while state["step"] < steps:
        started = time.perf_counter()
        micro_batches = [torch.stack([next(blocks) for _ in range(t.micro_batch_size)]) for _ in range(accum)]
        local = sum(int((mb[:, 1:] != -100).sum()) for mb in micro_batches)
        num_valid = int(accelerator.reduce(torch.tensor(local, device=accelerator.device), "sum"))
        data_wait = time.perf_counter() - started  # until every rank holds its batch (the all-reduce waits for all)
        loss_sum = accumulate_gradients(accelerator, model, micro_batches, num_valid=num_valid)
        grad_norm = accelerator.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
        grad_norm = grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm
        loss_value = accelerator.reduce(loss_sum, "sum").item()  # one sync per step, needed by the guard below
        grad_norm = float(grad_norm)
        if not (math.isfinite(loss_value) and math.isfinite(grad_norm)):
            optimizer.zero_grad(set_to_none=True)
            state["nonfinite_skips"] += 1
            message = (f"non-finite loss {loss_value} or grad norm {grad_norm} at step {state['step'] + 1}; "
                       f"optimizer step skipped ({state['nonfinite_skips']} in a row)")
            if state["nonfinite_skips"] > t.max_nonfinite_skips:
                raise NonFiniteLossError(message + f"; stopping. The last good checkpoint is under {out}/checkpoints "
                                         "(resume with --resume auto after lowering the LR or fixing the data)")
            logger.warning(message)
            continue
        lr = optimizer.param_groups[0]["lr"]
        optimizer.step()
        stopping = stop.agreed(accelerator)  # a signal that came during this step stops the run after it
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        state.update(step=state["step"] + 1, tokens=state["tokens"] + tokens_per_step, nonfinite_skips=0)
        if ramp is not None:
            ramp.set_step(state["step"])
        seconds = time.perf_counter() - started
        record = {"step": state["step"], "tokens": state["tokens"], "loss": loss_value, "lr": lr,
                  "grad_norm": grad_norm, "tokens_per_s": tokens_per_step / seconds, "step_s": seconds,
                  "data_wait_s": data_wait, "data_wait_frac": data_wait / seconds,
                  "mfu": mfu(tokens_per_step / (seconds - data_wait), flops_per_token, num_devices=world,
                             peak_tflops=peak_tflops),  # on compute time: the data wait is logged beside it
                  "peak_mem_gb": peak_memory_gb(), "flops": training_flops(n_ne, state["tokens"]) + mixing_flops,
                  "flops_full": flops_per_token * state["tokens"] + mixing_flops}
        metrics.write(record)
        progress.write(record)
        accelerator.log({k: v for k, v in record.items() if k != "step" and v is not None}, step=state["step"])
        last = state["step"] == steps
        if last or (cfg.log.eval_every and state["step"] % cfg.log.eval_every == 0):
            evaluate()
        if last or stopping or state["step"] % cfg.checkpoint.save_every == 0:
            save()
        if stopping and not last:
            accelerator.end_training()
            raise SystemExit(f"stopped by SIGTERM after saving step {state['step']}; rerun with --resume auto")
    # The stream position after the last block any rank consumed: the next run's first global sample.
    data_position = global_data_state(gather_object([stream.state_dict()]))
    training = training_record(run_info, state, model_config, init_dir)
    if ramp is not None:
        training["masked_growth"] = ramp.record()
    final = export_final(accelerator, model, tokenizer, out / "final", lora=bool(t.lora_rank),
                         repo_id=t.push_to_hub, training=training, data_position=data_position,
                         fold=ramp.fold if ramp is not None else None)
    if pusher is not None:
        from growlm.hub_push import push_folder

        pusher.close()  # raises if a checkpoint upload failed
        push_folder(final, t.push_to_hub, commit_message=f"growlm pretrain: final model after step {state['step']}")
    accelerator.end_training()
    return final
