"""The study's typed config: dataclasses loaded from YAML by `growlm.config_io` (unknown keys are an error)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from growlm.config_io import build, read_mapping
from growlm.pipeline.config import DEPTH_OPERATORS, LaunchConfig
from growlm.train.flops import FLOPS_COUNTS


@dataclass
class TargetConfig:
    """The target-size recipe shared by the scratch arm and every grown arm (all but the budget)."""

    shape: str
    args: dict[str, Any] = field(default_factory=dict)  # pretrain.py flags; `lr` may be chosen by the sweep
    lr_sweep: list[float] = field(default_factory=list)  # scratch at each LR, first seed; the best final loss wins
    sweep_tokens: int | None = None  # a shorter sweep (default: scratch's max_tokens, so the best run is reused)


@dataclass
class BaseConfig:
    """A small model trained for d tokens before growth (shared by every arm that names it)."""

    shape: str
    max_tokens: int
    args: dict[str, Any] = field(default_factory=dict)
    lr_sweep: list[float] = field(default_factory=list)  # this base at each LR, first seed; best final loss wins


@dataclass
class ArmConfig:
    """A grown arm: which base, the growth (g, operator) and pretrain.py flags that differ after growth."""

    base: str
    g: int = 4
    operator: str = "stack"
    growth: dict[str, Any] = field(default_factory=dict)  # more growlm-stack flags, e.g. noise: 0.2
    args: dict[str, Any] = field(default_factory=dict)  # e.g. warmup-steps: 0 (continue at the target LR)

    def __post_init__(self) -> None:
        if self.g < 2:
            raise ValueError(f"an arm's g must be >= 2, got {self.g}")
        if self.operator not in DEPTH_OPERATORS:
            raise ValueError(f"an arm's operator must be one of {DEPTH_OPERATORS}, got {self.operator!r}")


@dataclass
class ScratchConfig:
    max_tokens: int


@dataclass
class StudyReportConfig:
    loss_levels: int = 4  # evenly spaced from the lowest loss every seed of both arms reaches, that one included
    budget_count: str = "full"  # grown arms get scratch's total FLOPs (base included) under this count

    def __post_init__(self) -> None:
        if self.loss_levels < 3:
            raise ValueError(f"report.loss_levels must be >= 3, got {self.loss_levels}")
        if self.budget_count not in FLOPS_COUNTS:
            raise ValueError(f"report.budget_count must be one of {FLOPS_COUNTS}, got {self.budget_count!r}")


@dataclass
class StudyConfig:
    """Arms x seeds: a scratch baseline, small bases, grown arms; identical data order and target recipe."""

    name: str
    output_dir: str
    seeds: list[int]
    target: TargetConfig
    scratch: ScratchConfig
    bases: dict[str, BaseConfig]
    arms: dict[str, ArmConfig]
    common: dict[str, Any] = field(default_factory=dict)  # pretrain.py flags of every run (data, batch, eval)
    launch: LaunchConfig = field(default_factory=LaunchConfig)
    report: StudyReportConfig = field(default_factory=StudyReportConfig)

    def __post_init__(self) -> None:
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be a non-empty list of distinct integers, got {self.seeds}")
        if not self.bases or not self.arms:
            raise ValueError("bases and arms each need a non-empty mapping of name -> settings")
        for name, arm in self.arms.items():
            if arm.base not in self.bases:
                raise ValueError(f"arm {name!r} names base {arm.base!r}; defined bases: {sorted(self.bases)}")
        if "lr" not in self.target.args and not self.target.lr_sweep:
            raise ValueError("target needs args.lr or a non-empty lr_sweep")
        for name, base in self.bases.items():
            if "lr" not in base.args and not base.lr_sweep:
                raise ValueError(f"base {name!r} needs args.lr or a non-empty lr_sweep")


def study_from_dict(data: dict, origin: str = "study config") -> StudyConfig:
    """A validated `StudyConfig` from a plain mapping (e.g. parsed YAML)."""
    return build(StudyConfig, data, origin)


def load_study(path: str | Path, *, output_dir: str | None = None) -> StudyConfig:
    """Load a study YAML (`configs/study/*.yaml`); `output_dir` overrides the file's value."""
    data = read_mapping(path, "study config", "pass one of configs/study/*.yaml")
    if output_dir is not None:
        data["output_dir"] = output_dir
    return study_from_dict(data, str(path))
