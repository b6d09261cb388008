"""Training throughput of growlm's real training step (`growlm.train.loop.accumulate_gradients` + clip + AdamW)
on one device, next to the plain-HF baseline script run in the same process tree for a ratio.

  # GPU: TinyLlama-1.1B shape (22L, H 2048, F 5632, 32/4 heads, vocab 32000), seq 2048, bf16:
  python benchmarks/throughput.py --baseline /path/to/hf_throughput.py [--compile] [--liger] [--attn sdpa]
  # ... fed by a real loader (token shards written first into a temp folder, or text tokenized while training):
  python benchmarks/throughput.py --data shards --source DIR [--world-size 8]
  # CPU smoke run with a tiny shape (no baseline):
  python benchmarks/throughput.py --tiny [--data shards|stream|virtual]

Prints one JSON line per measurement: tokens/s (wall time, data included), the data wait (seconds per step spent
getting the step's batch from the loader, and its share of the step), MFU on the compute time only (FLOPs per
token from growlm.train.flops), peak memory, and the largest micro-batch that fits (GPU: doubled until out of
memory). Every step ends with a device sync, as the training loop's does (it reads the loss), so the next batch is
fetched while the device is idle and the data wait is not hidden. `--world-size P` reads the data as rank 0 of P
processes (it gets every P-th block; a plain stream still tokenizes all of them). Timing numbers belong here,
never in tests.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from accelerate import Accelerator

from growlm.assets import DEFAULT_TOKENIZER_DIR, SAMPLE_DATA_DIR
from growlm.data import DataConfig, build_train_stream, load_tokenizer, tokenize_split
from growlm.modeling import build_model
from growlm.train.config import OptimArgs, PretrainConfig, TrainArgs
from growlm.train.flops import default_peak_tflops, full_flops_per_token, mfu
from growlm.train.loop import accumulate_gradients, peak_memory_gb
from growlm.train.model_setup import apply_speedups
from growlm.train.optim import build_optimizer

Batches = Callable[[int], Iterator[torch.Tensor]]  # micro-batch size -> micro-batches [size, seq_len + 1]


def synthetic(vocab_size: int, seq_len: int) -> Batches:
    """One random batch, repeated: no loader at all."""
    def batches(size: int) -> Iterator[torch.Tensor]:
        batch = torch.randint(0, vocab_size, (size, seq_len + 1), generator=torch.Generator().manual_seed(0))
        return itertools.repeat(batch)
    return batches


def loader(cfg: DataConfig, *, world_size: int) -> Batches:
    """Rank 0's blocks of the training stream of `cfg`, stacked as the training loop stacks them."""
    tokenizer = load_tokenizer(cfg.tokenizer)

    def batches(size: int) -> Iterator[torch.Tensor]:
        blocks = iter(build_train_stream(cfg, rank=0, world_size=world_size, tokenizer=tokenizer))
        while True:
            yield torch.stack([next(blocks) for _ in range(size)])
    return batches


def measure(shape: str, *, seq_len: int, micro_batch: int, steps: int, warmup: int, precision: str,
            attn: str, speedups: list[str], batches: Batches) -> dict:
    """Tokens/s, data wait and MFU on compute time of `steps` optimizer steps (after `warmup`) at one micro-batch
    per step."""
    accelerator = Accelerator(mixed_precision=precision)
    model = build_model(shape, attn_implementation=attn, max_position_embeddings=max(seq_len, 256))
    cfg = PretrainConfig(train=TrainArgs(max_steps=1, **{name: True for name in speedups}))
    features = apply_speedups(model, cfg)
    optimizer = build_optimizer(model, OptimArgs(lr=1e-4))
    model, optimizer = accelerator.prepare(model, optimizer)
    if features["compile"]:
        model.compile()
    data = batches(micro_batch)
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)

    def step() -> float:
        """One optimizer step; returns the seconds spent waiting for its batch."""
        started = time.perf_counter()
        batch = next(data)
        waited = time.perf_counter() - started
        accumulate_gradients(accelerator, model, [batch], num_valid=micro_batch * seq_len)
        accelerator.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        sync()
        return waited

    for _ in range(warmup):
        step()
    start = time.perf_counter()
    waited = sum(step() for _ in range(steps)) / steps
    seconds = (time.perf_counter() - start) / steps
    tokens = micro_batch * seq_len
    config = accelerator.unwrap_model(model).config
    result = {"name": f"growlm-{shape}-{attn}" + "".join(f"+{s}" for s in speedups), "micro_batch": micro_batch,
              "seq_len": seq_len, "tok_s": round(tokens / seconds), "step_s": round(seconds, 4),
              "data_wait_s": round(waited, 5), "data_wait_frac": round(waited / seconds, 4),
              "mfu": mfu(tokens / (seconds - waited), full_flops_per_token(config, seq_len), num_devices=1,
                         peak_tflops=default_peak_tflops()),
              "peak_mem_gb": round(peak_memory_gb(), 2), "features": features}
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
    parser.add_argument("--tiny", action="store_true", help="CPU run with the tiny-2L shape (default seq 64)")
    parser.add_argument("--baseline", help="path to the plain-HF baseline script (hf_throughput.py)")
    parser.add_argument("--micro-batch", type=int, help="default 8 (--tiny: 4)")
    parser.add_argument("--seq-len", type=int, help="default 2048 (--tiny: 64)")
    parser.add_argument("--steps", type=int, help="measured steps, default 10 (--tiny: 5)")
    parser.add_argument("--warmup", type=int, help="default 3 (--tiny: 1)")
    parser.add_argument("--attn", default="sdpa", choices=["sdpa", "eager", "flash_attention_2"])
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--liger", action="store_true")
    parser.add_argument("--data", default="synthetic", choices=["synthetic", "shards", "stream", "virtual"],
                        help="synthetic: one random batch; shards: token shards of --source (written first into a "
                             "temp folder unless --source holds them), DataLoader with --num-workers; stream: text "
                             "tokenized in the step; virtual: --virtual-streams streams, prefetched in a thread")
    parser.add_argument("--source", default=str(SAMPLE_DATA_DIR), help="SlimPajama-layout folder (or shard folder)")
    parser.add_argument("--tokenizer", default=str(DEFAULT_TOKENIZER_DIR))
    parser.add_argument("--num-workers", type=int, default=2, help="DataLoader workers (--data shards)")
    parser.add_argument("--virtual-streams", type=int, default=8, help="streams (--data virtual)")
    parser.add_argument("--world-size", type=int, default=1, help="read the data as rank 0 of this many processes")
    args = parser.parse_args(argv)
    speedups = [name for name in ("compile", "liger") if getattr(args, name)]
    if not (args.tiny or torch.cuda.is_available()):
        raise SystemExit("error: the full benchmark needs a CUDA GPU; use --tiny on CPU")
    shape, precision = ("tiny-2L", "no") if args.tiny else ("tinyllama-1.1B", "bf16")
    defaults = (64, 4, 5, 1) if args.tiny else (2048, 8, 10, 3)
    seq_len, micro_batch, steps, warmup = (given or default for given, default in zip(
        (args.seq_len, args.micro_batch, args.steps, args.warmup), defaults))

    with tempfile.TemporaryDirectory() as tmp:
        source = args.source
        if args.data == "shards" and not (Path(source) / "train" / "manifest.json").is_file():
            tokenize_split(source, args.tokenizer, tmp, split="train")
            source = tmp
        data = DataConfig(source=source, tokenizer=args.tokenizer, seq_len=seq_len, num_workers=args.num_workers,
                          format="shards" if args.data == "shards" else "stream",
                          virtual_streams=args.virtual_streams if args.data == "virtual" else 0)
        batches = (synthetic(len(load_tokenizer(args.tokenizer)), seq_len) if args.data == "synthetic"
                   else loader(data, world_size=args.world_size))

        def run(size: int, steps: int = steps, warmup: int = warmup) -> dict:
            return {"data": args.data, "world_size": args.world_size,
                    **measure(shape, seq_len=seq_len, micro_batch=size, steps=steps, warmup=warmup,
                              precision=precision, attn=args.attn, speedups=speedups, batches=batches)}

        ours = run(micro_batch)
        print(json.dumps(ours), flush=True)
        if torch.cuda.is_available():
            fitted = largest_micro_batch(lambda size: run(size, steps=1, warmup=1), micro_batch)
            print(json.dumps({"largest_micro_batch": fitted, "seq_len": seq_len}), flush=True)
    if args.baseline:
        for baseline in run_baseline(args.baseline, seq_len=seq_len, micro_batch=micro_batch):
            print(json.dumps(baseline), flush=True)
            if "tok_s" in baseline:
                ratio = round(ours["tok_s"] / baseline["tok_s"], 3)
                print(json.dumps({"ratio_vs": baseline["name"], "tok_s_ratio": ratio}), flush=True)


if __name__ == "__main__":
    main()
