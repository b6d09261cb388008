"""`scripts/study.py`: run a growth study (arms x seeds) and write its results.

    python scripts/study.py --config configs/study/gstack-cpu.yaml --jobs 2
    python scripts/study.py --config configs/study/gstack-cpu.yaml --seeds 1      # a piece: the first seed only
    python scripts/study.py --config configs/study/gstack-cpu.yaml --arms g4-d1M  # a piece: one arm
    python scripts/study.py --config configs/study/gstack-cpu.yaml --report-only  # tables and plot from what ran
    python scripts/study.py --config configs/study/completep-lr.yaml              # an LR grid (`lr_grid:` section)

Finished runs are skipped, so an interrupted study resumes by running the same command. Writes `results.json`,
`results.md` and `loss_vs_flops.png` (an LR grid: `lr_grid.png`) into the study's output folder.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from growlm.cli.errors import command


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="study.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="a study YAML (configs/study/*.yaml)")
    parser.add_argument("--output-dir", help="override the config's output_dir")
    parser.add_argument("--jobs", type=int, help="training runs at a time (default: the config's launch.jobs)")
    parser.add_argument("--seeds", help="comma list: run only these of the config's seeds (the report covers "
                                        "every finished seed; LR sweeps always use the first)")
    parser.add_argument("--arms", help="comma list: run only these arms (the report covers every finished arm)")
    parser.add_argument("--report-only", action="store_true", help="run nothing; report the finished runs (arms "
                        "whose base's LR sweep is unfinished are left out)")
    return parser.parse_args(argv)


@command
def main(argv: list[str]) -> int:
    args = parse(argv)
    from growlm.study.config import load_study
    from growlm.study.lr_grid import is_lr_grid
    from growlm.study.write import write_report

    if is_lr_grid(args.config):
        return lr_grid_main(args)
    cfg = load_study(args.config, output_dir=args.output_dir)
    seeds = [int(s) for s in (args.seeds or "").split(",") if s] or cfg.seeds
    unknown = sorted(set(seeds) - set(cfg.seeds))
    if unknown:
        raise ValueError(f"--seeds {unknown} are not in the config's seeds {cfg.seeds}")
    if args.jobs is not None and args.jobs < 1:
        raise ValueError(f"--jobs must be >= 1, got {args.jobs}")
    from growlm.study.runner import StudyRunner

    arms = [a for a in (args.arms or "").split(",") if a] or list(cfg.arms)
    unknown = sorted(set(arms) - set(cfg.arms))
    if unknown:
        raise ValueError(f"--arms {unknown} are not in the config's arms {sorted(cfg.arms)}")
    runner = StudyRunner(cfg, jobs=args.jobs, arms=arms, seeds=seeds)
    chosen = runner.chosen_lrs(partial=True) if args.report_only else runner.run()
    results = write_report(cfg, chosen)
    print(Path(cfg.output_dir, "results.md").read_text())
    print(json.dumps({"results": str(Path(cfg.output_dir).resolve() / "results.json"),
                      "wall_time_s": results["wall_time_s"]}))
    return 0


def lr_grid_main(args: argparse.Namespace) -> int:
    from growlm.study.lr_grid import load_lr_grid, run_grid, write_grid_report

    cfg = load_lr_grid(args.config, output_dir=args.output_dir)
    seeds = [int(s) for s in (args.seeds or "").split(",") if s] or cfg.lr_grid.seeds
    if args.arms or set(seeds) - set(cfg.lr_grid.seeds) or (args.jobs is not None and args.jobs < 1):
        raise ValueError(f"an LR grid takes no --arms, --seeds from {cfg.lr_grid.seeds} and --jobs >= 1")
    if not args.report_only:
        run_grid(cfg, jobs=args.jobs, seeds=seeds)
    results = write_grid_report(cfg)
    print(Path(cfg.output_dir, "results.md").read_text())
    print(json.dumps({"results": str(Path(cfg.output_dir).resolve() / "results.json"),
                      "wall_time_s": results["wall_time_s"]}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
