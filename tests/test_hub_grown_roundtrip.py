"""The user promise of issue 5: a grown model, pushed with its card, loads from the Hub with plain transformers."""

from __future__ import annotations

import uuid

import torch
from huggingface_hub import ModelCard
from transformers import AutoModelForCausalLM

from growlm.growth.grow import grow_checkpoint
from growlm.growth.operators import GrowthOptions
from growlm.hub_push import push_folder

PROMPT = torch.tensor([[1, 5, 17, 42, 99, 3, 64, 7]])


def logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(PROMPT).logits


def test_grown_model_round_trips_through_the_hub(hub_server, tiny_model_dir, tmp_path):
    base_repo = f"growlm-test/base-{uuid.uuid4().hex[:8]}"
    grown_repo = f"growlm-test/grown-{uuid.uuid4().hex[:8]}"
    hub_server.add_repo(base_repo, tiny_model_dir)

    # Grow straight from the Hub repo id, then push the grown folder (weights, tokenizer, growth.json, card).
    grown_dir = grow_checkpoint(base_repo, tmp_path / "grown", GrowthOptions(depth_op="stack", g=2))
    first_sha = push_folder(grown_dir, grown_repo, commit_message="grown x2")
    push_folder(tiny_model_dir, grown_repo, revision="other-branch")  # another revision must not leak into main

    local = AutoModelForCausalLM.from_pretrained(grown_dir)
    for revision in (None, "main", first_sha):
        remote = AutoModelForCausalLM.from_pretrained(grown_repo, revision=revision)
        assert remote.config.num_hidden_layers == 6
        assert torch.equal(logits(remote), logits(local)), revision

    card = ModelCard.load(grown_repo)
    assert card.data.library_name == "transformers"
    assert card.data.base_model == base_repo
    assert "growlm" in card.data.tags
    assert "AutoModelForCausalLM.from_pretrained" in card.text
