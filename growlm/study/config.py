"""The study's typed config: dataclasses loaded from YAML by `growlm.config_io` (unknown keys are an error)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from growlm.config_io import build, read_mapping
from growlm.growth.types import WIDTH_FIELDS
from growlm.modeling import SHAPES, Shape
from growlm.pipeline.config import EvalStageConfig, GrowthStageConfig, LaunchConfig
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
    """A grown arm: which base, the growth to the target shape (g x the depth with `operator`, the width with
    `width_operator`), more growlm-stack flags, and pretrain.py flags that differ after growth."""

    base: str
    g: int = 4  # depth growth factor; 1: the depth stays (a width-only arm)
    operator: str | None = None  # depth operator (growlm-stack --operator); stack when g > 1
    width_operator: str | None = None  # grows the base's width to the target's (growlm-stack --width-operator)
    group: str | None = None  # its table section and plot panel (default: depth, width or depth+width)
    growth: dict[str, Any] = field(default_factory=dict)  # more growlm-stack flags, e.g. noise: 0.2
    args: dict[str, Any] = field(default_factory=dict)  # e.g. warmup-steps: 0 (continue at the target LR)

    def __post_init__(self) -> None:
        if self.g > 1 and self.operator is None:
            self.operator = "stack"
        if self.group is None:
            self.group = "+".join(kind for kind, grows in (("depth", self.g > 1), ("width", self.width_operator))
                                  if grows) or "none"

    def growth_stage(self, target: Shape) -> GrowthStageConfig:
        """The growlm-stack options of this arm: its operators, the target's width when the width grows, its flags."""
        width = {name.replace("_", "-"): getattr(target, name) for name in WIDTH_FIELDS} if self.width_operator else {}
        return GrowthStageConfig(g=self.g, operator=self.operator or "stack", width_operator=self.width_operator,
                                 args={**width, **self.growth})

    def grown_shape(self, base: Shape, target: Shape) -> Shape:
        """The shape growth gives: g x the base's layers, and the target's width when `width_operator` is set."""
        width = {name: getattr(target, name) for name in WIDTH_FIELDS} if self.width_operator else {}
        return dataclasses.replace(base, num_hidden_layers=base.num_hidden_layers * self.g, **width)


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
class StudyEvalConfig(EvalStageConfig):
    """`scripts/evaluate.py` on the final model of scratch and of every grown arm (`tasks`, extra flags in `args`):
    for the first seed, every seed, or none."""

    seeds: Literal["first", "all", "none"] = "all"


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
    eval: StudyEvalConfig = field(default_factory=StudyEvalConfig)
    report: StudyReportConfig = field(default_factory=StudyReportConfig)

    def __post_init__(self) -> None:
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be a non-empty list of distinct integers, got {self.seeds}")
        if not self.bases or not self.arms:
            raise ValueError("bases and arms each need a non-empty mapping of name -> settings")
        for name, shape in [("target", self.target.shape), *((f"base {n!r}", b.shape) for n, b in self.bases.items())]:
            if shape not in SHAPES:
                raise ValueError(f"{name}: unknown shape {shape!r}; choose one of {sorted(SHAPES)}")
        for name, arm in self.arms.items():
            if arm.base not in self.bases:
                raise ValueError(f"arm {name!r} names base {arm.base!r}; defined bases: {sorted(self.bases)}")
            self.check_arm(name, arm)
        if "lr" not in self.target.args and not self.target.lr_sweep:
            raise ValueError("target needs args.lr or a non-empty lr_sweep")
        for name, base in self.bases.items():
            if "lr" not in base.args and not base.lr_sweep:
                raise ValueError(f"base {name!r} needs args.lr or a non-empty lr_sweep")


    def check_arm(self, name: str, arm: ArmConfig) -> None:
        """The arm grows its base exactly into the target shape, with operators and flags growlm-stack accepts."""
        if arm.g == 1 and arm.operator is not None:
            raise ValueError(f"arm {name!r}: operator {arm.operator!r} is a depth operator but g is 1 (no depth "
                             "growth); drop it or set g >= 2")
        base, target = SHAPES[self.bases[arm.base].shape], SHAPES[self.target.shape]
        if arm.grown_shape(base, target) != target:
            raise ValueError(f"arm {name!r} grows base {self.bases[arm.base].shape} (g = {arm.g}, width operator "
                             f"{arm.width_operator}) into {arm.grown_shape(base, target)}, not the target "
                             f"{self.target.shape} {target}; set g (1: no depth growth) and width_operator to reach it")
        try:
            arm.growth_stage(target)
        except ValueError as err:
            raise ValueError(f"arm {name!r}: {err}") from None


def study_from_dict(data: dict, origin: str = "study config") -> StudyConfig:
    """A validated `StudyConfig` from a plain mapping (e.g. parsed YAML)."""
    return build(StudyConfig, data, origin)


def load_study(path: str | Path, *, output_dir: str | None = None) -> StudyConfig:
    """Load a study YAML (`configs/study/*.yaml`); `output_dir` overrides the file's value."""
    data = read_mapping(path, "study config", "pass one of configs/study/*.yaml")
    if output_dir is not None:
        data["output_dir"] = output_dir
    return study_from_dict(data, str(path))
