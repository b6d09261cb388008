"""Tokenize a corpus once into token shards: `python scripts/tokenize_data.py --source SRC --out DIR`.

Thin entry point over `growlm.cli.tokenize_data` (see `--help`).
"""

from growlm.cli.tokenize_data import main

if __name__ == "__main__":
    raise SystemExit(main())
