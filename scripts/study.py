"""Run a growth study: `python scripts/study.py --config configs/study/gstack-cpu.yaml [--jobs 2]`.

Thin entry point over `growlm.cli.study` (see `--help`).
"""

from growlm.cli.study import main

if __name__ == "__main__":
    raise SystemExit(main())
