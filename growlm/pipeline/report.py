"""The comparison: FLOPs bookkeeping over the runs' metrics, the plot, the saving at equal loss at several loss
levels, and the printed summary (runs, savings, eval table)."""

from __future__ import annotations

from dataclasses import asdict

from growlm.growth.speedup import SpeedupPoint, default_levels, smoothed, speedup_at_levels
from growlm.train.flops import training_flops
from growlm.pipeline.config import PipelineConfig
from growlm.pipeline.commands import pretrain_args
from growlm.pipeline.curves import (RunCurve, eval_points, full_per_token, non_embedding_params, run_curve,
                                    trained_tokens)
from growlm.pipeline.layout import ARMS, MODELS, Layout
from growlm.pipeline.plot import plot_loss_vs_flops
from growlm.train.metrics import read_metrics

EVAL_METRICS = ("acc", "acc_norm", "word_perplexity", "bits_per_byte")


def savings_at_equal_loss(scratch: RunCurve, grown: RunCurve, *, num_levels: int,
                          smoothing: float = 0.0) -> list[SpeedupPoint]:
    """sp(l) = FLOPs_scratch(l) / FLOPs_grown(l) - 1 at `num_levels` loss levels both runs reach.

    The levels are evenly spaced strictly inside the common loss range: the lowest common loss itself is met
    only by one run's last evaluation, where rounding can put it out of reach.
    """
    scratch_curve, grown_curve = scratch.curve, grown.curve
    if smoothing:
        scratch_curve = smoothed(scratch_curve, weight=smoothing)
        grown_curve = smoothed(grown_curve, weight=smoothing)
    levels = default_levels(scratch_curve, grown_curve, num_levels=num_levels + 1)[:num_levels]
    return speedup_at_levels(scratch_curve, grown_curve, levels)


def savings_records(points: list[SpeedupPoint]) -> list[dict]:
    """JSON rows: the level, both FLOPs, sp and the fraction of scratch FLOPs saved (1 - grown/scratch)."""
    return [{**asdict(p), "flops_saved": 1.0 - p.grown_flops / p.scratch_flops} for p in points]


def compute_report(cfg: PipelineConfig, layout: Layout) -> dict:
    """Curves, plot and savings from the finished runs: grown FLOPs = 6*N_base*d + 6*N_target*tokens after growth,
    scratch FLOPs = 6*N_target*tokens (non-embedding parameter counts from each model's config)."""
    base_records = read_metrics(layout.base / "metrics.jsonl")
    records = {arm: read_metrics(layout.train(arm) / "metrics.jsonl") for arm in ARMS}
    n_base = non_embedding_params(layout.final_model("base"))
    n_target = {arm: non_embedding_params(layout.final_model(arm)) for arm in ARMS}
    d = trained_tokens(base_records)
    base_flops = training_flops(n_base, d)
    base = run_curve("base (small model)", eval_points(base_records), n_ne=n_base)
    grown = run_curve(f"grown (G_{cfg.growth.operator}, g={cfg.growth.g})", eval_points(records["grown"]),
                      n_ne=n_target["grown"], offset_flops=base_flops)
    scratch = run_curve("scratch", eval_points(records["scratch"]), n_ne=n_target["scratch"])
    # The full count (every matmul, LM head and attention scores included): the one the demo's claims use.
    seq_len = {stage: pretrain_args(getattr(cfg, stage)).data.seq_len for stage in MODELS}
    full = {stage: full_per_token(layout.final_model(stage), seq_len[stage]) for stage in MODELS}
    base_flops_full = full["base"] * d
    full_curves = [run_curve("base (small model)", eval_points(base_records), per_token=full["base"]),
                   run_curve(grown.label, eval_points(records["grown"]), per_token=full["grown"],
                             offset_flops=base_flops_full),
                   run_curve("scratch", eval_points(records["scratch"]), per_token=full["scratch"])]
    plot_loss_vs_flops(full_curves, layout.plot, growth_flops=base_flops_full,
                       title=f"{cfg.name}: validation loss vs training FLOPs (full count)")
    savings, savings_full, saving_note = [], [], None
    try:
        savings = savings_records(savings_at_equal_loss(scratch, grown, num_levels=cfg.report.loss_levels,
                                                        smoothing=cfg.report.smoothing))
        savings_full = savings_records(savings_at_equal_loss(full_curves[2], full_curves[1],
                                                             num_levels=cfg.report.loss_levels,
                                                             smoothing=cfg.report.smoothing))
    except ValueError as err:  # e.g. runs too short to share a loss range: say so, keep publishing
        saving_note = f"saving at equal loss not computable: {err}"
    tokens = {arm: trained_tokens(records[arm]) for arm in ARMS}
    offsets = {"grown": (d, base_flops), "scratch": (0, 0.0)}
    return {
        "name": cfg.name,
        "flops_convention": "6 * non_embedding_params * tokens; the grown run includes the base model's FLOPs",
        "flops_full_per_token": full,
        "growth": {"operator": cfg.growth.operator, "g": cfg.growth.g, "base_tokens_d": d,
                   "base_non_embedding_params": n_base, "base_flops": base_flops},
        "runs": {arm: {"tokens": tokens[arm], "total_tokens": offsets[arm][0] + tokens[arm],
                       "non_embedding_params": n_target[arm],
                       "flops": offsets[arm][1] + training_flops(n_target[arm], tokens[arm]),
                       "final_val_loss": curve.curve.loss[-1]}
                 for arm, curve in (("grown", grown), ("scratch", scratch))},
        "saving_at_equal_loss": savings,
        "saving_at_equal_loss_full": savings_full,
        "saving_note": saving_note,
        "curves": {c.label: {"tokens": list(c.tokens), "flops": list(c.curve.flops), "val_loss": list(c.curve.loss)}
                   for c in (base, grown, scratch)},
        "plot": str(layout.plot),
    }


def format_savings(rows: list[dict]) -> str:
    """A text table of the saving at equal loss."""
    lines = [f"{'val loss':>9} {'scratch FLOPs':>14} {'grown FLOPs':>12} {'speedup sp':>11} {'FLOPs saved':>12}"]
    for row in rows:
        lines.append(f"{row['level']:>9.4f} {row['scratch_flops']:>14.3e} {row['grown_flops']:>12.3e} "
                     f"{row['speedup']:>+11.1%} {row['flops_saved']:>12.1%}")
    return "\n".join(lines)


def _cell(entry: dict, metric: str) -> str:
    if metric not in entry:
        return "-"
    se = entry.get(f"{metric}_se")
    return f"{entry[metric]:.4f} ± {se:.4f}" if se is not None else f"{entry[metric]:.4f}"


def format_eval_table(results: dict[str, dict]) -> str:
    """Task/metric rows, one column per model, from `eval_results.json` records keyed by model label."""
    labels = list(results)
    tasks = sorted({task for record in results.values() for task in record.get("tasks", {})})
    rows = [("task", "metric", *labels)]
    for task in tasks:
        entries = [results[label].get("tasks", {}).get(task, {}) for label in labels]
        for metric in EVAL_METRICS:
            if any(metric in entry for entry in entries):
                rows.append((task, metric, *(_cell(entry, metric) for entry in entries)))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows)


def format_summary(summary: dict) -> str:
    """The printed summary: the runs, the saving at equal loss, the eval table, where the outputs are."""
    growth, runs = summary["growth"], summary["runs"]
    lines = [
        f"== {summary['name']}: G_{growth['operator']} (g={growth['g']}) vs scratch ==",
        f"base:    d = {growth['base_tokens_d']:,} tokens, {growth['base_flops']:.3e} FLOPs",
        f"grown:   {runs['grown']['tokens']:,} tokens after growth, {runs['grown']['flops']:.3e} FLOPs "
        f"(base included), final val loss {runs['grown']['final_val_loss']:.4f}",
        f"scratch: {runs['scratch']['tokens']:,} tokens, {runs['scratch']['flops']:.3e} FLOPs, "
        f"final val loss {runs['scratch']['final_val_loss']:.4f}",
        "", "FLOPs saving at equal validation loss (sp = FLOPs_scratch / FLOPs_grown - 1, base FLOPs included),",
        "full count (every matmul: projections, attention scores, MLP, LM head):",
        summary["saving_note"] or format_savings(summary["saving_at_equal_loss_full"]),
        "", "the paper's count (6 * non-embedding params * tokens):",
        summary["saving_note"] or format_savings(summary["saving_at_equal_loss"]),
        "", "Evaluation:", format_eval_table(summary["eval"]),
        "", f"plot: {summary['plot']}",
    ]
    for arm, info in summary["hub"].items():
        where = f"copied to {info['path']}" if "path" in info else f"commit {info['commit'][:12]} at {info['url']}"
        lines.append(f"{arm} model: {info['repo_id']} ({where})")
    return "\n".join(lines)
