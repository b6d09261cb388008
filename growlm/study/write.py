"""Write a study's outputs: `results.json`, `results.md`, `loss_vs_flops.png` (each replaced atomically)."""

from __future__ import annotations

import functools
import json
from pathlib import Path

from growlm.atomic import write_json, write_text
from growlm.study.config import StudyConfig
from growlm.study.measure import has_weights, paired_difference_se, study_blocks, unigram_entropy, validation_loss_se
from growlm.study.plot import plot_study
from growlm.study.report import compute_results, format_table
from growlm.study.runner import StudyLayout, resolved, run_args


def _cached(path: Path, key: dict, compute) -> dict:
    """`compute()` once per `key` (e.g. the tokenizer and data), kept in `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_file():
        stored = json.loads(path.read_text())
        if stored.get("key") == key:
            return stored["result"]
    result = compute()
    write_json(path, {"key": key, "result": result}, sort_keys=True)
    return result


def write_report(cfg: StudyConfig, chosen: dict) -> dict:
    layout = StudyLayout(Path(cfg.output_dir).resolve())
    layout.root.mkdir(parents=True, exist_ok=True)
    results = compute_results(cfg, chosen)
    data = resolved(run_args(cfg)).data
    key = {"tokenizer": data.tokenizer, "source": data.source, "exclude_sets": data.exclude_sets}
    blocks = functools.cache(lambda: study_blocks(data))  # built once, and only if a measurement is not cached
    results["unigram_entropy"] = _cached(layout.root / "unigram.json", key,
                                         lambda: {"value": unigram_entropy(data)})
    scratch_dir = layout.scratch(chosen["target"]["lr"], cfg.scratch.max_tokens, cfg.seeds[0])
    if has_weights(scratch_dir / "final"):
        results["val_loss_se"] = _cached(layout.root / "val_loss_se.json",
                                         {**key, "blocks": data.validation_blocks, "model": str(scratch_dir)},
                                         lambda: validation_loss_se(scratch_dir / "final", blocks()))
    for name, arm in results["arms"].items():
        arm["gap_below_unigram"] = results["unigram_entropy"]["value"] - arm["final_val_loss"]["mean"]
        grown, scratch = Path(arm["runs"][0]) / "final", Path(arm["scratch_runs"][0]) / "final"
        models = [str(grown), str(scratch)]
        if not (has_weights(grown) and has_weights(scratch)):
            continue  # the weights were not kept: the paired standard error needs both models
        arm["val_loss_diff_se"] = _cached(layout.root / "paired" / f"{name}.json",
                                          {**key, "blocks": data.validation_blocks, "models": models},
                                          lambda: paired_difference_se(grown, scratch, blocks()))
    write_json(layout.results, results, sort_keys=True)
    write_text(layout.table, format_table(results))
    if results["curves"]:
        series = [{"label": label, **curve} for label, curve in results["curves"].items()]
        plot_study(series, layout.plot, title=f"{cfg.name}: validation loss vs FLOPs (bands: min-max over seeds)",
                   unigram=results["unigram_entropy"]["value"])
    return results
