"""The study runner: arms x seeds through the pipeline's stages, mean ± SE over seeds, skip-on-rerun."""

import json
import math
import statistics

import pytest
import yaml

from growlm.growth.speedup import LossCurve
from growlm.study.config import load_study, study_from_dict
from growlm.study.lr_grid import is_lr_grid
from growlm.study.report import common_levels, mean_se
from growlm.study.runner import StudyRunner, grown_tokens, per_token_flops
from tests.conftest import REPO_ROOT

TOY = {
    "name": "toy", "seeds": [1, 2], "launch": {"jobs": 2, "threads": 1},
    "common": {"tokenizer": "growlm/assets/tokenizer/bpe-4k", "vocab-size": 4096, "seq-len": 32,
               "global-batch-tokens": 256, "micro-batch-size": 8, "validation-blocks": 8, "eval-every": 2,
               "save-every": 100, "tensorboard": False},
    "target": {"shape": "tiny-8L", "args": {"lr": 3.0e-3, "warmup-steps": 1}},
    "scratch": {"max_tokens": 2048},
    "bases": {"b": {"shape": "tiny-2L", "max_tokens": 1024, "args": {"lr": 3.0e-3, "warmup-steps": 1}}},
    "arms": {"g4": {"base": "b", "g": 4, "args": {"warmup-steps": 0}}},
    "eval": {"seeds": "none"},  # tests/test_study_operators.py runs the evaluation stage
}


def test_mean_and_standard_error():
    entry = mean_se([0.1, 0.3, 0.2])
    assert entry["mean"] == pytest.approx(0.2) and entry["n"] == 3
    assert entry["se"] == pytest.approx(statistics.stdev([0.1, 0.3, 0.2]) / math.sqrt(3))
    assert mean_se([0.4])["se"] is None


def test_levels_end_at_the_lowest_common_loss():
    a = LossCurve.from_points([1, 2, 3, 4], [9.0, 7.0, 6.0, 5.0])
    b = LossCurve.from_points([2, 3, 4], [6.5, 5.8, 5.5])
    assert common_levels([a, b], 3) == pytest.approx([6.5 - 1 / 3, 6.5 - 2 / 3, 5.5])
    with pytest.raises(ValueError, match="share no loss range"):
        common_levels([a, LossCurve.from_points([1, 2], [4.0, 3.0])], 3)


def test_grown_arm_gets_scratch_flops_under_the_budget_count(tmp_path):
    cfg = study_from_dict({**TOY, "output_dir": str(tmp_path)})
    tokens = grown_tokens(cfg, cfg.arms["g4"])
    total = per_token_flops(cfg, "tiny-2L", "full") * 1024 + per_token_flops(cfg, "tiny-8L", "full") * tokens
    scratch = per_token_flops(cfg, "tiny-8L", "full") * 2048
    assert tokens % 256 == 0 and 0 <= scratch - total < per_token_flops(cfg, "tiny-8L", "full") * 256


def test_config_errors_name_the_problem(tmp_path):
    with pytest.raises(ValueError, match="arm 'g4' names base 'nope'"):
        study_from_dict({**TOY, "output_dir": str(tmp_path), "arms": {"g4": {"base": "nope"}}})
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['sedes'\]"):
        study_from_dict({**TOY, "output_dir": str(tmp_path), "sedes": [1]})
    with pytest.raises(ValueError, match=r"study config: arms.g4: unknown key\(s\) \['gg'\]; allowed: \['args'"):
        study_from_dict({**TOY, "output_dir": str(tmp_path), "arms": {"g4": {"base": "b", "gg": 4}}})
    with pytest.raises(ValueError, match=r"study config: seeds\[1\]: expected an integer, got 'two'"):
        study_from_dict({**TOY, "output_dir": str(tmp_path), "seeds": [1, "two"]})
    with pytest.raises(ValueError, match="does not exist"):
        load_study(tmp_path / "missing.yaml")


def test_toy_study_two_arms_two_seeds_then_rerun_skips(tmp_path, capsys):
    from growlm.cli.study import main

    config = tmp_path / "toy.yaml"
    config.write_text(yaml.safe_dump({**TOY, "output_dir": str(tmp_path / "out")}))
    assert main(["--config", str(config)]) == 0
    first = capsys.readouterr().out
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    arm = results["arms"]["g4"]
    for count in ("full", "paper"):
        assert len(arm["sp"][count]) == 4
        for level in arm["sp"][count]:
            assert level["n"] == 2
            assert level["se"] == pytest.approx(statistics.stdev(level["values"]) / math.sqrt(2))
    assert arm["sp"]["full"][-1]["level"] == pytest.approx(common_levels_of(tmp_path / "out", results))
    assert results["scratch"]["final_val_loss"]["n"] == 2
    assert arm["total_flops"]["full"] <= results["scratch"]["total_flops"]["full"]
    assert results["unigram_entropy"]["value"] > 0 and results["val_loss_se"]["value"] > 0
    assert "| depth | g4 | tiny-2L → ×4 stack | 1,024 |" in (tmp_path / "out" / "results.md").read_text()
    assert (tmp_path / "out" / "loss_vs_flops.png").read_bytes()[:4] == b"\x89PNG"
    assert "running" in first
    # Rerun: every run is finished, nothing trains again, the results are the same.
    assert main(["--config", str(config)]) == 0
    second = capsys.readouterr().out
    assert "running" not in second and "already done" in second
    assert json.loads((tmp_path / "out" / "results.json").read_text())["arms"] == results["arms"]
    # Runs copied back from a GPU machine without their weights: the report comes from the metrics alone.
    for weights in (tmp_path / "out").glob("*/*/final/*.safetensors"):
        weights.unlink()
    for cached in [tmp_path / "out" / "val_loss_se.json", *(tmp_path / "out" / "paired").glob("*.json")]:
        cached.unlink()
    assert main(["--config", str(config), "--report-only"]) == 0
    metrics_only = json.loads((tmp_path / "out" / "results.json").read_text())
    assert "val_loss_se" not in metrics_only and "val_loss_diff_se" not in metrics_only["arms"]["g4"]
    assert metrics_only["arms"]["g4"]["sp"] == results["arms"]["g4"]["sp"]


def common_levels_of(root, results) -> float:
    """The lowest loss both arms reach in every seed, read back from the runs' metrics."""
    lows = []
    for path in [*root.glob("scratch/*/metrics.jsonl"), *root.glob("grown/*/metrics.jsonl")]:
        records = [json.loads(line) for line in path.read_text().splitlines()]
        lows.append(min(r["val_loss"] for r in records if r.get("type") == "eval"))
    return max(lows)


GROWTH_STUDIES = [p for p in sorted((REPO_ROOT / "configs" / "study").glob("*.yaml")) if not is_lr_grid(p)]


@pytest.mark.parametrize("path", GROWTH_STUDIES, ids=lambda p: p.name)
def test_shipped_study_configs_load_and_fit_their_budget(path):
    cfg = load_study(path)
    for name, arm in cfg.arms.items():
        assert grown_tokens(cfg, arm) > 0, name
    runner = StudyRunner(cfg)
    for name, arm in cfg.arms.items():  # every command line parses with pretrain.py's own parser
        runner.arm_stages(name, arm, float(cfg.target.args.get("lr", 1e-3)), 1e-3, cfg.seeds[0])
    runner.scratch_stage(float(cfg.target.args.get("lr", 1e-3)), cfg.seeds[0])


def test_cpu_studies_share_every_setting_but_the_schedule():
    cosine = load_study(REPO_ROOT / "configs" / "study" / "gstack-cpu.yaml")
    wsd = load_study(REPO_ROOT / "configs" / "study" / "gstack-cpu-wsd.yaml")
    assert wsd.common == cosine.common and wsd.scratch == cosine.scratch and wsd.target.shape == cosine.target.shape
    assert {k: v for k, v in wsd.target.args.items() if k not in ("schedule", "decay-fraction", "lr")} == \
        {k: v for k, v in cosine.target.args.items() if k != "schedule"}
