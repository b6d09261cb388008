"""The card and push stages: a publishable copy of each final model (card, eval results, plot), then the push.

The base is published too, and the grown card names it as `base_model`, so the Hub's model tree links the two.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from growlm.atomic import atomic_dir
from growlm.cards import write_model_card
from growlm.pipeline.config import PipelineConfig
from growlm.pipeline.layout import ARMS, Layout
from growlm.pipeline.publisher import HubPublisher
from growlm.pipeline.stages import Stage


def repo_id(cfg: PipelineConfig, arm: str) -> str:
    """`<hub.org>/<name>-<arm>`, e.g. `growlm-demo/demo-grown` (or `-base`, `-scratch`)."""
    return f"{cfg.hub.org}/{cfg.name}-{arm}"


def training_record(model_dir: Path, run: dict) -> dict:
    """The card's training record: pretrain's `training.json` (if any) with the pipeline's token/FLOPs counts."""
    path = model_dir / "training.json"
    record = json.loads(path.read_text()) if path.is_file() else {}
    return {**record, "tokens": run["tokens"], "total_tokens": run["total_tokens"], "flops": run["flops"]}


def card_stage(cfg: PipelineConfig, layout: Layout, arm: str, report: dict) -> Stage:
    """Copy the final model with the plot (and an arm's eval results) into `publish/<arm>/model/` and write its
    card; the base, not evaluated, keeps its own training record."""
    def run() -> dict:
        src, dst = layout.final_model(arm), layout.publish_model(arm)
        compared, grown = arm in ARMS, arm == "grown"
        with atomic_dir(dst) as tmp:
            shutil.copytree(src, tmp, dirs_exist_ok=True)
            if compared:
                shutil.copy(layout.eval_results(arm), tmp / "eval_results.json")
            shutil.copy(layout.plot, tmp / layout.plot.name)
            growth = json.loads((layout.grow / "growth.json").read_text()) if grown else None
            training = training_record(src, report["runs"][arm]) if compared else None  # None: its training.json
            write_model_card(tmp, growth=growth, training=training, repo_id=repo_id(cfg, arm),
                             base_model=repo_id(cfg, "base") if grown else None, loss_curve=layout.plot.name)
        return {"model": str(dst)}

    return Stage(f"card-{arm}", layout.publish(arm), run)


def push_stage(cfg: PipelineConfig, layout: Layout, arm: str, hub: HubPublisher) -> Stage:
    """Publish `publish/<arm>/model/` as `repo_id(cfg, arm)`."""
    def run() -> dict:
        layout.push(arm).mkdir(parents=True, exist_ok=True)
        return hub.publish(layout.publish_model(arm), repo_id(cfg, arm), log_file=layout.logs / f"push-{arm}.log")

    return Stage(f"push-{arm}", layout.push(arm), run)
