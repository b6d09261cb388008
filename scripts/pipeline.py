"""Base -> G_stack -> continue, a scratch baseline, evaluation, cards, push and the FLOPs saving, in one command.

    python scripts/pipeline.py --config configs/pipeline/demo.yaml
    python scripts/pipeline.py --config configs/pipeline/7B.yaml --dry-run
"""

from growlm.pipeline.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
