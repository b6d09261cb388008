"""Pretrain (or continue pretraining) a Llama with accelerate (see growlm/cli/pretrain.py; `growlm-pretrain`
once installed; `accelerate launch -m growlm.cli.pretrain ...` is the same).

    python scripts/pretrain.py --config configs/pretrain/tiny_cpu.yaml --output-dir runs/tiny --max-steps 20
"""

from growlm.cli.pretrain import main

if __name__ == "__main__":
    raise SystemExit(main())
