"""The pipeline: base -> G_stack -> continue, a scratch baseline, evaluation, report, cards, push."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Callable

from growlm.cards import write_model_card
from growlm.pipeline.commands import evaluate_command, pretrain_command, stack_command
from growlm.pipeline.config import PipelineConfig
from growlm.pipeline.curves import eval_points, non_embedding_params, read_metrics, run_curve, trained_tokens
from growlm.pipeline.hub import HubPublisher
from growlm.pipeline.layout import ARMS, Layout
from growlm.pipeline.plot import plot_loss_vs_flops
from growlm.pipeline.report import format_eval_table, format_savings, savings_at_equal_loss, savings_records
from growlm.pipeline.stages import Stage, is_done, run_command, run_stage
from growlm.eval.results import write_json_atomic
from growlm.growth.speedup import training_flops

Log = Callable[[str], None]


def command_stage(name: str, directory: Path, command: list[str], log_file: Path, *,
                  create_dir: bool = False) -> Stage:
    """A stage that runs one CLI; `create_dir` makes its directory first (for CLIs that write one file)."""
    def run() -> dict:
        if create_dir:
            directory.mkdir(parents=True, exist_ok=True)
        return run_command(command, log_file=log_file)

    return Stage(name, directory, run, command=tuple(command))


def training_stages(cfg: PipelineConfig, layout: Layout) -> list[Stage]:
    """The compute stages, in order: base, grow, continue (grown), scratch, and the evaluation of both."""
    def train(name: str, stage_cfg, init_from: Path | None = None) -> Stage:
        command = pretrain_command(stage_cfg, output_dir=layout.train(name), seed=cfg.seed, launch=cfg.launch,
                                   init_from=init_from)
        return command_stage(name, layout.train(name), command, layout.logs / f"{name}.log")

    stack = stack_command(cfg.growth, src=layout.final_model("base"), out=layout.grow, seed=cfg.seed)
    stages = [
        train("base", cfg.base),
        command_stage("grow", layout.grow, stack, layout.logs / "grow.log"),
        train("grown", cfg.grown, init_from=layout.grow),
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
    lines.append(f"then: report, cards and push of both models (hub.kind={cfg.hub.kind})")
    return "\n".join(lines)


def compute_report(cfg: PipelineConfig, layout: Layout) -> dict:
    """FLOPs bookkeeping, the loss-vs-FLOPs plot and the saving at equal loss, from the runs' metrics."""
    base_records = read_metrics(layout.base / "metrics.jsonl")
    n_base = non_embedding_params(layout.final_model("base"))
    n_target = non_embedding_params(layout.final_model("scratch"))
    d = trained_tokens(base_records)
    base_flops = training_flops(n_base, d)
    records = {arm: read_metrics(layout.train(arm) / "metrics.jsonl") for arm in ARMS}
    base = run_curve("base (small model)", eval_points(base_records), n_ne=n_base)
    grown = run_curve(f"grown (G_{cfg.growth.operator}, g={cfg.growth.g})", eval_points(records["grown"]),
                      n_ne=non_embedding_params(layout.final_model("grown")), offset_flops=base_flops)
    scratch = run_curve("scratch", eval_points(records["scratch"]), n_ne=n_target)
    plot_loss_vs_flops([base, grown, scratch], layout.plot, growth_flops=base_flops,
                       title=f"{cfg.name}: validation loss vs training FLOPs")
    try:
        savings = savings_records(savings_at_equal_loss(scratch, grown, num_levels=cfg.report.loss_levels,
                                                        smoothing=cfg.report.smoothing))
        saving_note = None
    except ValueError as err:  # e.g. runs too short to share a loss range: report it, keep publishing
        savings, saving_note = [], f"saving at equal loss not computable: {err}"
    tokens = {arm: trained_tokens(records[arm]) for arm in ARMS}
    return {
        "name": cfg.name,
        "flops_convention": "6 * non_embedding_params * tokens; grown includes the base model's FLOPs",
        "growth": {"operator": cfg.growth.operator, "g": cfg.growth.g, "base_tokens_d": d,
                   "base_non_embedding_params": n_base, "base_flops": base_flops},
        "runs": {
            "grown": {"tokens_after_growth": tokens["grown"], "total_tokens": d + tokens["grown"],
                      "flops": grown.curve.flops[-1], "final_val_loss": grown.curve.loss[-1]},
            "scratch": {"tokens": tokens["scratch"], "flops": training_flops(n_target, tokens["scratch"]),
                        "final_val_loss": scratch.curve.loss[-1]},
        },
        "target_non_embedding_params": n_target,
        "saving_at_equal_loss": savings,
        "saving_note": saving_note,
        "curves": {c.label: {"tokens": list(c.tokens), "flops": list(c.curve.flops), "val_loss": list(c.curve.loss)}
                   for c in (base, grown, scratch)},
        "plot": str(layout.plot),
    }


def _training_record(model_dir: Path, *, tokens: int, total_tokens: int, flops: float) -> dict:
    """The card's training record: pretrain's `training.json` (when written) plus the pipeline's counts."""
    path = model_dir / "training.json"
    record = json.loads(path.read_text()) if path.is_file() else {}
    return {**record, "tokens": tokens, "total_tokens": total_tokens, "flops": flops}


def publish_stage(cfg: PipelineConfig, layout: Layout, arm: str, report: dict) -> Stage:
    """Copy the final model with its eval results and the plot, and write its card (atomically)."""
    def run() -> dict:
        src, dst = layout.final_model(arm), layout.publish_model(arm)
        tmp = dst.with_name(dst.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(src, tmp)
        shutil.copy(layout.eval_results(arm), tmp / "eval_results.json")
        shutil.copy(layout.plot, tmp / layout.plot.name)
        run_info = report["runs"][arm]
        growth = json.loads((layout.grow / "growth.json").read_text()) if arm == "grown" else None
        training = _training_record(src, tokens=run_info.get("tokens_after_growth", run_info.get("tokens")),
                                    total_tokens=run_info.get("total_tokens", run_info.get("tokens")),
                                    flops=run_info["flops"])
        write_model_card(tmp, growth=growth, training=training, repo_id=repo_id(cfg, arm),
                         loss_curve=layout.plot.name)
        shutil.rmtree(dst, ignore_errors=True)
        tmp.rename(dst)
        return {"model": str(dst)}

    return Stage(f"card-{arm}", layout.publish(arm), run)


def repo_id(cfg: PipelineConfig, arm: str) -> str:
    return f"{cfg.hub.org}/{cfg.name}-{arm}"


def push_stage(cfg: PipelineConfig, layout: Layout, arm: str, hub: HubPublisher) -> Stage:
    def run() -> dict:
        layout.push(arm).mkdir(parents=True, exist_ok=True)
        return hub.publish(layout.publish_model(arm), repo_id(cfg, arm), log_file=layout.logs / f"push-{arm}.log")

    return Stage(f"push-{arm}", layout.push(arm), run)


def format_summary(summary: dict) -> str:
    """The printed summary: runs, saving at equal loss, eval table, where things are."""
    growth, runs = summary["growth"], summary["runs"]
    lines = [
        f"== {summary['name']}: G_{growth['operator']} (g={growth['g']}) vs scratch ==",
        f"base: d = {growth['base_tokens_d']:,} tokens, {growth['base_flops']:.3e} FLOPs",
        f"grown: {runs['grown']['tokens_after_growth']:,} tokens after growth, {runs['grown']['flops']:.3e} FLOPs "
        f"(base included), final val loss {runs['grown']['final_val_loss']:.4f}",
        f"scratch: {runs['scratch']['tokens']:,} tokens, {runs['scratch']['flops']:.3e} FLOPs, "
        f"final val loss {runs['scratch']['final_val_loss']:.4f}",
        "", "FLOPs saving at equal validation loss (sp = FLOPs_scratch / FLOPs_grown - 1):",
        summary["saving_note"] or format_savings(summary["saving_at_equal_loss"]),
        "", "Evaluation:", format_eval_table(summary["eval"]),
        "", f"plot: {summary['plot']}",
    ]
    lines += [f"{arm}: {info.get('url') or info.get('path') or info['repo_id']}" for arm, info in summary["hub"].items()]
    return "\n".join(lines)


def run_pipeline(cfg: PipelineConfig, *, log: Log = print) -> dict:
    """Run every unfinished stage, then write `summary.json` and print the summary."""
    layout = Layout(Path(cfg.output_dir).resolve())
    for stage in training_stages(cfg, layout):
        run_stage(stage, log=log)
    summary = compute_report(cfg, layout)
    summary["eval"] = {arm: json.loads(layout.eval_results(arm).read_text()) for arm in ARMS}
    for arm in ARMS:
        run_stage(publish_stage(cfg, layout, arm, summary), log=log)
    with HubPublisher(cfg.hub, layout.hub) as hub:
        for arm in ARMS:
            run_stage(push_stage(cfg, layout, arm, hub), log=log)
    summary["hub"] = {arm: json.loads((layout.push(arm) / ".done").read_text()) for arm in ARMS}
    write_json_atomic(layout.summary, summary)
    log(format_summary(summary))
    return summary
