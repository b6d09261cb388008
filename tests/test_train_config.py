"""Pretraining config: shipped YAMLs parse, defaults < YAML < CLI, unknown keys and conflicts are errors."""

from pathlib import Path

import pytest

from growlm.modeling import SHAPES
from growlm.train.config import cli_flags, help_text, parse_args, planned_steps
from growlm.growth.layer_map import parse_id_ranges
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
    with pytest.raises(ValueError, match="unknown section"):
        parse_args(["--config", write(tmp_path, "optimizer:\n  lr: 1\n")])
    with pytest.raises(ValueError, match="unknown option --lrate"):
        parse_args(["--max-steps", "1", "--lrate", "1"])


def test_conflicts_and_missing_values():
    with pytest.raises(ValueError, match="exclude each other"):
        parse_args(["--max-steps", "1", "--init-from", "runs/grown", "--resume", "runs/x/checkpoints/step-00000001"])
    assert parse_args(["--max-steps", "1", "--init-from", "runs/grown", "--resume", "auto"]).checkpoint.resume == "auto"
    with pytest.raises(ValueError, match="max-steps"):
        parse_args([])
    with pytest.raises(ValueError, match="choose one of"):
        parse_args(["--max-steps", "1", "--horizon", "forever"])
    with pytest.raises(ValueError, match="expected an integer"):
        parse_args(["--max-steps", "ten"])
    with pytest.raises(ValueError, match="needs a value"):
        parse_args(["--max-steps"])


def test_flag_names_are_unique_and_documented():
    flags = cli_flags()
    assert flags["--seed"] == ("train", "seed") and flags["--data-seed"] == ("data", "seed")
    assert {"--max-steps", "--max-tokens", "--output-dir", "--init-from", "--resume", "--shape"} <= set(flags)
    assert all(flag in help_text() for flag in flags)


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
