"""The pipeline's stages and their order: base -> G_stack -> continue, a scratch baseline, evaluation of both,
the report (plot, saving at equal loss, `summary.json`), cards and push of all three models."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

from growlm.atomic import write_json
from growlm.pipeline.commands import evaluate_command, pretrain_command, stack_command
from growlm.pipeline.config import PipelineConfig
from growlm.pipeline.layout import ARMS, MODELS, Layout
from growlm.pipeline.publish import card_stage, push_stage
from growlm.pipeline.publisher import HubPublisher
from growlm.pipeline.report import compute_report, format_summary
from growlm.pipeline.stages import Stage, is_done, run_chains, run_command, run_stage

Log = Callable[[str], None]


def command_stage(name: str, directory: Path, command: list[str], log_file: Path, *,
                  create_dir: bool = False, env: dict[str, str] | None = None) -> Stage:
    """A stage that runs one CLI; `create_dir` makes its directory first (for CLIs that write one file)."""
    def run() -> dict:
        if create_dir:
            directory.mkdir(parents=True, exist_ok=True)
        return run_command(command, log_file=log_file, env=env)

    return Stage(name, directory, run, command=tuple(command))


def training_stages(cfg: PipelineConfig, layout: Layout) -> list[Stage]:
    """The compute stages, in order: base, grow, continue (grown), scratch, and the evaluation of both."""
    def train(name: str, stage_cfg, init_from: Path | None = None, data_from: Path | None = None) -> Stage:
        command = pretrain_command(stage_cfg, output_dir=layout.train(name), seed=cfg.seed, launch=cfg.launch,
                                   init_from=init_from, data_from=data_from)
        return command_stage(name, layout.train(name), command, layout.logs / f"{name}.log", env=cfg.launch.env)

    stack = stack_command(cfg.growth, src=layout.final_model("base"), out=layout.grow, seed=cfg.seed)
    stages = [
        train("base", cfg.base),
        command_stage("grow", layout.grow, stack, layout.logs / "grow.log"),
        train("grown", cfg.grown, init_from=layout.grow, data_from=layout.final_model("base")),
        train("scratch", cfg.scratch),
    ]
    for arm in ARMS:
        command = evaluate_command(cfg.eval, model=layout.final_model(arm), output=layout.eval_results(arm))
        stages.append(command_stage(f"eval-{arm}", layout.eval(arm), command, layout.logs / f"eval-{arm}.log",
                                    create_dir=True))
    return stages


def describe_stages(cfg: PipelineConfig) -> str:
    """What a run would do: each compute stage, whether it is already done, and its command line."""
    lines = []
    for stage in training_stages(cfg, Layout(Path(cfg.output_dir).resolve())):
        state = "done" if is_done(stage.directory) else "to run"
        lines += [f"[{stage.name}] {state}: {stage.directory}", "  " + " ".join(stage.command)]
    lines.append(f"then: report, cards and push of the base, grown and scratch models (hub.kind={cfg.hub.kind})")
    return "\n".join(lines)


def run_pipeline(cfg: PipelineConfig, *, log: Log = print) -> dict:
    """Run every unfinished stage, then write `summary.json` and print the summary."""
    layout = Layout(Path(cfg.output_dir).resolve())
    base, grow, grown, scratch, *evals = training_stages(cfg, layout)
    run_chains([[base, grow, grown], [scratch]], jobs=cfg.launch.jobs, log=log)  # scratch is independent
    run_chains([[stage] for stage in evals], jobs=1, log=log)
    summary = compute_report(cfg, layout)
    summary["eval"] = {arm: json.loads(layout.eval_results(arm).read_text()) for arm in ARMS}
    for model in MODELS:
        run_stage(card_stage(cfg, layout, model, summary), log=log)
    with HubPublisher(cfg.hub, layout.hub) as hub:
        for model in MODELS:
            run_stage(push_stage(cfg, layout, model, hub), log=log)
    summary["hub"] = {model: json.loads((layout.push(model) / ".done").read_text()) for model in MODELS}
    write_json(layout.summary, summary, sort_keys=True)
    log(format_summary(summary))
    return summary
