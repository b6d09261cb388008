"""Evaluate a model with lm-evaluation-harness (see growlm/cli/evaluate.py; `growlm-evaluate` once installed).

    python scripts/evaluate.py --model runs/grown-24L --tasks offline --limit 20
"""

from growlm.cli.evaluate import main

if __name__ == "__main__":
    raise SystemExit(main())
