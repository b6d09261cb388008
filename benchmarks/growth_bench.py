"""Benchmark growth against the disk floor: the time to write the same bytes with fsync, in the same run.

    python benchmarks/growth_bench.py          # 6L2048H -> 24L bf16 and fp32 (1GB shards), 2L4096H -> 8L with
                                               # --shard-size 5GB, width split 6L1024H -> H 2048 (~20 GB disk)
    python benchmarks/growth_bench.py --big    # also 8L4096H -> 32L bf16 (13.5 GB out, ~20 GB disk)
    python benchmarks/growth_bench.py --small  # a seconds-long smoke run
    python benchmarks/growth_bench.py --only "6L2048H->24L bf16" --mergekit /path/to/venv/bin/mergekit-yaml
                                               # also mergekit's passthrough merge on the G_stack cases

Each case builds a source (constant tensors written straight to safetensors: content does not change the cost),
then runs every route in a fresh interpreter that reports its wall time (imports included), its CPU time (user + sys,
all threads and subprocesses: steadier than wall time on a busy machine) and peak RSS (VmHWM from /proc/self/status,
read in the child): `floor` writes the output's byte count in 16 MB blocks and fsyncs,
`growlm` is `grow_checkpoint` (durable: every file and folder fsynced), `growlm-nofsync` the same without the
fsyncs. With `--mergekit PATH` (a `mergekit-yaml` executable, e.g. from its own venv), G_stack cases also run
`mergekit`: a passthrough merge whose slices stack the source's layers 0..L-1 g times (`dtype: bfloat16`, the case's
shard size, `--clone-tensors` for the repeated layers); its wall time includes its interpreter start and its peak
RSS is the merge process's maxrss (RUSAGE_CHILDREN). mergekit does not fsync its output.
Outputs are removed after each route, sources after each case.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    shape: str
    dtype: str
    shard_size: str
    options: dict


CASES = [
    Case("depth 6L2048H->24L bf16", "6L2048H", "bfloat16", "1GB", {"depth_op": "stack", "g": 4}),
    Case("depth 6L2048H->24L fp32", "6L2048H", "float32", "1GB", {"depth_op": "stack", "g": 4}),
    Case("depth 2L4096H->8L bf16, 5GB shards", "2L4096H", "bfloat16", "5GB", {"depth_op": "stack", "g": 4}),
    Case("width split 6L1024H->H2048 bf16", "6L1024H", "bfloat16", "1GB",
         {"width_op": "split", "hidden_size": 2048, "intermediate_size": 5632, "num_attention_heads": 32,
          "num_key_value_heads": 32}),
]
BIG = Case("depth 8L4096H->32L bf16 (7B-class)", "8L4096H", "bfloat16", "5GB", {"depth_op": "stack", "g": 4})
SMALL = Case("depth small-2L->8L bf16", "small-2L", "bfloat16", "20MB", {"depth_op": "stack", "g": 4})
ROUTES = ("floor", "growlm", "growlm-nofsync")
MERGEKIT = "mergekit"


def shape_config(shape: str):
    """The registry's shape, or `<L>L<H>H` with the Llama-7B ratios (F = 11008/4096 H, 128-dim heads)."""
    from growlm.modeling import SHAPES, Shape, llama_config

    if shape not in SHAPES:
        layers, hidden = (int(x) for x in shape.rstrip("H").split("L"))
        shape = Shape(layers, hidden, hidden // 128, hidden // 128, hidden * 11008 // 4096)
    return llama_config(shape)


def build_source(shape: str, dtype: str, out: Path, shard_size: str) -> Path:
    import torch

    from growlm.assets import DEFAULT_TOKENIZER_DIR
    from growlm.growth.safetensors_io import OutputTensor, write_safetensors
    from growlm.modeling import tensor_shapes

    config = shape_config(shape)
    config.dtype = dtype
    config.architectures = ["LlamaForCausalLM"]  # (mergekit reads the architecture from the config)
    out.mkdir(parents=True)
    config.save_pretrained(out)
    torch_dtype = getattr(torch, dtype)
    tensors = [OutputTensor(name, torch_dtype, tuple(shape),
                            lambda shape=shape: torch.full(shape, 0.01, dtype=torch_dtype))
               for name, shape in tensor_shapes(config).items()]
    write_safetensors(out, tensors, max_shard_size=shard_size)
    for f in DEFAULT_TOKENIZER_DIR.glob("*.json"):
        shutil.copy(f, out / f.name)
    return out


def write_floor(out: Path, nbytes: int) -> None:
    """Write `nbytes` to one file in 16 MB blocks and fsync it and its folder (what any writer must pay)."""
    out.mkdir()
    block = os.urandom(1 << 24)
    fd = os.open(out / "floor.bin", os.O_WRONLY | os.O_CREAT)
    try:
        while nbytes:
            nbytes -= os.write(fd, block[: min(nbytes, len(block))])
        os.fsync(fd)
    finally:
        os.close(fd)
    dir_fd = os.open(out, os.O_RDONLY)
    os.fsync(dir_fd)
    os.close(dir_fd)


def mergekit_yaml(case: Case, src: Path) -> str:
    """A passthrough merge stacking layers 0..L-1 g times (G_stack's default layer map), as mergekit YAML."""
    layers = shape_config(case.shape).num_hidden_layers
    slices = "".join(f"  - sources:\n      - model: {json.dumps(str(src))}\n        layer_range: [0, {layers}]\n"
                     for _ in range(case.options["g"]))
    return f"slices:\n{slices}merge_method: passthrough\ndtype: {case.dtype}\n"


def run_mergekit(executable: str, case: Case, src: Path, out: Path) -> float:
    """mergekit-yaml in its own process; returns its peak RSS in GiB (this process imported nothing large)."""
    config = out.parent / "mergekit.yml"
    config.write_text(mergekit_yaml(case, src))
    from transformers.utils.hub import convert_file_size_to_int

    itemsize = 4 if "32" in case.dtype else 2
    shard_params = convert_file_size_to_int(case.shard_size) // itemsize
    try:
        subprocess.run([executable, str(config), str(out), "--clone-tensors", "--quiet", "--no-write-model-card",
                        "--out-shard-size", str(shard_params)], check=True, stdout=subprocess.DEVNULL)
    finally:
        config.unlink()
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20


def child(route: str, case: Case, src: Path, out: Path, nbytes: int, mergekit: str | None = None) -> dict:
    """One route in this (fresh) interpreter: wall time from before the imports, peak RSS."""
    start = time.perf_counter()
    merge_rss = None
    if route == "floor":
        write_floor(out, nbytes)
    elif route == "mergekit":
        merge_rss = run_mergekit(mergekit, case, src, out)
    else:
        import functools

        import growlm.growth.grow as grow
        from growlm.growth.operators import GrowthOptions

        if route == "growlm-nofsync":
            grow.atomic_dir = functools.partial(grow.atomic_dir, durable=False)
        grow.grow_checkpoint(src, out, GrowthOptions(**case.options), max_shard_size=case.shard_size)
    wall = time.perf_counter() - start
    usage = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    out_bytes = sum(f.stat().st_size for f in out.iterdir() if f.suffix in (".safetensors", ".bin"))
    # VmHWM, not getrusage: ru_maxrss survives exec, so a child would report its parent's peak
    hwm_kib = int(next(line for line in open("/proc/self/status") if line.startswith("VmHWM:")).split()[1])
    return {"wall_s": wall, "cpu_s": sum(u.ru_utime + u.ru_stime for u in usage),
            "peak_rss_gib": max(hwm_kib / 2**20, merge_rss or 0.0), "output_bytes": out_bytes}


def measure(route: str, case: Case, src: Path, out: Path, nbytes: int, mergekit: str | None = None) -> dict:
    cmd = [sys.executable, __file__, "--child", route, "--case", json.dumps(dataclasses.asdict(case)),
           "--src", str(src), "--out", str(out), "--nbytes", str(nbytes)]
    cmd += ["--mergekit", mergekit] if mergekit else []
    subprocess.run(["sync"], check=True)  # start each route with no dirty pages left by the previous one
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    shutil.rmtree(out, ignore_errors=True)
    if result.returncode != 0:
        raise SystemExit(f"{route} failed on {case.name}:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--big", action="store_true", help="also the 7B-class case (8L4096H -> 32L, 13.5 GB out)")
    parser.add_argument("--small", action="store_true", help="only a small smoke case")
    parser.add_argument("--only", action="append",
                        help="run only the cases whose name contains this text (repeat for several)")
    parser.add_argument("--workdir", type=Path, default=None, help="scratch folder (default: a temp dir)")
    parser.add_argument("--mergekit", metavar="MERGEKIT_YAML",
                        help="also run mergekit's passthrough merge (this mergekit-yaml executable) on G_stack cases")
    parser.add_argument("--child", choices=ROUTES + (MERGEKIT,), help=argparse.SUPPRESS)
    parser.add_argument("--case", help=argparse.SUPPRESS)
    parser.add_argument("--src", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--nbytes", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, Case(**json.loads(args.case)), args.src, args.out, args.nbytes,
                               args.mergekit)))
        return 0
    cases = [SMALL] if args.small else CASES + ([BIG] if args.big else [])
    cases = [c for c in cases if args.only is None or any(text in c.name for text in args.only)]
    workdir = Path(tempfile.mkdtemp(prefix="growth-bench-", dir=args.workdir))
    print(f"scratch {workdir}: {shutil.disk_usage(workdir).free / 1e9:.1f} GB free", flush=True)
    print("| case | route | wall s | x floor | CPU s | peak RSS GiB | output GB |")
    print("|---|---|---|---|---|---|---|", flush=True)
    try:
        for case in cases:
            from growlm.growth.grow import weight_bytes
            from growlm.growth.operators import GrowthOptions, target_config

            config = shape_config(case.shape)
            nbytes = weight_bytes(target_config(config, GrowthOptions(**case.options)), 4 if "32" in case.dtype else 2)
            need = nbytes * 2 + weight_bytes(config, 4)
            if shutil.disk_usage(workdir).free < need:
                print(f"| {case.name} | skipped: needs {need / 1e9:.1f} GB free | | | | | |")
                continue
            src = build_source(case.shape, case.dtype, workdir / "src", case.shard_size)
            floor = None
            stack_only = case.options.get("depth_op") == "stack" and "width_op" not in case.options
            routes = ROUTES + ((MERGEKIT,) if args.mergekit and stack_only else ())
            for route in routes:
                stats = measure(route, case, src, workdir / "out", nbytes, args.mergekit)
                floor = floor or stats["wall_s"]
                print(f"| {case.name} | {route} | {stats['wall_s']:.1f} | {stats['wall_s'] / floor:.2f} "
                      f"| {stats['cpu_s']:.1f} | {stats['peak_rss_gib']:.2f} | {stats['output_bytes'] / 1e9:.2f} |",
                      flush=True)
            shutil.rmtree(src)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
