"""Rebuild the offline lm-eval task data in growlm/eval/tasks/ from the vendored held-out test split.

    python scripts/build_eval_tasks.py                 # rewrite growlm/eval/tasks/*.jsonl (deterministic)
    python scripts/build_eval_tasks.py --out-dir /tmp/t  # write elsewhere, e.g. to compare
"""

from __future__ import annotations

import argparse
from pathlib import Path

from growlm.eval.build import TASKS_DIR, TaskBuildConfig, build_task_files


def main(argv: list[str] | None = None) -> None:
    defaults = TaskBuildConfig()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out-dir", type=Path, default=TASKS_DIR, help="where the .jsonl files go")
    parser.add_argument("--data-dir", type=Path, default=defaults.data_dir, help="SlimPajama-layout folder")
    parser.add_argument("--split", default=defaults.split, help="split to read (default: test)")
    parser.add_argument("--seed", type=int, default=defaults.seed, help="seed of the distractor/label RNG")
    args = parser.parse_args(argv)
    config = TaskBuildConfig(data_dir=args.data_dir, split=args.split, seed=args.seed)
    for path in build_task_files(args.out_dir, config).values():
        print(f"wrote {path} ({path.read_text(encoding='utf-8').count(chr(10))} rows)")


if __name__ == "__main__":
    main()
