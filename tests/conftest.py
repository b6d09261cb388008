"""Shared fixtures: tiny Llama models on disk, offline by default."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(1)  # tiny models: one thread beats two on a 2-core box

from growlm.assets import DEFAULT_DATA_DIR, DEFAULT_TOKENIZER_DIR  # noqa: E402
from growlm.data import tokenize_split  # noqa: E402
from growlm.modeling import build_model  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]


def tiny_llama(*, tied: bool = False, gqa: bool = True, bias: bool = False, layers: int = 3,
               vocab_size: int = 128, dtype: torch.dtype = torch.float32, seed: int = 0):
    """The spec's fixture (growth.md §10): V=128, H=64, n_q=4, n_kv=2 (GQA) or 4, d_h=16, F=176, L=3,
    with random norm gains and (optionally) random biases so that no tensor is trivially 1 or 0."""
    model = build_model(
        "tiny-2L", seed=seed, dtype=torch.float32, vocab_size=vocab_size, num_hidden_layers=layers,
        num_key_value_heads=2 if gqa else 4, tie_word_embeddings=tied,
        attention_bias=bias, mlp_bias=bias,
    )
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=gen))
            elif name.endswith(".bias"):
                p.copy_(0.02 * torch.randn(p.shape, generator=gen))
    return model.to(dtype).eval()


def save_tiny_llama(path: Path, *, with_tokenizer: bool = False, **kwargs) -> Path:
    """Save a tiny Llama as a Hugging Face folder (vocab 32000 + the vendored tokenizer if asked)."""
    if with_tokenizer:
        kwargs.setdefault("vocab_size", 32000)
    model = tiny_llama(**kwargs)
    model.save_pretrained(path)
    if with_tokenizer:
        for f in DEFAULT_TOKENIZER_DIR.iterdir():
            if f.suffix == ".json":
                shutil.copy(f, path / f.name)
    return path


@pytest.fixture
def tiny_model_dir(tmp_path: Path) -> Path:
    """A saved tiny GQA Llama with the vendored 32k tokenizer."""
    return save_tiny_llama(tmp_path / "tiny-src", with_tokenizer=True)


# --- Local Hub-compatible server (growlm/hub_server.py) ---------------------------------------------------------------

@pytest.fixture(scope="session")
def _hub_server_session(tmp_path_factory):
    from growlm.hub_server import HubServer

    with HubServer(tmp_path_factory.mktemp("hub-root")) as server:
        yield server


@pytest.fixture
def hub_server(_hub_server_session, monkeypatch, tmp_path_factory):
    """A running local Hub (`.endpoint`, `.token`, `.add_repo(repo_id, dir, revision="main")`, `.client_env()`),
    shared by the session (use unique repo ids), with this test's process pointed at it: HF_ENDPOINT, HF_TOKEN,
    HF_HUB_OFFLINE=0, HF_HUB_DISABLE_XET=1 in os.environ (for subprocesses) and in the `huggingface_hub.constants`
    that were read at import time, plus a fresh HF_HUB_CACHE and no stored token."""
    from huggingface_hub import constants

    server = _hub_server_session
    home = tmp_path_factory.mktemp("hf-home")
    env = {**server.client_env(), "HF_HOME": str(home), "HF_HUB_CACHE": str(home / "hub")}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(constants, "ENDPOINT", server.endpoint)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE",
                        server.endpoint + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_TELEMETRY", True)
    monkeypatch.setattr(constants, "HF_HOME", str(home))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(home / "hub"))
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(home / "token"))
    monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(home / "stored_tokens"))
    return server


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    """Token shards (train and validation) of the bundled sample corpus, written by `tokenize_split`."""
    out = tmp_path_factory.mktemp("shards")
    for split in ("train", "validation"):
        tokenize_split(str(DEFAULT_DATA_DIR), str(DEFAULT_TOKENIZER_DIR), out, split=split)
    return out
