"""The command lines of every stage: pure functions over the pipeline config (no I/O)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import growlm
from growlm.pipeline.config import EvalStageConfig, GrowthStageConfig, LaunchConfig, TrainStageConfig

REPO_ROOT = Path(growlm.__file__).resolve().parents[1]


def repo_path(path: str | Path) -> Path:
    """A path from a config: absolute as given, else relative to the repository root."""
    path = Path(path)
    return path if path.is_absolute() else REPO_ROOT / path


def script(relative: str) -> str:
    """Absolute path of a repository script, with a clear error when the checkout lacks it."""
    path = REPO_ROOT / relative
    if not path.is_file():
        raise ValueError(f"{path} is missing; the pipeline runs from a growlm source checkout")
    return str(path)


PATH_FLAGS = ("source", "tokenizer")  # pretrain.py flags whose relative values may name files of the repository


def with_repo_paths(args: dict[str, Any]) -> dict[str, Any]:
    """`args` with relative `source`/`tokenizer` values that exist under the repository root made absolute, so a
    config naming `growlm/assets/...` works from any working directory."""
    out = dict(args)
    for key in PATH_FLAGS:
        if key in out and not Path(str(out[key])).is_absolute() and repo_path(str(out[key])).exists():
            out[key] = str(repo_path(str(out[key])))
    return out


def flags(args: dict[str, Any]) -> list[str]:
    """`{"model.shape": "tiny-2L", "flag": true}` -> `["--model.shape", "tiny-2L", "--flag", "true"]`."""
    out: list[str] = []
    for key, value in args.items():
        if isinstance(value, bool):
            value = str(value).lower()
        out += [f"--{key}", str(value)]
    return out


def launcher(launch: LaunchConfig) -> list[str]:
    """`python` on CPU / laptops, `accelerate launch --config_file FILE` when a config is given."""
    if launch.accelerate_config is None:
        return [sys.executable]
    config = repo_path(launch.accelerate_config)
    if not config.is_file():
        raise ValueError(f"launch.accelerate_config {config} does not exist; pick one in accelerate_configs/")
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config)]


def pretrain_command(stage: TrainStageConfig, *, output_dir: Path, seed: int, launch: LaunchConfig,
                     init_from: Path | None = None, data_from: Path | None = None) -> list[str]:
    """`[accelerate launch] scripts/pretrain.py --config ... --resume auto` for one training stage.

    `data_from` (the base run's final folder) makes the grown run start on the first sample the base did not
    consume (training.md §6.4, `data_after_growth: continue`), so no base data is seen twice."""
    budget = ["--max-tokens", str(stage.max_tokens)] if stage.max_tokens is not None else [
        "--max-steps", str(stage.max_steps)]
    config = ["--config", str(repo_path(stage.config))] if stage.config else []
    command = launcher(launch) + [script("scripts/pretrain.py"), *config, "--output-dir", str(output_dir),
                                  *budget, "--resume", "auto", "--seed", str(seed)]
    if init_from is not None:
        command += ["--init-from", str(init_from)]
    if data_from is not None:
        command += ["--data-from", str(data_from)]
    command += flags(with_repo_paths(stage.args))
    check_pretrain_flags(command[command.index(script("scripts/pretrain.py")) + 1:])
    return command


def pretrain_args(stage: TrainStageConfig):
    """The `PretrainConfig` a stage's YAML and flags give (what scripts/pretrain.py will see)."""
    from growlm.train.config import parse_args

    config = ["--config", str(repo_path(stage.config))] if stage.config else []
    return parse_args([*config, *flags(with_repo_paths(stage.args)), "--max-steps", "1"])


def check_pretrain_flags(argv: list[str]) -> None:
    """Parse `argv` with scripts/pretrain.py's own parser, so a bad flag fails before any stage runs."""
    from growlm.train.config import parse_args

    try:
        parse_args(argv)
    except (ValueError, SystemExit) as err:
        raise ValueError(f"invalid scripts/pretrain.py arguments {' '.join(argv)}: {err}") from None


def stack_command(growth: GrowthStageConfig, *, src: Path, out: Path, seed: int) -> list[str]:
    """`growth/stack.py --src SRC --g G --out OUT` (replacing a leftover, unmarked OUT)."""
    return [sys.executable, script("growth/stack.py"), "--src", str(src), "--g", str(growth.g),
            "--operator", growth.operator, "--seed", str(seed), "--out", str(out), "--overwrite",
            *flags(growth.args)]


def evaluate_command(evaluation: EvalStageConfig, *, model: Path, output: Path) -> list[str]:
    """`scripts/evaluate.py --model DIR --tasks T --output FILE`."""
    return [sys.executable, script("scripts/evaluate.py"), "--model", str(model), "--tasks", evaluation.tasks,
            "--output", str(output), *flags(evaluation.args)]


def push_command(*, folder: Path, repo_id: str, private: bool) -> list[str]:
    """`scripts/push.py --folder DIR --repo-id ORG/NAME` (HF_ENDPOINT/HF_TOKEN come from the environment)."""
    return [sys.executable, script("scripts/push.py"), "--folder", str(folder), "--repo-id", repo_id,
            *(["--private"] if private else [])]
