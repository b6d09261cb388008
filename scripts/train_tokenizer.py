"""Train a small byte-fallback BPE tokenizer: `python scripts/train_tokenizer.py --vocab-size 4096 --out DIR`.

Thin entry point over `growlm.cli.train_tokenizer` (see `--help`).
"""

from growlm.cli.train_tokenizer import main

if __name__ == "__main__":
    raise SystemExit(main())
