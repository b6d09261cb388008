"""Model cards: grown and pretrained rendering, Hub metadata validity, model-index round trip, no network."""

from __future__ import annotations

import json
import socket

import pytest
from huggingface_hub import ModelCard
from huggingface_hub.repocard_data import eval_results_to_model_index, model_index_to_eval_results
from transformers import LlamaConfig

from growlm.cards import write_model_card
from growlm.modeling import count_parameters
from tests.conftest import save_tiny_llama

GROWTH = {
    "source": "growlm/base-3L", "source_revision": "v1", "source_commit": "0123abcd", "operator": "G_stack",
    "layer_map": [0, 1, 2, 0, 1, 2], "g": 2, "noise": {"alpha": 0.0, "head": False}, "seed": 0,
}
TRAINING = {
    "dataset": "/data/slimpajama-tiny", "tokens": 3_000_000, "total_tokens": 4_000_000, "flops": 1.5e15,
    "hardware": "1 x CPU", "hyperparameters": {"optim.lr_max": 3e-4, "optim.warmup_steps": 10},
}
EVAL = {
    "harness_version": "0.4.13", "dtype": "float32", "batch_size": 4, "num_fewshot": 0, "limit": None,
    "tasks": {
        "slimpajama_continuation": {"dataset": "slimpajama-tiny/test", "split": "test", "n": 92, "acc": 0.3,
                                    "acc_se": 0.0478, "acc_norm": 0.25, "acc_norm_se": 0.0451},
        "slimpajama_heldout_ppl": {"dataset": "slimpajama-tiny/test", "split": "test", "n": 18,
                                   "word_perplexity": 1234.5, "byte_perplexity": 3.25, "bits_per_byte": 1.7},
    },
}


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Any socket connection fails the test: card rendering must stay offline."""
    def refuse(*args, **kwargs):
        raise AssertionError("model card rendering tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny_llama(tmp_path_factory.mktemp("card") / "model", layers=6)


def test_grown_card_metadata_body_and_model_index_round_trip(model_dir):
    path = write_model_card(model_dir, growth=GROWTH, training=TRAINING, eval_results=EVAL,
                            repo_id="growlm/grown-6L", loss_curve="loss.png")
    assert path == model_dir / "README.md"
    card = ModelCard.load(path)
    data = card.data.to_dict()
    assert data["license"] == "apache-2.0" and data["library_name"] == "transformers"
    assert data["base_model"] == "growlm/base-3L" and data["base_model_relation"] == "finetune"
    assert data["datasets"] == ["slimpajama-tiny"]
    assert {"growlm", "llama", "model-growth", "g_stack"} <= set(data["tags"])

    name, results = model_index_to_eval_results(data["model-index"])
    assert name == "grown-6L"
    assert eval_results_to_model_index(name, results) == data["model-index"]
    metrics = {(r.dataset_name, r.metric_type): r.metric_value for r in results}
    assert metrics == {
        ("slimpajama_continuation", "acc"): 0.3, ("slimpajama_continuation", "acc_norm"): 0.25,
        ("slimpajama_heldout_ppl", "word_perplexity"): 1234.5,
        ("slimpajama_heldout_ppl", "byte_perplexity"): 3.25, ("slimpajama_heldout_ppl", "bits_per_byte"): 1.7,
    }

    body = card.text
    total = count_parameters(LlamaConfig(**json.loads((model_dir / "config.json").read_text())))["total"]
    assert f"| parameters (total) | {total:,} |" in body
    assert "| layers | 6 |" in body and "| attention heads (q / kv) | 4 / 2 |" in body
    assert "| operator | G_stack |" in body and "`[0, 1, 2, 0, 1, 2]`" in body and "| source revision | v1 |" in body
    assert "| growth timing d (source tokens before growth) | 1,000,000 (0.001B) |" in body
    assert "| slimpajama_continuation | 92 | 30.00 ± 4.78 | 25.00 ± 4.51 | – | – | – | – |" in body
    assert "| slimpajama_heldout_ppl | 18 | – | – | 1234 | 3.25 | 1.7 | – |" in body
    assert "![Training loss](loss.png)" in body and "| optim.lr_max | 0.0003 |" in body
    assert 'AutoModelForCausalLM.from_pretrained("growlm/grown-6L")' in body
    assert "Not evaluated yet" not in body and "{{" not in body
    assert "github.com/growlm" not in body  # links only to pages that exist


def test_pretrained_card_reads_records_from_the_folder_and_says_what_is_missing(tmp_path):
    model_dir = save_tiny_llama(tmp_path / "base")
    (model_dir / "training.json").write_text(json.dumps({"dataset": "cerebras/SlimPajama-627B", "tokens": 5000}))
    card = ModelCard.load(write_model_card(model_dir))
    data = card.data.to_dict()
    assert data["datasets"] == ["cerebras/SlimPajama-627B"]
    assert "model-index" not in data and "base_model" not in data and "model-growth" not in data["tags"]
    assert "base_model_relation" not in data
    assert "How it was made" not in card.text
    assert "Not evaluated yet." in card.text
    assert "Hyperparameters were not recorded" in card.text and "Compute was not recorded" in card.text
    assert "| tokens trained (this model) | 5,000" in card.text


def test_card_picks_up_growth_and_eval_json_files(tmp_path):
    model_dir = save_tiny_llama(tmp_path / "grown", layers=6)
    (model_dir / "growth.json").write_text(json.dumps(GROWTH))
    (model_dir / "eval_results.json").write_text(json.dumps(EVAL))
    card = ModelCard.load(write_model_card(model_dir))
    assert card.data.to_dict()["base_model"] == "growlm/base-3L"
    assert "| operator | G_stack |" in card.text
    assert "| growth timing d (source tokens before growth) | not recorded |" in card.text
    width_and_depth = {**GROWTH, "operator": "G_split+G_stack"}
    tags = ModelCard.load(write_model_card(model_dir, growth=width_and_depth)).data.to_dict()["tags"]
    assert {"g_split", "g_stack"} <= set(tags)
    assert model_index_to_eval_results(card.data.to_dict()["model-index"])[0] == "grown"


def test_folder_without_config_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="no config.json"):
        write_model_card(tmp_path)
