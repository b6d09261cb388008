"""The LR grid study: shapes x parametrizations x LRs through the real runner, its argmin and report."""

import json

import pytest
import yaml

from growlm.study.lr_grid import best_lr, grid_stages, is_lr_grid, load_lr_grid
from tests.conftest import REPO_ROOT

TOY = {
    "name": "toy-grid", "launch": {"jobs": 2, "threads": 1},
    "common": {"tokenizer": "growlm/assets/tokenizer/bpe-4k", "vocab-size": 4096, "seq-len": 32,
               "global-batch-tokens": 256, "micro-batch-size": 8, "validation-blocks": 8, "eval-every": 0,
               "save-every": 100, "tensorboard": False},
    "lr_grid": {"shapes": ["tiny-2L", "tiny-8L"], "lrs": [3.0e-2, 3.0e-3], "max_tokens": 512,
                "args": {"warmup-steps": 1},
                "parametrizations": {"completep": {"parametrization": "completep", "base-width": 64,
                                                   "base-depth": 2}}},
}


def points(losses):
    return [{"lr": 2.0 ** k, "final_val_loss": {"mean": loss}} for k, loss in enumerate(losses)]


def test_best_lr_is_the_argmin_with_the_parabola_vertex_inside_the_grid():
    best = best_lr(points([5.0, 4.25, 4.0, 4.25, 5.0]))  # (x - 2)^2 / 4 + 4 in log2(lr)
    assert best["lr"] == 4.0 and best["index"] == 2 and not best["at_edge"]
    assert best["vertex_lr"] == pytest.approx(4.0)
    assert best_lr(points([4.5, 4.0, 4.25]))["vertex_lr"] == pytest.approx(2 ** (7 / 6))  # 0.375x^2 - 0.875x + 4.5
    edge = best_lr(points([5.0, 4.5, 4.0]))
    assert edge["at_edge"] and edge["lr"] == 4.0 and edge["vertex_lr"] is None


def test_grid_config_errors_name_the_problem(tmp_path):
    def load(**grid):
        path = tmp_path / "grid.yaml"
        path.write_text(yaml.safe_dump({**TOY, "output_dir": str(tmp_path), "lr_grid": {**TOY["lr_grid"], **grid}}))
        return load_lr_grid(path)

    with pytest.raises(ValueError, match="sets \\['lr'\\]"):
        load(parametrizations={"sp": {"lr": 1e-3}})
    with pytest.raises(ValueError, match="distinct shapes"):
        load(shapes=["tiny-2L", "huge-99L"])
    with pytest.raises(ValueError, match=">= 2 distinct positive"):
        load(lrs=[1e-3])
    assert load().lr_grid.lrs == [3.0e-3, 3.0e-2]


def test_toy_grid_runs_every_point_reports_and_reruns_nothing(tmp_path, capsys):
    from growlm.cli.study import main

    config = tmp_path / "grid.yaml"
    config.write_text(yaml.safe_dump({**TOY, "output_dir": str(tmp_path / "out")}))
    assert main(["--config", str(config)]) == 0
    assert "running" in capsys.readouterr().out
    out = tmp_path / "out"
    results = json.loads((out / "results.json").read_text())
    for name in ("completep",):
        for shape in ("tiny-2L", "tiny-8L"):
            curve = results["curves"][name][shape]
            assert curve["complete"] and [p["lr"] for p in curve["points"]] == [3.0e-3, 3.0e-2]
            losses = {p["lr"]: p["final_val_loss"]["mean"] for p in curve["points"]}
            for lr, loss in losses.items():  # the reported loss is the run's own last validation loss
                run = out / "runs" / f"{name}-{shape}-lr{lr:g}-t512-s1"
                evals = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
                assert loss == [r["val_loss"] for r in evals if r.get("type") == "eval"][-1]
                # the parametrization's flags reached pretrain: the run saved its CompleteP multipliers
                assert json.loads((run / "final" / "parameterization.json").read_text())["base_depth"] == 2
            assert curve["best"]["lr"] == min(losses, key=losses.get)
        optimum = results["optimum"][name]
        indices = {shape: [3.0e-3, 3.0e-2].index(lr) for shape, lr in optimum["best_lr"].items()}
        assert optimum["grid_steps_moved"] == max(indices.values()) - min(indices.values())
        assert optimum["any_at_edge"]  # two LRs: every argmin is on an edge
    table = (out / "results.md").read_text()
    assert "| lr | completep tiny-2L | completep tiny-8L |" in table
    assert table.count("**") == 2 * 2 + 2  # one bold cell per curve, one bold verdict per parametrization
    assert (out / "lr_grid.png").read_bytes()[:4] == b"\x89PNG"
    # Rerun: nothing trains again and the report is the same.
    assert main(["--config", str(config)]) == 0
    second = capsys.readouterr().out
    assert "running" not in second and "already done" in second
    assert json.loads((out / "results.json").read_text())["curves"] == results["curves"]


@pytest.mark.parametrize("path", [p for p in sorted((REPO_ROOT / "configs" / "study").glob("*.yaml")) if is_lr_grid(p)],
                         ids=lambda p: p.name)
def test_shipped_lr_grids_load_and_parse(path):
    cfg = load_lr_grid(path)
    grid = cfg.lr_grid
    stages = grid_stages(cfg, grid.seeds)  # every command line parses with pretrain.py's own parser
    assert len(stages) == len(grid.shapes) * len(grid.lrs) * len(grid.parametrizations) * len(grid.seeds)
