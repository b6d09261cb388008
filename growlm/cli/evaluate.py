"""Evaluate a model with lm-evaluation-harness and write eval_results.json beside it.

    python scripts/evaluate.py --model runs/grown-24L                        # paper's 8 tasks, or offline set if offline
    HF_DATASETS_OFFLINE=1 python scripts/evaluate.py --model runs/tiny --tasks offline --limit 20   # CPU smoke test
    python scripts/evaluate.py --model org/name --revision main --tasks paper --dtype bfloat16 --device cuda --batch-size 32
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from growlm.cli.errors import command
from growlm.eval.run import DEVICES, DTYPES, EvalConfig, evaluate_model


def parse_args(argv: list[str] | None = None) -> EvalConfig:
    defaults = EvalConfig(model="")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="local model folder or Hub repo id")
    parser.add_argument("--revision", default=None, help="Hub revision (branch, tag or commit)")
    parser.add_argument("--tasks", default=defaults.tasks,
                        help="auto (paper if datasets can be downloaded, else offline), paper, offline, or a,b,c")
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--dtype", choices=DTYPES, default=defaults.dtype)
    parser.add_argument("--device", choices=DEVICES, default=defaults.device)
    parser.add_argument("--limit", type=int, default=None, help="samples per task (smoke tests only)")
    parser.add_argument("--num-fewshot", type=int, default=defaults.num_fewshot)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--output", type=Path, default=None,
                        help="results JSON (default: <model dir>/eval_results.json)")
    args = parser.parse_args(argv)
    return EvalConfig(**{key.replace("-", "_"): value for key, value in vars(args).items()})


@command
def main(argv: list[str]) -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    record, path = evaluate_model(parse_args(argv))
    print(json.dumps(record["tasks"], indent=2, sort_keys=True))
    print(f"wrote {path}")


if __name__ == "__main__":
    raise SystemExit(main())
