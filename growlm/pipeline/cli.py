"""`python scripts/pipeline.py --config configs/pipeline/demo.yaml`: the whole growth story in one command.

    python scripts/pipeline.py --config configs/pipeline/demo.yaml              # CPU demo, ~10 min on 2 cores
    python scripts/pipeline.py --config configs/pipeline/1.1B.yaml --dry-run    # show the stages and commands
    python scripts/pipeline.py --config configs/pipeline/1.1B.yaml              # GPUs, via accelerate launch

Re-running with the same output directory skips every stage that finished (`<stage dir>/.done`) and resumes an
interrupted training stage from its last checkpoint.
"""

from __future__ import annotations

import argparse

from growlm.cli.errors import command
from growlm.pipeline.config import load_config
from growlm.pipeline.run import describe_stages, run_pipeline


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--config", required=True, help="pipeline YAML, e.g. configs/pipeline/demo.yaml")
    parser.add_argument("--output-dir", help="override the config's output_dir")
    parser.add_argument("--dry-run", action="store_true", help="print the stages and their commands, run nothing")
    return parser


@command
def main(argv: list[str]) -> None:
    args = build_parser().parse_args(argv)
    cfg = load_config(args.config, output_dir=args.output_dir)
    if args.dry_run:
        print(describe_stages(cfg))
    else:
        run_pipeline(cfg)


if __name__ == "__main__":
    raise SystemExit(main())
