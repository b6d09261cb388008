"""The pipeline's typed config: dataclasses loaded from YAML by `growlm.config_io` (unknown keys are an error)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from growlm.config_io import build, read_mapping

HUB_KINDS = ("server", "dir", "remote")


@dataclass
class TrainStageConfig:
    """One `scripts/pretrain.py` run: an optional pretrain YAML, the budget, and `--flag value` overrides."""

    config: str | None = None
    max_tokens: int | None = None
    max_steps: int | None = None
    args: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if (self.max_tokens is None) == (self.max_steps is None):
            raise ValueError("every training stage (base, grown, scratch) sets exactly one of max_tokens or max_steps")


@dataclass
class GrowthStageConfig:
    """`growth/stack.py` options: the depth factor g with its operator (g = 1: no depth growth), an optional width
    operator (the target width goes in `args`, e.g. `hidden-size`) and extra flags. Operator names and flags are
    checked with growlm-stack's own parser, so whatever operators it offers are accepted here."""

    g: int = 4
    operator: str = "stack"
    width_operator: str | None = None
    args: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.g < 1 or (self.g == 1 and self.width_operator is None):
            raise ValueError(f"growth.g must be >= 2 to grow the depth (or 1 beside a growth.width_operator), "
                             f"got {self.g}")
        from growlm.pipeline.commands import check_stack_flags, growth_flags

        check_stack_flags(growth_flags(self))


@dataclass
class EvalStageConfig:
    """`scripts/evaluate.py` options: the task set (`offline`, `paper` or a comma list) and extra flags."""

    tasks: str = "offline"
    args: dict[str, Any] = field(default_factory=dict)


@dataclass
class HubConfig:
    """Where the models (base, grown, scratch) are published.

    `server`: the local Hub-compatible server (`python -m growlm.hub_server`), started for the run and storing
    into `<output_dir>/hub`; `dir`: plain copies under `<output_dir>/hub/<org>/<name>/`; `remote`: the Hub
    that `HF_ENDPOINT`/`HF_TOKEN` point at (huggingface.co by default).
    """

    kind: str = "server"
    org: str = "growlm-demo"
    private: bool = False

    def __post_init__(self) -> None:
        if self.kind not in HUB_KINDS:
            raise ValueError(f"hub.kind must be one of {HUB_KINDS}, got {self.kind!r}")


@dataclass
class LaunchConfig:
    """How training stages start: plain `python` (CPU) or `accelerate launch --config_file FILE`; how many
    independent runs go at once (`jobs`, e.g. scratch beside base -> grow -> grown) and with how many torch threads
    each (`threads`, 0 = torch's default; on a 2-core CPU `jobs: 2, threads: 1`)."""

    accelerate_config: str | None = None
    jobs: int = 1
    threads: int = 0

    def __post_init__(self) -> None:
        if self.jobs < 1 or self.threads < 0:
            raise ValueError(f"launch.jobs must be >= 1 and launch.threads >= 0, got {self.jobs} and {self.threads}")

    @property
    def env(self) -> dict[str, str] | None:
        """Environment for each training process (the thread count), or None to inherit."""
        return {"OMP_NUM_THREADS": str(self.threads)} if self.threads else None


@dataclass
class ReportConfig:
    """The saving-at-equal-loss report: how many loss levels, and the EMA smoothing weight (0 = none)."""

    loss_levels: int = 5
    smoothing: float = 0.0

    def __post_init__(self) -> None:
        if self.loss_levels < 1:
            raise ValueError(f"report.loss_levels must be >= 1, got {self.loss_levels}")
        if not 0.0 <= self.smoothing < 1.0:
            raise ValueError(f"report.smoothing is an EMA weight in [0, 1), got {self.smoothing}")


@dataclass
class PipelineConfig:
    """Base -> grow -> continue, a scratch baseline on the same budget, evaluation, cards, push, report."""

    name: str
    output_dir: str
    base: TrainStageConfig
    grown: TrainStageConfig
    scratch: TrainStageConfig
    seed: int = 3407
    growth: GrowthStageConfig = field(default_factory=GrowthStageConfig)
    eval: EvalStageConfig = field(default_factory=EvalStageConfig)
    hub: HubConfig = field(default_factory=HubConfig)
    launch: LaunchConfig = field(default_factory=LaunchConfig)
    report: ReportConfig = field(default_factory=ReportConfig)
    common: dict[str, Any] = field(default_factory=dict)  # pretrain.py flags of every training stage

    def __post_init__(self) -> None:
        for stage in (self.base, self.grown, self.scratch):  # a stage's own args win
            stage.args = {**self.common, **stage.args}


def config_from_dict(data: dict[str, Any], origin: str = "pipeline config") -> PipelineConfig:
    """A validated `PipelineConfig` from a plain mapping (e.g. parsed YAML)."""
    return build(PipelineConfig, data, origin)


def load_config(path: str | Path, *, output_dir: str | None = None) -> PipelineConfig:
    """Load a pipeline YAML; `output_dir` overrides the file's value."""
    data = read_mapping(path, "pipeline config", "pass one of configs/pipeline/*.yaml")
    if output_dir is not None:
        data["output_dir"] = output_dir
    return config_from_dict(data, str(path))
