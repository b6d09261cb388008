"""Training throughput of growlm's real training step (`growlm.train.loop.accumulate_gradients` + clip + AdamW)
on one device, next to the plain-HF baseline script run in the same process tree for a ratio.

  # GPU: TinyLlama-1.1B shape (22L, H 2048, F 5632, 32/4 heads, vocab 32000), seq 2048, bf16:
  python benchmarks/throughput.py --baseline /path/to/hf_throughput.py [--compile] [--liger] [--attn sdpa]
  # CPU smoke run with a tiny shape (no baseline):
  python benchmarks/throughput.py --tiny

Prints one JSON line per measurement: tokens/s, MFU (FLOPs per token from growlm.train.flops), peak memory, and
the largest micro-batch that fits (GPU: doubled until out of memory). Timing numbers belong here, never in tests.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import time

import torch
from accelerate import Accelerator

from growlm.modeling import build_model
from growlm.train.config import OptimArgs, PretrainConfig, TrainArgs
from growlm.train.flops import default_peak_tflops, full_flops_per_token, mfu
from growlm.train.loop import accumulate_gradients, peak_memory_gb
from growlm.train.model_setup import apply_speedups
from growlm.train.optim import build_optimizer


def measure(shape: str, *, seq_len: int, micro_batch: int, steps: int, warmup: int, precision: str,
            attn: str, speedups: list[str]) -> dict:
    """Tokens/s of `steps` optimizer steps (after `warmup`) at one micro-batch per step."""
    accelerator = Accelerator(mixed_precision=precision)
    model = build_model(shape, attn_implementation=attn, max_position_embeddings=max(seq_len, 256))
    cfg = PretrainConfig(train=TrainArgs(max_steps=1, **{name: True for name in speedups}))
    features = apply_speedups(model, cfg)
    optimizer = build_optimizer(model, OptimArgs(lr=1e-4))
    model, optimizer = accelerator.prepare(model, optimizer)
    if features["compile"]:
        model.compile()
    generator = torch.Generator().manual_seed(0)
    batch = torch.randint(0, model.config.vocab_size, (micro_batch, seq_len + 1), generator=generator)

    def step() -> None:
        accumulate_gradients(accelerator, model, [batch], num_valid=micro_batch * seq_len)
        accelerator.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(warmup):
        step()
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    sync()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    seconds = (time.perf_counter() - start) / steps
    tokens_per_s = micro_batch * seq_len / seconds
    config = accelerator.unwrap_model(model).config
    result = {"name": f"growlm-{shape}-{attn}" + "".join(f"+{s}" for s in speedups), "micro_batch": micro_batch,
              "seq_len": seq_len, "tok_s": round(tokens_per_s), "step_s": round(seconds, 4),
              "mfu": mfu(tokens_per_s, full_flops_per_token(config, seq_len), num_devices=1,
                         peak_tflops=default_peak_tflops()),
              "peak_mem_gb": round(peak_memory_gb(), 2), "features": features}
    del model, optimizer
    accelerator.free_memory()
    return result


def largest_micro_batch(run, start: int) -> int | None:
    """Double the micro-batch from `start` until CUDA runs out of memory; the last size that fitted."""
    fitted, size = None, start
    while size <= 256:
        try:
            run(size)
        except torch.cuda.OutOfMemoryError:
            gc.collect()  # drop the failed attempt's model and optimizer before the final report
            break
        fitted, size = size, size * 2
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    torch.cuda.empty_cache()
    return fitted


def run_baseline(path: str, *, seq_len: int, micro_batch: int) -> list[dict]:
    """The baseline script's JSON lines (it prints one per stack it measures)."""
    env = {**os.environ, "SEQ": str(seq_len), "MB": str(micro_batch)}
    out = subprocess.run([sys.executable, path, "eager"], env=env, capture_output=True, text=True, check=True)
    return [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="CPU smoke run with the tiny-2L shape, seq 64")
    parser.add_argument("--baseline", help="path to the plain-HF baseline script (hf_throughput.py)")
    parser.add_argument("--micro-batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--attn", default="sdpa", choices=["sdpa", "eager", "flash_attention_2"])
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--liger", action="store_true")
    args = parser.parse_args(argv)
    speedups = [name for name in ("compile", "liger") if getattr(args, name)]
    if args.tiny:
        shape, seq_len, precision = "tiny-2L", 64, "no"
        micro_batch, steps, warmup = min(args.micro_batch, 4), min(args.steps, 5), min(args.warmup, 1)
    else:
        if not torch.cuda.is_available():
            raise SystemExit("error: the full benchmark needs a CUDA GPU; use --tiny on CPU")
        shape, seq_len, precision = "tinyllama-1.1B", 2048, "bf16"
        micro_batch, steps, warmup = args.micro_batch, args.steps, args.warmup

    def run(size: int) -> dict:
        return measure(shape, seq_len=seq_len, micro_batch=size, steps=steps, warmup=warmup, precision=precision,
                       attn=args.attn, speedups=speedups)

    ours = run(micro_batch)
    print(json.dumps(ours), flush=True)
    if torch.cuda.is_available():
        def probe(size: int) -> dict:
            return measure(shape, seq_len=seq_len, micro_batch=size, steps=1, warmup=1, precision=precision,
                           attn=args.attn, speedups=speedups)

        fitted = largest_micro_batch(probe, micro_batch)
        print(json.dumps({"largest_micro_batch": fitted, "seq_len": seq_len}), flush=True)
    if args.baseline:
        for baseline in run_baseline(args.baseline, seq_len=seq_len, micro_batch=micro_batch):
            print(json.dumps(baseline), flush=True)
            if "tok_s" in baseline:
                ratio = round(ours["tok_s"] / baseline["tok_s"], 3)
                print(json.dumps({"ratio_vs": baseline["name"], "tok_s_ratio": ratio}), flush=True)


if __name__ == "__main__":
    main()
