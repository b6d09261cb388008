"""The pipeline: config loading, FLOPs bookkeeping, the plot and summary, the stage runner, and a short end-to-end
run (tiny shapes, a few steps per stage) that re-runs without redoing any stage."""

from __future__ import annotations

import json
import math
import sys
import uuid
from pathlib import Path

import pytest
from huggingface_hub import ModelCard

from growlm.growth.speedup import LossCurve
from growlm.modeling import count_parameters, llama_config
from growlm.pipeline.config import config_from_dict, load_config
from growlm.pipeline.curves import RunCurve, eval_points, run_curve, trained_tokens
from growlm.pipeline.layout import Layout
from growlm.pipeline.report import (compute_report, format_eval_table, format_savings, savings_at_equal_loss,
                                    savings_records)
from growlm.pipeline.stages import Stage, is_done, run_command, run_stage
from growlm.train.flops import training_flops

REPO_ROOT = Path(__file__).resolve().parents[1]
PIPELINE_CONFIGS = sorted((REPO_ROOT / "configs" / "pipeline").glob("*.yaml"))


def minimal_config(**overrides) -> dict:
    data = {"name": "t", "output_dir": "out", "base": {"max_steps": 2}, "grown": {"max_steps": 2},
            "scratch": {"max_steps": 2}}
    data.update(overrides)
    return data


# ---- config ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", PIPELINE_CONFIGS, ids=lambda p: p.stem)
def test_shipped_configs_load(path):
    cfg = load_config(path)
    assert cfg.growth.g == 4 and cfg.growth.operator == "stack"
    assert cfg.base.max_tokens and cfg.grown.max_tokens and cfg.scratch.max_tokens


def test_paper_configs_follow_the_spec():
    """d = 10B at lr 1e-3, D per training.md §6, target LRs per §5, FSDP2 through accelerate, equal FLOPs budget."""
    expected = {"410M": (750e9, 6e-4), "1.1B": (97.5e9, 3e-4), "3B": (300e9, 1.6e-4), "7B": (300e9, 1e-4)}
    for name, (tokens, lr) in expected.items():
        cfg = load_config(REPO_ROOT / "configs" / "pipeline" / f"{name}.yaml")
        assert cfg.base.max_tokens == 10_000_000_000 and float(cfg.base.args["lr"]) == 1e-3
        assert cfg.grown.max_tokens == tokens and float(cfg.grown.args["lr"]) == lr
        assert float(cfg.scratch.args["lr"]) == lr and cfg.scratch.args["shape"] == name
        assert cfg.scratch.max_tokens == tokens + cfg.base.max_tokens / cfg.growth.g
        assert "fsdp2" in cfg.launch.accelerate_config


@pytest.mark.parametrize("path", PIPELINE_CONFIGS, ids=lambda p: p.stem)
def test_shipped_configs_give_valid_pretrain_commands(path, tmp_path):
    """Every training stage's flags parse with scripts/pretrain.py's own parser, budget and LR as configured."""
    from growlm.pipeline.commands import pretrain_command
    from growlm.train.config import parse_args

    cfg = load_config(path)
    for stage, init_from in ((cfg.base, None), (cfg.grown, tmp_path / "grow"), (cfg.scratch, None)):
        command = pretrain_command(stage, output_dir=tmp_path / "run", seed=cfg.seed, launch=cfg.launch,
                                   init_from=init_from, data_from=init_from and tmp_path / "base-final")
        script_index = command.index("growlm.cli.pretrain")
        parsed = parse_args(command[script_index + 1:])
        assert parsed.train.max_tokens == stage.max_tokens and parsed.optim.lr == float(stage.args["lr"])
        assert parsed.checkpoint.resume == "auto" and parsed.checkpoint.init_from == (init_from and str(init_from))
        assert parsed.checkpoint.data_from == (init_from and str(tmp_path / "base-final"))


def test_demo_config_has_an_equal_flops_budget_under_the_full_count():
    from growlm.pipeline.commands import pretrain_args
    from growlm.train.flops import flops_per_token

    cfg = load_config(REPO_ROOT / "configs" / "pipeline" / "demo.yaml")
    assert cfg.launch.accelerate_config is None and cfg.hub.kind == "server"
    shapes = {stage: llama_config(cfg_stage.args["shape"], vocab_size=pretrain_args(cfg_stage).model.vocab_size)
              for stage, cfg_stage in (("base", cfg.base), ("scratch", cfg.scratch))}
    assert shapes["base"].num_hidden_layers * cfg.growth.g == shapes["scratch"].num_hidden_layers
    seq_len, batch = pretrain_args(cfg.scratch).data.seq_len, pretrain_args(cfg.scratch).train.global_batch_tokens
    base, target = (flops_per_token(shapes[s], seq_len, "full") for s in ("base", "scratch"))
    grown_total = base * cfg.base.max_tokens + target * cfg.grown.max_tokens
    assert 0 <= target * cfg.scratch.max_tokens - grown_total < target * batch
    assert {k: v for k, v in cfg.grown.args.items() if k != "warmup-steps"} == {
        k: v for k, v in cfg.scratch.args.items() if k not in ("warmup-steps", "shape")}  # one target recipe


@pytest.mark.parametrize("data, message", [
    (minimal_config(extra=1), "unknown key"),
    (minimal_config(hub={"kind": "ftp"}), "hub.kind"),
    (minimal_config(growth={"g": 1}), "growth.g"),
    (minimal_config(base={"max_steps": 2, "max_tokens": 10}), "exactly one of max_tokens or max_steps"),
    (minimal_config(base={"max_steps": 2, "step": 3}), "base: unknown key"),
    (minimal_config(report={"smoothing": 1.5}), "EMA weight"),
    (minimal_config(growth={"operator": "split"}), "growlm-stack arguments.*--operator: invalid choice: 'split'"),
])
def test_bad_config_is_a_clear_error(data, message):
    with pytest.raises(ValueError, match=message):
        config_from_dict(data)


def test_bad_pretrain_flag_fails_before_any_stage_runs(tmp_path):
    from growlm.pipeline.run import training_stages

    cfg = config_from_dict(minimal_config(output_dir=str(tmp_path), scratch={"max_steps": 2, "args": {"lrr": 1}}))
    with pytest.raises(ValueError, match="(?s)invalid pretrain arguments.*lrr"):
        training_stages(cfg, Layout(tmp_path))
    assert not any(tmp_path.iterdir())


def test_config_file_errors_name_the_file_the_key_and_the_allowed_keys(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("name: t\noutput_dir: out\nbase: {max_steps: 2}\ngrown: {max_steps: 2}\n"
                    "scratch: {max_tokens: 1e6}\nhub: {kind: dir, orgs: x}\n")
    with pytest.raises(ValueError, match=r"p.yaml: hub: unknown key\(s\) \['orgs'\]; allowed: \['kind', 'org'"):
        load_config(path)
    path.write_text(path.read_text().replace("orgs", "org").replace("max_steps: 2}\ngrown", "max_steps: two}\ngrown"))
    with pytest.raises(ValueError, match=r"p.yaml: base.max_steps: expected an integer, got 'two'"):
        load_config(path)
    path.write_text(path.read_text().replace("two", "2"))
    assert load_config(path).scratch.max_tokens == 1_000_000  # YAML reads 1e6 as text; the loader types it
    with pytest.raises(ValueError, match=r"pipeline config: missing key\(s\) \['name'\]"):
        config_from_dict({k: v for k, v in minimal_config().items() if k != "name"})


def test_missing_config_file_names_the_fix(tmp_path):
    with pytest.raises(ValueError, match="configs/pipeline"):
        load_config(tmp_path / "nope.yaml")


# ---- FLOPs bookkeeping, report, plot -----------------------------------------------------------------------------


def test_grown_curve_includes_the_base_models_flops():
    n_base, n_target, d = 1_000, 4_000, 500
    base_flops = training_flops(n_base, d)
    grown = run_curve("grown", [(0, 5.0), (100, 4.0)], n_ne=n_target, offset_flops=base_flops)
    scratch = run_curve("scratch", [(0, 9.0), (100, 6.0)], n_ne=n_target)
    assert grown.curve.flops == (6 * n_base * d, 6 * n_base * d + 6 * n_target * 100)
    assert scratch.curve.flops == (0.0, 6 * n_target * 100)
    assert grown.tokens == (0, 100)


def test_eval_points_and_tokens_from_metrics():
    records = [{"type": "eval", "step": 0, "tokens": 0, "val_loss": 9.0},
               {"step": 1, "tokens": 64, "loss": 8.0}, {"step": 2, "tokens": 128, "loss": 7.0},
               {"type": "eval", "step": 2, "tokens": 128, "val_loss": 7.5}]
    assert eval_points(records) == [(0, 9.0), (128, 7.5)]
    assert trained_tokens(records) == 128
    with pytest.raises(ValueError, match="eval record"):
        eval_points(records[1:])


def test_saving_at_equal_loss_recovers_a_known_speedup():
    """Scratch L(F) = 3 F^-0.05; the grown run reaches at F the loss scratch reaches at 1.5 F: sp = 0.5 everywhere."""
    scratch_flops = [10.0 ** (k / 4) for k in range(40, 81)]

    def loss(flops: float) -> float:
        return 3 * flops ** -0.05

    scratch = RunCurve("scratch", tuple(range(len(scratch_flops))), LossCurve.from_points(
        scratch_flops, [loss(f) for f in scratch_flops]))
    grown_flops = [f / 1.5 for f in scratch_flops]
    grown = RunCurve("grown", scratch.tokens, LossCurve.from_points(grown_flops, [loss(1.5 * f) for f in grown_flops]))
    rows = savings_records(savings_at_equal_loss(scratch, grown, num_levels=4))
    assert len(rows) == 4
    for row in rows:
        assert row["speedup"] == pytest.approx(0.5, rel=1e-3)
        assert row["flops_saved"] == pytest.approx(1 / 3, rel=1e-3)
    assert "+50.0%" in format_savings(rows)


def test_eval_table_has_one_column_per_model():
    results = {"grown": {"tasks": {"mc": {"acc": 0.5, "acc_se": 0.05}, "ppl": {"word_perplexity": 12.0}}},
               "scratch": {"tasks": {"mc": {"acc": 0.25, "acc_se": 0.04}}}}
    table = format_eval_table(results).splitlines()
    assert table[0].split() == ["task", "metric", "grown", "scratch"]
    assert "0.5000 ± 0.0500" in table[1] and "0.2500 ± 0.0400" in table[1]
    assert table[2].split() == ["ppl", "word_perplexity", "12.0000", "-"]


def _fake_run(directory: Path, shape: str, points: list[tuple[int, float]], tokens_per_step: int) -> None:
    """A finished training stage: metrics.jsonl with step and eval records, and final/config.json."""
    directory.mkdir(parents=True)
    llama_config(shape).save_pretrained(directory / "final")
    records = []
    for step in range(1, points[-1][0] // tokens_per_step + 1):
        records.append({"step": step, "tokens": step * tokens_per_step, "loss": 1.0})
    records += [{"type": "eval", "step": t // tokens_per_step, "tokens": t, "val_loss": v} for t, v in points]
    (directory / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def test_report_bookkeeping_plot_and_saving(tmp_path):
    layout = Layout(tmp_path)
    _fake_run(layout.base, "tiny-2L", [(0, 10.0), (400, 8.0), (800, 7.0)], 100)
    _fake_run(layout.train("grown"), "tiny-8L", [(0, 7.5), (800, 6.0), (1600, 5.5)], 100)
    _fake_run(layout.train("scratch"), "tiny-8L", [(0, 10.0), (800, 7.5), (1600, 6.5), (2000, 5.8)], 100)
    cfg = config_from_dict(minimal_config(output_dir=str(tmp_path), report={"loss_levels": 3}))
    report = compute_report(cfg, layout)

    n_base = count_parameters(llama_config("tiny-2L"))["non_embedding"]
    n_target = count_parameters(llama_config("tiny-8L"))["non_embedding"]
    base_flops = 6 * n_base * 800
    assert report["growth"]["base_tokens_d"] == 800 and report["growth"]["base_flops"] == base_flops
    grown_curve = report["curves"]["grown (G_stack, g=4)"]
    assert grown_curve["flops"] == [base_flops + 6 * n_target * t for t in (0, 800, 1600)]
    assert report["runs"]["scratch"]["flops"] == 6 * n_target * 2000
    assert report["runs"]["grown"]["total_tokens"] == 800 + 1600
    rows = report["saving_at_equal_loss"]
    assert len(rows) == 3 and all(math.isfinite(r["speedup"]) and r["speedup"] > 0 for r in rows)
    assert layout.plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(tmp_path.glob(".*tmp*"))


# ---- stage runner ------------------------------------------------------------------------------------------------


def test_finished_stage_is_skipped_on_rerun(tmp_path):
    calls = []
    stage = Stage("s", tmp_path / "s", lambda: calls.append(1) or {"out": "x"})
    assert run_stage(stage, log=lambda _: None) is True
    assert run_stage(stage, log=lambda _: None) is False
    assert calls == [1]
    assert json.loads((tmp_path / "s" / ".done").read_text())["out"] == "x"


def test_failed_command_leaves_no_marker_and_shows_the_log(tmp_path):
    command = [sys.executable, "-c", "import sys; print('boom happened'); sys.exit(3)"]
    stage = Stage("bad", tmp_path / "bad", lambda: run_command(command, log_file=tmp_path / "bad.log"))
    with pytest.raises(SystemExit, match="(?s)exit code 3.*boom happened"):
        run_stage(stage, log=lambda _: None)
    assert not is_done(tmp_path / "bad")


# ---- CLI and the whole pipeline ----------------------------------------------------------------------------------


def test_dry_run_launches_paper_configs_through_accelerate(tmp_path, capsys):
    from growlm.pipeline.cli import main

    main(["--config", str(REPO_ROOT / "configs" / "pipeline" / "1.1B.yaml"), "--output-dir", str(tmp_path),
          "--dry-run"])
    out = capsys.readouterr().out
    train_lines = [line for line in out.splitlines() if "-m growlm.cli.pretrain" in line]
    assert len(train_lines) == 3
    assert all("-m accelerate.commands.launch --config_file" in line and "fsdp2" in line for line in train_lines)
    assert "--init-from " + str(tmp_path / "grow") in train_lines[1]
    assert "--shape 1.1B" in train_lines[2] and "--max-tokens 100000000000" in train_lines[2]
    assert "-m growlm.cli.stack" in out and "--g 4" in out and "--tasks paper" in out
    assert not any(tmp_path.iterdir())


TINY_TRAIN = {"seq-len": 32, "global-batch-tokens": 256, "micro-batch-size": 8, "lr": 5.0e-3, "warmup-steps": 1,
              "eval-every": 2, "save-every": 4, "validation-blocks": 4, "tensorboard": False}


def tiny_pipeline_config(output_dir: Path) -> dict:
    """A shortened pipeline: tiny-2L -> tiny-8L, a few steps per stage, the local Hub server."""
    return {
        "name": "tiny", "output_dir": str(output_dir), "seed": 3,
        "launch": {"jobs": 2, "threads": 1},  # scratch runs beside base -> grow -> grown
        "base": {"max_steps": 6, "args": {"shape": "tiny-2L", **TINY_TRAIN}},
        "growth": {"g": 4, "operator": "stack"},
        "grown": {"max_steps": 4, "args": TINY_TRAIN},
        "scratch": {"max_steps": 8, "args": {"shape": "tiny-8L", **TINY_TRAIN}},
        "eval": {"tasks": "offline", "args": {"limit": 4, "batch-size": 4}},
        "hub": {"kind": "server", "org": "growlm-test"},
        "report": {"loss_levels": 2},
    }


@pytest.mark.slow
def test_pipeline_end_to_end_then_rerun_skips_every_stage(tmp_path):
    from growlm.pipeline.run import run_pipeline

    out = tmp_path / "run"
    cfg = config_from_dict(tiny_pipeline_config(out))
    lines: list[str] = []
    summary = run_pipeline(cfg, log=lines.append)

    layout = Layout(out)
    models = ("base", "grown", "scratch")  # all three are published, the base first
    stage_dirs = [layout.base, layout.grow, layout.train("grown"), layout.train("scratch"), layout.eval("grown"),
                  layout.eval("scratch"), *(layout.publish(m) for m in models), *(layout.push(m) for m in models)]
    assert all(is_done(d) for d in stage_dirs)
    assert (layout.grow / "growth.json").is_file()
    for arm in models:
        model = layout.publish_model(arm)
        assert {"config.json", "README.md", "loss_vs_flops.png"} <= {p.name for p in model.iterdir()}
        assert (model / "eval_results.json").is_file() == (arm != "base")  # the base is not evaluated
        assert "loss_vs_flops.png" in (model / "README.md").read_text()
        assert summary["hub"][arm]["repo_id"] == f"growlm-test/tiny-{arm}"
        assert len(summary["hub"][arm]["commit"]) == 40  # the local Hub server's commit sha
    assert list(summary["hub"]) == list(models)
    assert ModelCard.load(layout.publish_model("grown") / "README.md").data.base_model == "growlm-test/tiny-base"
    assert layout.plot.read_bytes()[:4] == b"\x89PNG"
    on_disk = json.loads(layout.summary.read_text())
    assert on_disk["saving_at_equal_loss"] and on_disk["saving_note"] is None
    assert all(math.isfinite(row["speedup"]) for row in on_disk["saving_at_equal_loss"])
    full = on_disk["flops_full_per_token"]  # the full count, printed first: every matmul incl. the LM head
    assert full["grown"] == full["scratch"] > full["base"] > 6 * count_parameters(llama_config("tiny-2L"))["non_embedding"]
    assert len(on_disk["saving_at_equal_loss_full"]) == 2
    assert on_disk["runs"]["grown"]["total_tokens"] == 6 * 256 + 4 * 256
    assert on_disk["runs"]["grown"]["tokens"] == 4 * 256 and on_disk["runs"]["scratch"]["tokens"] == 8 * 256
    assert any(line.startswith("FLOPs saving at equal validation loss") for line in "\n".join(lines).splitlines())

    reruns: list[str] = []
    assert run_pipeline(cfg, log=reruns.append)["saving_at_equal_loss"] == on_disk["saving_at_equal_loss"]
    ran = [line for line in reruns if line.startswith("[") and "running" in line]
    assert ran == [] and sum("skipping" in line for line in reruns) == len(stage_dirs)


def test_published_grown_card_names_the_published_base_on_the_hub(hub_server, tmp_path):
    """The card and push stages of base and grown, pushed to a Hub (the local server through HF_ENDPOINT/HF_TOKEN):
    the grown card read back from the Hub names the base as `base_model` and carries the eval results."""
    from huggingface_hub.repocard_data import model_index_to_eval_results

    from growlm.pipeline.publish import card_stage, push_stage, repo_id
    from growlm.pipeline.publisher import HubPublisher
    from tests.conftest import save_tiny_llama

    layout = Layout(tmp_path)
    save_tiny_llama(layout.final_model("base"))
    save_tiny_llama(layout.final_model("grown"), layers=6)
    layout.grow.mkdir()
    (layout.grow / "growth.json").write_text(json.dumps(
        {"source": str(layout.final_model("base")), "operator": "G_stack", "g": 2, "layer_map": [0, 1, 2] * 2}))
    layout.eval("grown").mkdir(parents=True)
    results = {"harness_version": "0.4.13", "tasks": {"mc": {"n": 40, "acc": 0.3, "acc_se": 0.07}}}
    layout.eval_results("grown").write_text(json.dumps(results))
    layout.plot.write_bytes(b"\x89PNG\r\n\x1a\n")
    report = {"runs": {"grown": {"tokens": 1024, "total_tokens": 2560, "flops": 1.0e12}}}
    name = f"card-{uuid.uuid4().hex[:8]}"  # the server is shared by the session
    cfg = config_from_dict(minimal_config(name=name, output_dir=str(tmp_path),
                                          hub={"kind": "remote", "org": "growlm-test"}))
    with HubPublisher(cfg.hub, layout.hub) as hub:
        for model in ("base", "grown"):
            run_stage(card_stage(cfg, layout, model, report), log=lambda _: None)
            run_stage(push_stage(cfg, layout, model, hub), log=lambda _: None)

    grown = ModelCard.load(repo_id(cfg, "grown")).data.to_dict()
    assert grown["base_model"] == f"growlm-test/{name}-base" and grown["base_model_relation"] == "finetune"
    model_name, evals = model_index_to_eval_results(grown["model-index"])
    assert model_name == f"{name}-grown"
    assert [(r.dataset_name, r.metric_type, r.metric_value) for r in evals] == [("mc", "acc", 0.3)]
    base = ModelCard.load(f"growlm-test/{name}-base")
    assert "base_model" not in base.data.to_dict() and "model-index" not in base.data.to_dict()
    assert "pretrained from scratch" in base.text and "Not evaluated yet." in base.text


def test_dir_hub_copies_the_folder_under_org_and_name(tmp_path):
    from growlm.pipeline.config import HubConfig
    from growlm.pipeline.publisher import HubPublisher

    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    with HubPublisher(HubConfig(kind="dir", org="org"), tmp_path / "hub") as hub:
        record = hub.publish(folder, "org/name", log_file=tmp_path / "push.log")
        hub.publish(folder, "org/name", log_file=tmp_path / "push.log")  # a re-push replaces the copy
    assert record == {"repo_id": "org/name", "path": str(tmp_path / "hub" / "org" / "name")}
    assert sorted(p.name for p in (tmp_path / "hub" / "org").iterdir()) == ["name"]
    assert (tmp_path / "hub" / "org" / "name" / "config.json").read_text() == "{}"


def test_cli_reports_a_bad_config_in_one_line(tmp_path, capsys):
    from growlm.pipeline.cli import main

    path = tmp_path / "bad.yaml"
    path.write_text("name: x\noutput_dir: out\nbase: {max_steps: 1}\ngrown: {max_steps: 1}\n")
    assert main(["--config", str(path), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "scratch" in err and err.count("\n") == 1
