"""A shortened operator study: depth (stack, zero) and width (split, zero) arms against scratch through the real
runner, with the evaluation stage; and the arm config's errors."""

import json
import struct

import pytest
import yaml

from growlm.study.config import study_from_dict
from growlm.study.runner import per_token_flops

RECIPE = {"lr": 3.0e-3, "warmup-steps": 1}
OPERATORS = {
    "name": "operators-toy", "seeds": [1], "launch": {"jobs": 2, "threads": 1},
    "common": {"tokenizer": "growlm/assets/tokenizer/bpe-4k", "vocab-size": 4096, "seq-len": 32,
               "global-batch-tokens": 256, "micro-batch-size": 8, "validation-blocks": 8, "eval-every": 2,
               "save-every": 100, "tensorboard": False},
    "target": {"shape": "small-8L", "args": RECIPE},
    "scratch": {"max_tokens": 2048},
    "bases": {"2L": {"shape": "small-2L", "max_tokens": 1024, "args": RECIPE},
              "w64": {"shape": "small-8L-w64", "max_tokens": 1024, "args": RECIPE}},
    "arms": {"depth-stack": {"base": "2L", "g": 4},
             "depth-zero": {"base": "2L", "g": 4, "operator": "zero"},
             "width-split": {"base": "w64", "g": 1, "width_operator": "split"},
             "width-zero": {"base": "w64", "g": 1, "width_operator": "zero"}},
    "eval": {"tasks": "slimpajama_heldout_ppl", "seeds": "first", "args": {"limit": 2}},
}
ROWS = {"depth-stack": "| depth | depth-stack | small-2L → ×4 stack |",
        "depth-zero": "| depth | depth-zero | small-2L → ×4 zero |",
        "width-split": "| width | width-split | small-8L-w64 → width split |",
        "width-zero": "| width | width-zero | small-8L-w64 → width zero |"}


def test_operator_study_depth_and_width_arms_end_to_end(tmp_path, capsys):
    from growlm.cli.study import main

    out = tmp_path / "out"
    config = tmp_path / "operators.yaml"
    config.write_text(yaml.safe_dump({**OPERATORS, "output_dir": str(out)}))
    assert main(["--config", str(config)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert set(results["arms"]) == set(ROWS)
    cfg = study_from_dict({**OPERATORS, "output_dir": str(out)})
    target_per_token = per_token_flops(cfg, "small-8L", "full")
    for name, arm in results["arms"].items():  # every arm gets scratch's FLOPs, base included, to within a batch
        assert arm["flops_per_token"]["target"]["full"] == target_per_token, name
        assert 0 <= results["scratch"]["total_flops"]["full"] - arm["total_flops"]["full"] < target_per_token * 256
    width = json.loads((out / "grow" / f"width-split-b{RECIPE['lr']:g}-s1" / "growth.json").read_text())
    assert width["operator"] == "G_split" and width["g"] == 1
    assert width["target_shape"] == {"num_hidden_layers": 8, "hidden_size": 128, "intermediate_size": 352,
                                     "num_attention_heads": 4, "num_key_value_heads": 2}
    assert results["arms"]["width-split"]["d_tokens"] == 1024
    table = (out / "results.md").read_text()
    for row in ROWS.values():
        assert row in table
    assert set(results["eval"]) == {"scratch", *ROWS}
    for name, entry in results["eval"].items():
        ppl = entry["tasks"]["slimpajama_heldout_ppl"]
        assert entry["seeds"] == 1 and ppl["n"] == 2 and ppl["bits_per_byte"]["n"] == 1, name
        cells = [f"{ppl[metric]['mean']:.4g} (1 seed)" for metric in ("word_perplexity", "bits_per_byte")]
        assert f"| {name} | {' | '.join(cells)} | 1 |" in table
    png = (out / "loss_vs_flops.png").read_bytes()
    assert png[:4] == b"\x89PNG"
    assert struct.unpack(">II", png[16:24]) == (2 * 780, 600)  # two panels (depth, width) of 6.5 x 5 in at 120 dpi
    # A report while a new base's LR sweep has not run: that base's arms are left out, the rest is reported.
    later = {**OPERATORS, "output_dir": str(out),
             "bases": {**OPERATORS["bases"], "w64-swept": {"shape": "small-8L-w64", "max_tokens": 1024,
                                                           "args": {"warmup-steps": 1}, "lr_sweep": [1e-3, 3e-3]}},
             "arms": {**OPERATORS["arms"], "width-late": {"base": "w64-swept", "g": 1, "width_operator": "split"}}}
    config.write_text(yaml.safe_dump(later))
    assert main(["--config", str(config), "--report-only"]) == 0
    assert "base w64-swept: its LR sweep has unfinished runs (lr [0.001, 0.003]); its arms are left out" in \
        capsys.readouterr().out
    assert json.loads((out / "results.json").read_text())["arms"] == results["arms"]


@pytest.mark.parametrize("arm, message", [
    ({"base": "w64", "width_operator": "split"}, "grows base small-8L-w64 .* not the target small-8L"),
    ({"base": "2L", "g": 2}, "grows base small-2L .* not the target small-8L"),
    ({"base": "w64", "g": 1}, "grows base small-8L-w64 .* not the target small-8L"),
    ({"base": "w64", "g": 1, "operator": "zero", "width_operator": "split"}, "operator 'zero' is a depth operator"),
    ({"base": "w64", "g": 1, "width_operator": "nope"}, "--width-operator: invalid choice: 'nope'"),
    ({"base": "2L", "g": 4, "operator": "nope"}, "--operator: invalid choice: 'nope'"),
    ({"base": "2L", "g": 4, "growth": {"noize": 0.2}}, "unknown --noize 0.2"),
])
def test_arm_config_errors_name_the_arm_and_the_problem(tmp_path, arm, message):
    with pytest.raises(ValueError, match=f"arm 'bad'.*{message}"):
        study_from_dict({**OPERATORS, "output_dir": str(tmp_path), "arms": {"bad": arm}})


def test_eval_seeds_must_be_first_all_or_none(tmp_path):
    with pytest.raises(ValueError, match=r"eval.seeds: 'some' is not allowed; choose one of \['first', 'all', 'none'"):
        study_from_dict({**OPERATORS, "output_dir": str(tmp_path), "eval": {"seeds": "some"}})
