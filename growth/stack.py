"""Grow a Llama checkpoint: `python growth/stack.py --src runs/base-6L --out runs/grown-24L --g 4`.

Thin entry point over `growlm.cli.stack` (see `--help`); `growlm-stack` is the same command once growlm
is installed.
"""

from growlm.cli.stack import main

if __name__ == "__main__":
    raise SystemExit(main())
