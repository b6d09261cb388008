"""Data-path throughput on this machine: tokenizing into shards, loading blocks from shards, resuming.

  python benchmarks/data_bench.py [--source growlm/assets/slimpajama-sample] [--seq-len 2048] [--blocks 2000]

Prints one JSON line per measurement:
  tokenize   tokens/s of `scripts/tokenize_data.py`'s library call (growlm.data.shards.tokenize_split) on the
             train split with --num-proc 1 and 2, and the shard bytes per token (GB per billion tokens);
  loader     tokens/s that one process's ShardStream (DataLoader, seq_len + 1 token blocks) delivers with 0 and 2
             workers;
  resume     seconds from load_state_dict at an arbitrary position to the first block, for shards and, for
             comparison, the streaming path (which re-reads the epoch up to the saved document).
Timing numbers belong here, never in tests.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from growlm.assets import DEFAULT_TOKENIZER_DIR, SAMPLE_DATA_DIR
from growlm.data import DataConfig, PackedStream, ShardStream, load_tokenizer, tokenize_split


def bench_tokenize(source: str, tokenizer: str, work: Path, num_proc: int) -> dict:
    started = time.perf_counter()
    manifest = tokenize_split(source, tokenizer, work / f"proc{num_proc}", split="train", num_proc=num_proc)
    seconds = time.perf_counter() - started
    size = sum((work / f"proc{num_proc}" / "train" / s["file"]).stat().st_size for s in manifest["shards"])
    return {"bench": "tokenize", "num_proc": num_proc, "shards": len(manifest["shards"]),
            "documents": manifest["documents"], "tokens": manifest["tokens"], "dtype": manifest["dtype"],
            "seconds": round(seconds, 2), "tokens_per_s": round(manifest["tokens"] / seconds),
            "bytes_per_token": size / manifest["tokens"], "gb_per_billion_tokens": size / manifest["tokens"]}


def bench_loader(cfg: DataConfig, tokenizer, blocks: int) -> dict:
    stream = iter(ShardStream(cfg, tokenizer=tokenizer))
    next(stream)  # workers started
    started = time.perf_counter()
    for _ in range(blocks):
        next(stream)
    seconds = time.perf_counter() - started
    return {"bench": "loader", "num_workers": cfg.num_workers, "seq_len": cfg.seq_len,
            "block_shuffle": cfg.block_shuffle, "blocks": blocks, "seconds": round(seconds, 3),
            "tokens_per_s": round(blocks * cfg.seq_len / seconds)}


def bench_resume(cfg: DataConfig, stream_cfg: DataConfig, tokenizer) -> list[dict]:
    shards = ShardStream(cfg, tokenizer=tokenizer)
    state = {**shards.state_dict(), "epoch": 7, "index": shards.samples.blocks_per_epoch // 2 + 123}
    started = time.perf_counter()
    resumed = ShardStream(cfg, tokenizer=tokenizer)
    resumed.load_state_dict(state)
    next(iter(resumed))
    results = [{"bench": "resume", "format": "shards", "position": [state["epoch"], state["index"]],
                "seconds": round(time.perf_counter() - started, 3)}]
    stream = PackedStream(stream_cfg, tokenizer=tokenizer)
    documents = sum(1 for _ in stream.epoch_documents(0))
    state = {**stream.state_dict(), "epoch": 0, "document": documents // 2, "used": 0, "block": 0}
    started = time.perf_counter()
    resumed = PackedStream(stream_cfg, tokenizer=tokenizer)
    resumed.load_state_dict(state)
    next(iter(resumed))
    results.append({"bench": "resume", "format": "stream", "position": f"document {documents // 2} of {documents}",
                    "seconds": round(time.perf_counter() - started, 3)})
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", default=str(SAMPLE_DATA_DIR), help="SlimPajama-layout folder")
    parser.add_argument("--tokenizer", default=str(DEFAULT_TOKENIZER_DIR))
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--block-shuffle", type=int, default=8192)
    parser.add_argument("--blocks", type=int, default=2000, help="blocks loaded per loader measurement")
    args = parser.parse_args()
    tokenizer = load_tokenizer(args.tokenizer)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for num_proc in (1, 2):
            print(json.dumps(bench_tokenize(args.source, args.tokenizer, work, num_proc)), flush=True)
        tokenize_split(args.source, args.tokenizer, work / "proc1", split="validation")
        base = {"seq_len": args.seq_len, "block_shuffle": args.block_shuffle, "tokenizer": args.tokenizer}
        for workers in (0, 2):
            cfg = DataConfig(source=str(work / "proc1"), format="shards", num_workers=workers, **base)
            print(json.dumps(bench_loader(cfg, tokenizer, args.blocks)), flush=True)
        cfg = DataConfig(source=str(work / "proc1"), format="shards", num_workers=2, **base)
        stream_cfg = DataConfig(source=args.source, **base)
        for result in bench_resume(cfg, stream_cfg, tokenizer):
            print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
