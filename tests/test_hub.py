"""Push to / load from a Hub-compatible server (growlm/hub_server.py) with huggingface_hub and plain transformers."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import pytest
import torch
from huggingface_hub import HfApi, ModelCard, ModelCardData, hf_hub_download, snapshot_download
from huggingface_hub.errors import EntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError
from transformers import AutoModelForCausalLM, AutoTokenizer

import growlm.hub_push
from growlm.hub_push import BackgroundPusher, push_folder
from tests.conftest import REPO_ROOT, save_tiny_llama

PROMPT = torch.tensor([[1, 5, 17, 42, 99, 3, 64]])


def unique_repo(name: str) -> str:
    return f"growlm-test/{name}-{uuid.uuid4().hex[:8]}"


def logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(PROMPT).logits


def model_folder(path: Path, *, seed: int, with_tokenizer: bool = True) -> Path:
    """A tiny Llama (+ vendored tokenizer) with a minimal model card."""
    save_tiny_llama(path, with_tokenizer=with_tokenizer, seed=seed)
    card = ModelCard.from_template(ModelCardData(license="apache-2.0", library_name="transformers",
                                                 tags=["growlm", "g_stack"], pipeline_tag="text-generation"),
                                   model_description=f"Tiny test Llama, seed {seed}.")
    card.save(path / "README.md")
    return path


def test_push_then_load_by_repo_branch_and_commit(hub_server, tmp_path):
    repo = unique_repo("tiny")
    base, ckpt, update = (model_folder(tmp_path / f"m{seed}", seed=seed) for seed in (0, 1, 2))
    first = push_folder(base, repo, commit_message="base model")
    on_branch = push_folder(ckpt, repo, revision="ckpt/step-1")
    push_folder(update, repo)  # main moves on; `first` must still load the base model

    refs = {ref.name: ref.target_commit for ref in HfApi().list_repo_refs(repo).branches}
    assert refs["ckpt/step-1"] == on_branch and refs["main"] not in (first, on_branch)

    expected = {path: logits(AutoModelForCausalLM.from_pretrained(path)) for path in (base, ckpt, update)}
    for revision, folder in ((None, update), ("main", update), ("ckpt/step-1", ckpt), (first, base)):
        loaded = AutoModelForCausalLM.from_pretrained(repo, revision=revision)
        assert torch.equal(logits(loaded), expected[folder]), revision
    assert not torch.equal(expected[base], expected[ckpt])

    text = "Grown models keep their tokenizer."
    assert AutoTokenizer.from_pretrained(repo)(text).input_ids == AutoTokenizer.from_pretrained(base)(text).input_ids

    card = ModelCard.load(repo)
    assert card.data.license == "apache-2.0" and card.data.tags == ["growlm", "g_stack"]
    assert "seed 2" in card.text


def test_add_repo_seeds_a_loadable_revision(hub_server, tmp_path):
    repo = unique_repo("seeded")
    folder = save_tiny_llama(tmp_path / "seeded", seed=3)
    (folder / "logs").mkdir()
    (folder / "logs" / "train.txt").write_text("step 1 loss 10.4\n")
    sha = hub_server.add_repo(repo, folder, revision="v1")
    loaded = AutoModelForCausalLM.from_pretrained(repo, revision=sha)
    assert torch.equal(logits(loaded), logits(AutoModelForCausalLM.from_pretrained(folder)))

    api = HfApi()
    assert api.model_info(repo, revision="v1").sha == sha
    top = {entry.path: type(entry).__name__ for entry in api.list_repo_tree(repo, revision="v1")}
    assert top["logs"] == "RepoFolder" and top["model.safetensors"] == "RepoFile" and "logs/train.txt" not in top
    infos = api.get_paths_info(repo, ["config.json", "model.safetensors", "absent.txt"], revision="v1")
    assert {i.path: i.lfs is not None for i in infos} == {"config.json": False, "model.safetensors": True}
    local = Path(snapshot_download(repo, revision="v1"))
    assert (local / "logs" / "train.txt").read_text() == "step 1 loss 10.4\n"
    assert (local / "model.safetensors").read_bytes() == (folder / "model.safetensors").read_bytes()


def test_missing_repo_revision_and_file_raise_hub_errors(hub_server, tmp_path):
    repo = unique_repo("errors")
    hub_server.add_repo(repo, save_tiny_llama(tmp_path / "m", seed=0))
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download(unique_repo("absent"), "config.json")
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download(repo, "config.json", revision="no-such-branch")
    with pytest.raises(EntryNotFoundError):
        hf_hub_download(repo, "no-such-file.json")


def test_private_repo_needs_the_token(hub_server, tmp_path):
    repo = unique_repo("private")
    push_folder(save_tiny_llama(tmp_path / "m", seed=0), repo, private=True)
    assert HfApi().model_info(repo).private is True
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download(repo, "config.json", token=False)
    with pytest.raises(RepositoryNotFoundError):
        HfApi().model_info(repo, token=False)
    assert Path(hf_hub_download(repo, "config.json")).is_file()


def test_wrong_token_is_refused_clearly(hub_server, tmp_path):
    folder = save_tiny_llama(tmp_path / "m", seed=0)
    with pytest.raises(PermissionError, match="refused the credentials.*HF_TOKEN") as info:
        push_folder(folder, unique_repo("denied"), token="hf_wrong_token_123")
    assert "hf_wrong_token_123" not in str(info.value)


def test_bad_push_arguments_are_rejected(hub_server, tmp_path):
    folder = save_tiny_llama(tmp_path / "m", seed=0)
    with pytest.raises(ValueError, match="does not exist"):
        push_folder(tmp_path / "missing", unique_repo("x"))
    with pytest.raises(ValueError, match="must be a branch name"):
        push_folder(folder, unique_repo("x"), revision="a" * 40)
    with pytest.raises(ValueError):
        push_folder(folder, "not a/valid//repo")


def test_background_pusher_pushes_branches_while_caller_continues(hub_server, tmp_path, monkeypatch):
    repo = unique_repo("background")
    gate = threading.Event()
    real_push = growlm.hub_push.push_folder

    def gated_push(*args, **kwargs):
        assert gate.wait(timeout=60), "test gate never opened"
        return real_push(*args, **kwargs)

    monkeypatch.setattr(growlm.hub_push, "push_folder", gated_push)
    ckpts = [save_tiny_llama(tmp_path / "run" / f"step-{i}", seed=10 + i) for i in (1, 2)]
    expected = [logits(AutoModelForCausalLM.from_pretrained(c)) for c in ckpts]

    with BackgroundPusher(repo) as pusher:
        futures = [pusher.submit(c, revision=f"ckpt/step-{i}") for i, c in zip((1, 2), ckpts)]
        assert not any(f.done() for f in futures)  # submit returned while the worker is still blocked
        for c in ckpts:  # checkpoint pruning deletes the folders before their upload starts
            shutil.rmtree(c)
        gate.set()
        shas = pusher.wait()

    assert shas == [f.result() for f in futures] and len(set(shas)) == 2
    for i, (sha, want) in enumerate(zip(shas, expected), start=1):
        assert HfApi().model_info(repo, revision=f"ckpt/step-{i}").sha == sha
        assert torch.equal(logits(AutoModelForCausalLM.from_pretrained(repo, revision=f"ckpt/step-{i}")), want)
    assert not any((tmp_path / "run" / ".hub-push").iterdir())  # snapshots cleaned up


def test_background_pusher_surfaces_failures(hub_server, tmp_path):
    pusher = BackgroundPusher(unique_repo("bg-fail"), token="hf_wrong_token_123")
    pusher.submit(save_tiny_llama(tmp_path / "step-1", seed=0), revision="ckpt/step-1")
    with pytest.raises(RuntimeError, match="1 background push.*failed.*refused the credentials"):
        pusher.close()
    with pytest.raises(RuntimeError, match="closed"):
        pusher.submit(tmp_path / "step-1")


def test_push_script(hub_server, tmp_path):
    repo = unique_repo("script")
    folder = model_folder(tmp_path / "m", seed=0, with_tokenizer=False)
    script = [sys.executable, str(REPO_ROOT / "scripts" / "push.py")]
    done = subprocess.run([*script, "--folder", str(folder), "--repo-id", repo, "--revision", "ckpt/step-7",
                           "--private", "--commit-message", "step 7"],
                          capture_output=True, text=True, env=os.environ.copy(), timeout=120)
    assert done.returncode == 0, done.stderr
    sha = done.stdout.strip()
    info = HfApi().model_info(repo, revision="ckpt/step-7")
    assert info.sha == sha and info.private is True
    assert {"config.json", "model.safetensors", "README.md"} <= {s.rfilename for s in info.siblings}
    assert hub_server.token not in done.stdout + done.stderr

    bad = subprocess.run([*script, "--folder", str(tmp_path / "nope"), "--repo-id", repo],
                         capture_output=True, text=True, env=os.environ.copy(), timeout=120)
    assert bad.returncode == 2 and "does not exist" in bad.stderr
