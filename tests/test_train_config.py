"""Pretraining config: shipped YAMLs parse, defaults < YAML < CLI, unknown keys and conflicts are errors."""

import argparse
from pathlib import Path

import pytest
import yaml

from growlm.modeling import SHAPES
from growlm.growth.layer_map import parse_id_ranges
from growlm.train.config import build_parser, cli_flags, help_text, parse_args, planned_steps
from growlm.train.model_setup import grown_layers

REPO = Path(__file__).resolve().parents[1]
SHIPPED = sorted((REPO / "configs" / "pretrain").glob("*.yaml"))


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "run.yaml"
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize("path", SHIPPED, ids=[p.name for p in SHIPPED])
def test_every_shipped_yaml_parses(path):
    cfg = parse_args(["--config", str(path)])
    assert cfg.model.shape in SHAPES
    assert planned_steps(cfg.train) > 0


def test_shipped_yamls_exist():
    assert {p.name for p in SHIPPED} >= {"tiny_cpu.yaml", "6L2048H_base.yaml", "1.1B_target.yaml"}


def test_paper_learning_rates():
    lrs = {p.name: parse_args(["--config", str(p)]).optim.lr for p in SHIPPED}
    assert lrs["6L2048H_base.yaml"] == 1e-3 and lrs["1.1B_target.yaml"] == 3e-4


def test_precedence_defaults_yaml_cli(tmp_path):
    path = write(tmp_path, "optim:\n  lr: 1e-4\ntrain:\n  max_steps: 10\n  micro_batch_size: 2\n")
    cfg = parse_args(["--config", path, "--micro-batch-size", "4", "--data-seed", "7", "--seed", "9"])
    assert cfg.optim.lr == 1e-4 and isinstance(cfg.optim.lr, float)  # YAML over default, "1e-4" typed
    assert cfg.train.micro_batch_size == 4  # CLI over YAML
    assert cfg.train.max_steps == 10 and cfg.optim.beta2 == 0.95  # YAML, default
    assert (cfg.train.seed, cfg.data.seed) == (9, 7)


def test_list_and_optional_values(tmp_path):
    cfg = parse_args(["--max-tokens", "1e6", "--exclude-sets", "RedPajamaGithub,RedPajamaArXiv",
                      "--peak-tflops", "none", "--tensorboard", "false"])
    assert cfg.train.max_tokens == 1_000_000
    assert cfg.data.exclude_sets == ["RedPajamaGithub", "RedPajamaArXiv"]
    assert cfg.log.peak_tflops is None and cfg.log.tensorboard is False


def test_unknown_keys_are_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown key.*'lrate'"):
        parse_args(["--config", write(tmp_path, "optim:\n  lrate: 1\n")])
    with pytest.raises(ValueError, match=r"run.yaml: unknown key\(s\) \['optimizer'\]; allowed: \['checkpoint'"):
        parse_args(["--config", write(tmp_path, "optimizer:\n  lr: 1\n")])
    with pytest.raises(ValueError, match="unknown option --lrate"):
        parse_args(["--max-steps", "1", "--lrate", "1"])


def test_conflicts_and_missing_values():
    with pytest.raises(ValueError, match="exclude each other"):
        parse_args(["--max-steps", "1", "--init-from", "runs/grown", "--resume", "runs/x/checkpoints/step-00000001"])
    assert parse_args(["--max-steps", "1", "--init-from", "runs/grown", "--resume", "auto"]).checkpoint.resume == "auto"
    with pytest.raises(ValueError, match="max-steps"):
        parse_args([])
    with pytest.raises(ValueError, match="invalid choice: 'forever'"):
        parse_args(["--max-steps", "1", "--horizon", "forever"])
    with pytest.raises(ValueError, match="expected an integer"):
        parse_args(["--max-steps", "ten"])
    with pytest.raises(ValueError, match="--max-steps: expected one argument"):
        parse_args(["--max-steps"])


def test_flag_names_are_unique_and_documented():
    flags = cli_flags()
    assert flags["--seed"] == ("train", "seed") and flags["--data-seed"] == ("data", "seed")
    assert {"--max-steps", "--max-tokens", "--output-dir", "--init-from", "--resume", "--shape"} <= set(flags)
    assert all(flag in help_text() for flag in flags)
    actions = [a for a in build_parser()._actions if a.option_strings and a.help is not argparse.SUPPRESS]
    assert {flag for a in actions for flag in a.option_strings} >= set(flags) | {"--config"}
    assert all(a.help and len(a.help) > 10 for a in actions), [a.option_strings for a in actions if not a.help]
    assert "{planned,paper}" in help_text() and "(default: 3407)" in help_text()


def test_help_lists_every_flag_with_its_meaning(capsys):
    from scripts.pretrain import main

    main(["--help"])
    text = capsys.readouterr().out
    assert "--data-seed DATA_SEED" in text and "data-order seed" in text and "torch.compile (GPU)" in text


def test_flag_equals_value_and_boolean_switches(tmp_path):
    path = write(tmp_path, "train:\n  max_steps: 3\n  compile: true\n")
    cfg = parse_args([f"--config={path}", "--lr=2e-4", "--liger", "--activation-checkpointing", "true",
                      "--tensorboard=false", "--shape=tiny-8L"])
    assert cfg.train.max_steps == 3 and cfg.optim.lr == 2e-4 and cfg.model.shape == "tiny-8L"
    assert cfg.train.compile and cfg.train.liger and cfg.train.activation_checkpointing and not cfg.log.tensorboard
    assert parse_args(["--max-steps", "1", "--compile"]).train.compile is True
    assert parse_args(["--compile", "--max-steps", "1"]).train.compile is True
    assert parse_args(["--config", path, "--compile", "false"]).train.compile is False  # CLI over YAML
    assert parse_args(["--max-steps", "1", "--no-tensorboard"]).log.tensorboard is False
    assert parse_args(["--max_steps", "1", "--data_seed", "5"]).data.seed == 5


def test_cli_errors_are_one_line(tmp_path):
    for argv, message in [(["--max-steps", "1", "--compile", "maybe"], "--compile: Truthy value expected"),
                          (["--max-steps", "1", "--lr", "fast"], "command line: optim.lr: expected a number"),
                          (["--max-step", "1"], "unknown option --max-step 1"),
                          (["--config", str(tmp_path / "nope.yaml")], "nope.yaml does not exist")]:
        with pytest.raises(ValueError, match=message) as err:
            parse_args(argv)
        assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match=r"optim.lr: expected a number, got 'fast'"):
        parse_args(["--config", write(tmp_path, "optim:\n  lr: fast\n"), "--max-steps", "1"])


def test_cli_error_exits_2_with_one_line(capsys):
    from scripts.pretrain import main

    assert main(["--max-steps", "1", "--lrate", "1"]) == 2
    assert capsys.readouterr().err == "error: unknown option --lrate 1; run with --help to list the options\n"


def test_saved_resolved_config_round_trips(tmp_path):
    cfg = parse_args(["--config", str(REPO / "configs" / "pretrain" / "tiny_cpu.yaml"), "--include-sets", "a,b",
                      "--exclude-sets", "", "--peak-tflops", "12.5", "--resume", "auto", "--schedule", "wsd",
                      "--data-seed", "11", "--max-tokens", "1e6", "--compile"])
    saved = tmp_path / "config.yaml"
    saved.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))  # what the run writes to its output folder
    assert parse_args(["--config", str(saved)]) == cfg
    assert cfg.data.include_sets == ["a", "b"] and cfg.data.exclude_sets == [] and cfg.train.max_tokens == 10**6


def test_freeze_layer_selection():
    assert parse_id_ranges("0,2,8-10", "train.freeze", alternatives="'none'") == [0, 2, 8, 9, 10]
    with pytest.raises(ValueError, match="train.freeze='a-b': cannot parse 'a-b'"):
        parse_id_ranges("a-b", "train.freeze", alternatives="'none'")
    assert grown_layers({"layer_map": [0, 1, 0, 1]}) == [2, 3]
    assert grown_layers({"layer_map": [0, 0, 1, 1]}) == [1, 3]


ACCELERATE_CONFIGS = sorted((REPO / "accelerate_configs").glob("*.yaml"))


@pytest.mark.parametrize("path", ACCELERATE_CONFIGS, ids=[p.name for p in ACCELERATE_CONFIGS])
def test_accelerate_configs_load(path):
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(path))
    if path.name.startswith("fsdp2"):
        assert config.fsdp_config["fsdp_version"] == 2
        assert config.fsdp_config["fsdp_transformer_layer_cls_to_wrap"] == "LlamaDecoderLayer"
        assert config.fsdp_config["fsdp_state_dict_type"] == "SHARDED_STATE_DICT"
    assert {p.name for p in ACCELERATE_CONFIGS} == {"single_gpu.yaml", "fsdp2_1node_8gpu.yaml",
                                                    "fsdp2_multinode.yaml", "cpu_2proc.yaml"}
