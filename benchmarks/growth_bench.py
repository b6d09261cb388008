"""Benchmark G_stack growth: growlm's streaming route vs the naive transformers route.

    python benchmarks/growth_bench.py            # 6L2048H (MHA, vocab 32000) -> 24 layers, fp32 and bf16 (~10 GB disk)
    python benchmarks/growth_bench.py --small    # small-2L -> 8 layers, seconds on a laptop CPU

Each route runs in a fresh subprocess that reports its own wall time and peak RSS
(`resource.getrusage(RUSAGE_SELF).ru_maxrss`):
- streaming: `grow_checkpoint` (lazy safetensors reader -> sharded writer, plus growth.json and card);
- naive: `from_pretrained`, deep-copy the layers into a 4x deeper model, `save_pretrained`.
"""

from __future__ import annotations

import argparse
import copy
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def build_source(shape: str, dtype: str, out: Path, shard_size: str) -> Path:
    """A randomly initialised model of `shape` saved in `shard_size` shards, with the vendored tokenizer."""
    from growlm.assets import DEFAULT_TOKENIZER_DIR
    from growlm.modeling import build_model

    model = build_model(shape, seed=0, dtype=DTYPES[dtype])
    model.save_pretrained(out, max_shard_size=shard_size)
    for f in DEFAULT_TOKENIZER_DIR.glob("*.json"):
        shutil.copy(f, out / f.name)
    return out


def grow_streaming(src: Path, out: Path, g: int, shard_size: str) -> None:
    from growlm.growth.grow import grow_checkpoint
    from growlm.growth.operators import GrowthOptions

    grow_checkpoint(src, out, GrowthOptions(depth_op="stack", g=g), max_shard_size=shard_size)


def grow_naive(src: Path, out: Path, g: int, shard_size: str) -> None:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(src, dtype="auto")
    layers = model.model.layers
    num_layers = len(layers)
    model.model.layers = torch.nn.ModuleList(copy.deepcopy(layers[i % num_layers]) for i in range(g * num_layers))
    for index, layer in enumerate(model.model.layers):
        layer.self_attn.layer_idx = index
    model.config.num_hidden_layers = g * num_layers
    model.save_pretrained(out, max_shard_size=shard_size)


def run_route(route: str, src: Path, out: Path, g: int, shard_size: str) -> dict:
    """Child process body: grow once and report wall time, peak RSS and output size as JSON."""
    start = time.perf_counter()
    (grow_streaming if route == "streaming" else grow_naive)(src, out, g, shard_size)
    wall = time.perf_counter() - start
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    out_bytes = sum(f.stat().st_size for f in out.glob("*.safetensors"))
    return {"wall_s": wall, "peak_rss_gib": peak_kib / 2**20, "output_bytes": out_bytes}


def measure(route: str, src: Path, out: Path, g: int, shard_size: str) -> dict:
    """Run one route in a fresh interpreter (so peak RSS is its own) and remove its output."""
    cmd = [sys.executable, __file__, "--child", route, "--src", str(src), "--out", str(out), "--g", str(g),
           "--shard-size", shard_size]
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise SystemExit(f"{route} route failed:\n{result.stderr[-2000:]}")
    shutil.rmtree(out, ignore_errors=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small", action="store_true", help="small-2L source (quick CPU run)")
    parser.add_argument("--g", type=int, default=4)
    parser.add_argument("--shard-size", default=None, help="input and output shard size (default 1GB, 20MB --small)")
    parser.add_argument("--workdir", type=Path, default=None, help="scratch folder (default: a temp dir)")
    parser.add_argument("--child", choices=["streaming", "naive"], help=argparse.SUPPRESS)
    parser.add_argument("--src", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    shard_size = args.shard_size or ("20MB" if args.small else "1GB")
    if args.child:
        print(json.dumps(run_route(args.child, args.src, args.out, args.g, shard_size)))
        return 0
    shape = "small-2L" if args.small else "6L2048H"
    workdir = Path(tempfile.mkdtemp(prefix="growth-bench-", dir=args.workdir))
    rows = []
    try:
        for dtype in DTYPES:
            src = build_source(shape, dtype, workdir / f"src-{dtype}", shard_size)
            src_bytes = sum(f.stat().st_size for f in src.glob("*.safetensors"))
            for route in ("streaming", "naive"):
                stats = measure(route, src, workdir / f"out-{route}", args.g, shard_size)
                rows.append((route, dtype, src_bytes, stats))
            shutil.rmtree(src)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"G_stack {shape} -> g={args.g}, shards {shard_size}, torch threads {torch.get_num_threads()}")
    print("| route | dtype | source GB | wall s | peak RSS GiB | output GB |")
    print("|---|---|---|---|---|---|")
    for route, dtype, src_bytes, stats in rows:
        print(f"| {route} | {dtype} | {src_bytes / 1e9:.2f} | {stats['wall_s']:.1f} | {stats['peak_rss_gib']:.2f} "
              f"| {stats['output_bytes'] / 1e9:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
