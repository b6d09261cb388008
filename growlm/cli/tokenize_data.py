"""`scripts/tokenize_data.py`: tokenize a SlimPajama-format corpus once into memory-mapped token shards.

    python scripts/tokenize_data.py --source cerebras/SlimPajama-627B --out data/slimpajama-shards --num-proc 16
    python scripts/tokenize_data.py --source ../shared/data/slimpajama-sample --out runs/sample-shards

One output shard per input file, `--num-proc` files at a time; a re-run skips finished shards (resume after a kill).
The documents and token ids are exactly those of the streaming path (set-name filter, no BOS, EOS after every
document, special-token strings split). Train from the folder with `--format shards --source OUT`.
"""

from __future__ import annotations

import argparse
import logging
import time

from growlm.assets import DEFAULT_DATA_DIR, DEFAULT_TOKENIZER_DIR
from growlm.cli.errors import command


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="tokenize_data.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", default=str(DEFAULT_DATA_DIR),
                        help="Hub dataset id, SlimPajama-layout folder, or glob ({split} selects the split)")
    parser.add_argument("--tokenizer", default=str(DEFAULT_TOKENIZER_DIR), help="tokenizer folder or Hub id")
    parser.add_argument("--out", required=True, help="output folder; shards go to OUT/<split>/")
    parser.add_argument("--split", default="train,validation", help="comma list of splits to tokenize")
    parser.add_argument("--exclude-sets", default="RedPajamaGithub", help="comma list of set names to drop")
    parser.add_argument("--include-sets", default=None, help="comma list of set names to keep (default: all)")
    parser.add_argument("--num-proc", type=int, default=1, help="input files tokenized in parallel")
    return parser.parse_args(argv)


@command
def main(argv: list[str]) -> int:
    args = parse(argv)
    from growlm.data.shards import tokenize_split

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for split in [s for s in args.split.split(",") if s]:
        started = time.perf_counter()
        manifest = tokenize_split(args.source, args.tokenizer, args.out, split=split, num_proc=args.num_proc,
                                  exclude_sets=[s for s in args.exclude_sets.split(",") if s],
                                  include_sets=args.include_sets.split(",") if args.include_sets else None)
        seconds = time.perf_counter() - started
        print(f"{split}: {len(manifest['shards'])} shards, {manifest['documents']} documents, "
              f"{manifest['tokens']} tokens ({manifest['dtype']}) in {seconds:.1f} s = "
              f"{manifest['tokens'] / seconds:,.0f} tokens/s -> {args.out}/{split}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
