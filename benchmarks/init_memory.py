"""Peak CPU memory per process of building (or loading `--init-from`) and sharding the model under FSDP2, and of one
gradient-accumulation step, through the training loop's own functions and the shipped FSDP2 launch config.

  # CPU (gloo; the loop keeps FSDP2 where accelerate alone would fall back to DDP):
  ACCELERATE_USE_CPU=1 accelerate launch --config_file accelerate_configs/fsdp2_1node_8gpu.yaml --num_processes 2 \\
      benchmarks/init_memory.py [--init-from DIR] [--shape 6L1024H --vocab-size 4096] [--accumulation 2]

Prints one JSON line per rank, in MiB over the RSS before the build: `build` (peak while building or loading the
model), `prepare` (peak while accelerate shards it; only the main process holds the full model with
`fsdp_cpu_ram_efficient_loading`), `step` (peak of one optimizer step's forward/backward over `--accumulation`
micro-batches, over the RSS before it) and `model` (fp32 size of the full model). `matches_init`: the sharded
weights gathered back equal the `--init-from` folder's. On CPU the shards themselves live in CPU memory; on GPUs
they go to the device. Memory numbers belong here and in tests' bounds, never timings in tests.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import torch
from safetensors.torch import load_file

from growlm.modeling import count_parameters
from growlm.train.config import LogArgs, ModelArgs, PretrainConfig, TrainArgs
from growlm.train.loop import accumulate_gradients, make_accelerator
from growlm.train.model_setup import load_or_build, receives_weights
from growlm.train.optim import build_optimizer

MIB = 2**20


def rss_mib(field: str) -> float:
    """VmRSS (now) or VmHWM (peak since the last `reset_peak`) of this process in MiB."""
    status = Path("/proc/self/status").read_text()
    return int(re.search(rf"^{field}:\s+(\d+) kB", status, re.MULTILINE).group(1)) / 1024


def reset_peak() -> float:
    """Restart the peak-RSS counter (Linux: `5` in /proc/self/clear_refs); returns the RSS now."""
    Path("/proc/self/clear_refs").write_text("5")
    return rss_mib("VmRSS")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--init-from", help="HF model folder to load (default: build --shape from scratch)")
    parser.add_argument("--shape", default="6L1024H")
    parser.add_argument("--vocab-size", type=int, default=4096)
    parser.add_argument("--accumulation", type=int, default=2, help="micro-batches in the measured step")
    parser.add_argument("--seq-len", type=int, default=32)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    cfg = PretrainConfig(model=ModelArgs(shape=args.shape, vocab_size=args.vocab_size),
                         train=TrainArgs(max_steps=1), log=LogArgs(tensorboard=False))
    accelerator = make_accelerator(cfg)
    init_dir = Path(args.init_from) if args.init_from else None

    start = reset_peak()
    model = load_or_build(cfg, init_dir, weights=not receives_weights(accelerator))
    build = rss_mib("VmHWM") - start
    config = model.config
    optimizer = build_optimizer(model, cfg.optim)
    model, optimizer = accelerator.prepare(model, optimizer)
    prepare = rss_mib("VmHWM") - start

    matches = None
    if init_dir is not None:
        full = accelerator.get_state_dict(model)  # collective
        if accelerator.is_main_process:
            saved = {}
            for path in sorted(init_dir.glob("*.safetensors")):
                saved.update(load_file(path))
            matches = saved.keys() == full.keys() and all(torch.equal(saved[k].float(), full[k]) for k in saved)
        del full
    generator = torch.Generator().manual_seed(accelerator.process_index)
    batches = [torch.randint(0, config.vocab_size, (1, args.seq_len + 1), generator=generator)
               for _ in range(args.accumulation)]
    before_step = reset_peak()
    num_valid = args.accumulation * args.seq_len * accelerator.num_processes
    accumulate_gradients(accelerator, model, batches, num_valid=num_valid)
    step = rss_mib("VmHWM") - before_step
    model_mib = 4 * count_parameters(config)["total"] / MIB
    print(json.dumps({"rank": accelerator.process_index, "processes": accelerator.num_processes,
                      "distributed": str(accelerator.distributed_type), "fsdp2": accelerator.is_fsdp2,
                      "receives_weights": receives_weights(accelerator), "init_from": bool(init_dir),
                      "accumulation": args.accumulation, "model": round(model_mib), "build": round(build),
                      "prepare": round(prepare), "step": round(step), "matches_init": matches}), flush=True)
    accelerator.end_training()


if __name__ == "__main__":
    main()
