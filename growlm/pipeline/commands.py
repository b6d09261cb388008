"""The command lines of every stage: pure functions over the pipeline config (no I/O)."""

from __future__ import annotations

import sys
from importlib import resources
from pathlib import Path
from typing import Any

from growlm.pipeline.config import EvalStageConfig, GrowthStageConfig, LaunchConfig, TrainStageConfig

CHECKOUT_ROOT = Path(__file__).resolve().parents[2]  # the source checkout, when growlm runs from one
PRETRAIN_MODULE = "growlm.cli.pretrain"


def repo_path(path: str | Path) -> Path:
    """A path from a config: absolute as given; else under the working directory, else the growlm package's own
    data for `growlm/...` (e.g. `growlm/assets/slimpajama-sample`, also from an installed wheel), else the
    source checkout (`configs/...`, `accelerate_configs/...`)."""
    path = Path(path)
    if path.is_absolute() or path.exists():
        return path.absolute()
    if path.parts[0] == "growlm":
        return Path(str(resources.files("growlm").joinpath(*path.parts[1:])))
    return CHECKOUT_ROOT / path


def module(name: str) -> list[str]:
    """`python -m NAME`: the pipeline runs the installed CLIs, not files of a checkout."""
    return [sys.executable, "-m", name]


PATH_FLAGS = ("source", "tokenizer")  # pretrain.py flags whose relative values may name files of the repository


def with_repo_paths(args: dict[str, Any]) -> dict[str, Any]:
    """`args` with relative `source`/`tokenizer` values that `repo_path` finds made absolute, so a config naming
    `growlm/assets/...` works from any working directory."""
    out = dict(args)
    for key in PATH_FLAGS:
        if key in out and not Path(str(out[key])).is_absolute() and repo_path(str(out[key])).exists():
            out[key] = str(repo_path(str(out[key])))
    return out


def flags(args: dict[str, Any]) -> list[str]:
    """`{"shape": "tiny-2L", "compile": true}` -> `["--shape", "tiny-2L", "--compile", "true"]`."""
    out: list[str] = []
    for key, value in args.items():
        if isinstance(value, bool):
            value = str(value).lower()
        out += [f"--{key}", str(value)]
    return out


def launcher(launch: LaunchConfig) -> list[str]:
    """`python -m growlm.cli.pretrain` on CPU / laptops, `accelerate launch --config_file FILE -m ...` when a
    config is given."""
    if launch.accelerate_config is None:
        return module(PRETRAIN_MODULE)
    config = repo_path(launch.accelerate_config)
    if not config.is_file():
        raise ValueError(f"launch.accelerate_config {config} does not exist; pick one in accelerate_configs/")
    return [*module("accelerate.commands.launch"), "--config_file", str(config), "-m", PRETRAIN_MODULE]


def pretrain_command(stage: TrainStageConfig, *, output_dir: Path, seed: int, launch: LaunchConfig,
                     init_from: Path | None = None, data_from: Path | None = None) -> list[str]:
    """`[accelerate launch -m] growlm.cli.pretrain --config ... --resume auto` for one training stage.

    `data_from` (the base run's final folder) makes the grown run start on the first sample the base did not
    consume (training.md §6.4, `data_after_growth: continue`), so no base data is seen twice."""
    budget = ["--max-tokens", str(stage.max_tokens)] if stage.max_tokens is not None else [
        "--max-steps", str(stage.max_steps)]
    config = ["--config", str(repo_path(stage.config))] if stage.config else []
    command = launcher(launch) + [*config, "--output-dir", str(output_dir), *budget, "--resume", "auto",
                                  "--seed", str(seed)]
    if init_from is not None:
        command += ["--init-from", str(init_from)]
    if data_from is not None:
        command += ["--data-from", str(data_from)]
    command += flags(with_repo_paths(stage.args))
    check_pretrain_flags(command[command.index(PRETRAIN_MODULE) + 1:])
    return command


def pretrain_args(stage: TrainStageConfig):
    """The `PretrainConfig` a stage's YAML and flags give (what pretrain will see)."""
    from growlm.train.config import parse_args

    config = ["--config", str(repo_path(stage.config))] if stage.config else []
    return parse_args([*config, *flags(with_repo_paths(stage.args)), "--max-steps", "1"])


def check_pretrain_flags(argv: list[str]) -> None:
    """Parse `argv` with pretrain's own parser, so a bad flag fails before any stage runs."""
    from growlm.train.config import parse_args

    try:
        parse_args(argv)
    except (ValueError, SystemExit) as err:
        raise ValueError(f"invalid pretrain arguments {' '.join(argv)}: {err}") from None


def growth_flags(growth: GrowthStageConfig) -> list[str]:
    """growlm-stack's growth flags: `--g G --operator OP` when the depth grows, `--width-operator OP`, extra flags."""
    depth = ["--g", str(growth.g), "--operator", growth.operator] if growth.g > 1 else []
    width = ["--width-operator", growth.width_operator] if growth.width_operator else []
    return [*depth, *width, *flags(growth.args)]


def check_stack_flags(argv: list[str]) -> None:
    """Parse `argv` with growlm-stack's own parser (its operator choices included), so a bad flag or operator fails
    when the config loads."""
    import argparse

    from growlm.cli.stack import build_parser

    parser = build_parser()
    parser.exit_on_error = False
    try:
        _, unknown = parser.parse_known_args(argv)
    except argparse.ArgumentError as err:
        raise ValueError(f"invalid growlm-stack arguments {' '.join(argv)}: {err}") from None
    if unknown:
        raise ValueError(f"invalid growlm-stack arguments {' '.join(argv)}: unknown {' '.join(unknown)}")


def stack_command(growth: GrowthStageConfig, *, src: Path, out: Path, seed: int) -> list[str]:
    """`python -m growlm.cli.stack --src SRC --out OUT [growth flags]` (replacing a leftover, unmarked OUT)."""
    return [*module("growlm.cli.stack"), "--src", str(src), "--seed", str(seed), "--out", str(out), "--overwrite",
            *growth_flags(growth)]


def evaluate_command(evaluation: EvalStageConfig, *, model: Path, output: Path) -> list[str]:
    """`python -m growlm.cli.evaluate --model DIR --tasks T --output FILE`."""
    return [*module("growlm.cli.evaluate"), "--model", str(model), "--tasks", evaluation.tasks,
            "--output", str(output), *flags(evaluation.args)]


def push_command(*, folder: Path, repo_id: str, private: bool) -> list[str]:
    """`python -m growlm.cli.push --folder DIR --repo-id ORG/NAME` (HF_ENDPOINT/HF_TOKEN come from the environment)."""
    return [*module("growlm.cli.push"), "--folder", str(folder), "--repo-id", repo_id,
            *(["--private"] if private else [])]
