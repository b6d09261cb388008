r"""Pretrain (or continue pretraining) a Llama with accelerate: one CPU, one GPU, DDP or FSDP2.

  # CPU smoke run (tiny shape, the vendored data sample):
  python scripts/pretrain.py --config configs/pretrain/tiny_cpu.yaml --output-dir runs/tiny --max-steps 20
  # one GPU / 8 GPUs with FSDP2; continue from a grown model with a fresh optimizer and warmup:
  accelerate launch --config_file accelerate_configs/single_gpu.yaml scripts/pretrain.py \
      --config configs/pretrain/6L2048H_base.yaml --output-dir runs/base --resume auto
  accelerate launch --config_file accelerate_configs/fsdp2_1node_8gpu.yaml scripts/pretrain.py \
      --config configs/pretrain/1.1B_target.yaml --init-from runs/grown-24L --output-dir runs/1.1B --resume auto

Options: `--config FILE` then `--<field> VALUE` (or `--<field>=VALUE`) for any config field; `--help` lists them.
"""

from __future__ import annotations

import logging
import os

from growlm.cli.errors import report, split_debug
from growlm.train.config import UsageError, environment_problems, help_text, parse_args


def main(argv: list[str] | None = None) -> int:
    """Parse, check every input, train. A usage error (also one found while training: `UsageError`) is one
    `error:` line and exit status 2 (`--debug`: the traceback); any other exception is a bug and keeps its
    traceback."""
    argv, debug = split_debug(argv)
    if "-h" in argv or "--help" in argv:
        print(__doc__ + "\n" + help_text())
        return 0
    try:
        cfg = parse_args(argv)
        problems = environment_problems(cfg)
        if problems:
            raise UsageError("; ".join(problems))
    except ValueError as err:
        return report(err, debug=debug)
    # The main process (RANK 0, set by accelerate launch / torchrun) logs at INFO, the other ranks warnings only.
    level = logging.INFO if int(os.environ.get("RANK", "0")) == 0 else logging.WARNING
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from growlm.train.loop import train  # heavy imports only once the config is valid

    try:
        final = train(cfg)
    except UsageError as err:
        return report(err, debug=debug)
    print(f"final model: {final}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
