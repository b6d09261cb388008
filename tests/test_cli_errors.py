"""Bad inputs to `evaluate.py` and `push.py`: exit status 2, one `error:` line, no traceback, nothing left behind
(growth and pretrain have their own tables in test_growth_errors.py and test_pretrain_errors.py)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from growlm.cli.evaluate import main as evaluate_main
from growlm.cli.push import main as push_main
from tests.conftest import REPO_ROOT, save_tiny_llama


def _expect_error(capsys, main, argv: list[str], message: str, watch: Path) -> None:
    before = sorted(watch.rglob("*"))
    try:
        status = main(argv)
    except SystemExit as exit_:  # argparse's own usage errors
        status = exit_.code
    err = capsys.readouterr().err
    assert status == 2, err
    assert "Traceback" not in err
    assert [line for line in err.splitlines() if "error:" in line] == [err.splitlines()[-1]], err
    assert message in err, err
    assert sorted(watch.rglob("*")) == before  # nothing written, nothing removed


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return save_tiny_llama(tmp_path_factory.mktemp("cli-errors") / "model", with_tokenizer=True)


def _damaged(tmp_path: Path, model: Path, damage: str) -> Path:
    """A copy of `model` with one kind of damage."""
    bad = tmp_path / "bad"
    shutil.copytree(model, bad)
    weights = bad / "model.safetensors"
    if damage == "truncated":
        data = weights.read_bytes()
        weights.write_bytes(data[: len(data) // 2])
    elif damage == "no-weights":
        weights.unlink()
    elif damage == "no-config":
        (bad / "config.json").unlink()
    elif damage == "not-llama":
        config = json.loads((bad / "config.json").read_text())
        (bad / "config.json").write_text(json.dumps({**config, "model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]}))
    elif damage == "bad-json":
        (bad / "config.json").write_text("{not json")
    return bad


EVAL_CASES = {
    "missing folder": (lambda tmp, m: ["--model", str(tmp / "nope")], "does not exist"),
    "model is a file": (lambda tmp, m: ["--model", str(m / "config.json")], "is a file"),
    "truncated weights": (lambda tmp, m: ["--model", str(_damaged(tmp, m, "truncated"))], "truncated"),
    "no weights": (lambda tmp, m: ["--model", str(_damaged(tmp, m, "no-weights"))], "no weights"),
    "no config": (lambda tmp, m: ["--model", str(_damaged(tmp, m, "no-config"))], "has no config.json"),
    "not a llama": (lambda tmp, m: ["--model", str(_damaged(tmp, m, "not-llama"))], "is not a Llama model"),
    "config not json": (lambda tmp, m: ["--model", str(_damaged(tmp, m, "bad-json"))], "not valid JSON"),
    "offline hub id": (lambda tmp, m: ["--model", "growlm-test/not-cached"], "could not be fetched from the Hub"),
    "revision on a folder": (lambda tmp, m: ["--model", str(m), "--revision", "v1"], "drop --revision"),
    "output is a folder": (lambda tmp, m: ["--model", str(m), "--output", str(tmp)], "must be a file path"),
    "output folder missing": (lambda tmp, m: ["--model", str(m), "--output", str(tmp / "a" / "r.json")],
                              "in a missing folder"),
    "empty tasks": (lambda tmp, m: ["--model", str(m), "--tasks", ","], "--tasks is empty"),
    "batch size 0": (lambda tmp, m: ["--model", str(m), "--batch-size", "0"], "batch size must be >= 1"),
    "limit 0": (lambda tmp, m: ["--model", str(m), "--limit", "0"], "limit must be >= 1"),
    "negative fewshot": (lambda tmp, m: ["--model", str(m), "--num-fewshot", "-1"], "num_fewshot must be >= 0"),
    "bad dtype": (lambda tmp, m: ["--model", str(m), "--dtype", "int8"], "invalid choice: 'int8'"),
    "bad device": (lambda tmp, m: ["--model", str(m), "--device", "tpu"], "invalid choice: 'tpu'"),
    "batch size not int": (lambda tmp, m: ["--model", str(m), "--batch-size", "x"], "invalid int value"),
    "no model": (lambda tmp, m: ["--tasks", "offline"], "the following arguments are required: --model"),
}


@pytest.mark.parametrize("case", EVAL_CASES)
def test_evaluate_bad_input(case, capsys, tmp_path, model):
    argv, message = EVAL_CASES[case]
    _expect_error(capsys, evaluate_main, argv(tmp_path, model), message, watch=tmp_path)


def test_evaluate_unknown_task_fails_before_loading_the_model(capsys, tmp_path, model):
    _expect_error(capsys, evaluate_main, ["--model", str(model), "--tasks", "no_such_task_xyz"],
                  "unknown lm-eval task(s) ['no_such_task_xyz']", watch=tmp_path)


PUSH_CASES = {
    "missing folder": (lambda tmp, m: ["--folder", str(tmp / "nope"), "--repo-id", "org/x"], "does not exist"),
    "folder is a file": (lambda tmp, m: ["--folder", str(m / "config.json"), "--repo-id", "org/x"],
                         "is not a directory"),
    "empty folder": (lambda tmp, m: ["--folder", str(tmp), "--repo-id", "org/x"], "holds no files"),
    "repo id with two slashes": (lambda tmp, m: ["--folder", str(m), "--repo-id", "a/b/c"], "is not a Hub repo id"),
    "repo id without owner": (lambda tmp, m: ["--folder", str(m), "--repo-id", "name"], "is not a Hub repo id"),
    "repo id with spaces": (lambda tmp, m: ["--folder", str(m), "--repo-id", "my org/x"], "is not a Hub repo id"),
    "revision is a commit": (lambda tmp, m: ["--folder", str(m), "--repo-id", "org/x", "--revision", "a" * 40],
                             "must be a branch name"),
    "empty revision": (lambda tmp, m: ["--folder", str(m), "--repo-id", "org/x", "--revision", " "],
                       "must be a branch name"),
    "offline": (lambda tmp, m: ["--folder", str(m), "--repo-id", "org/x"], "HF_HUB_OFFLINE is set"),
    "no repo id": (lambda tmp, m: ["--folder", str(m)], "the following arguments are required: --repo-id"),
}


@pytest.mark.parametrize("case", PUSH_CASES)
def test_push_bad_input(case, capsys, tmp_path, model):
    argv, message = PUSH_CASES[case]
    (tmp_path / "empty").mkdir()
    _expect_error(capsys, push_main, argv(tmp_path / "empty", model), message, watch=tmp_path)


def test_push_to_an_unreachable_endpoint(tmp_path, model):
    env = {**os.environ, "HF_HUB_OFFLINE": "0", "HF_ENDPOINT": "http://127.0.0.1:9",  # nothing listens there
           "HF_TOKEN": "hf_unused", "HF_HUB_DISABLE_XET": "1", "HF_HOME": str(tmp_path / "hf")}
    done = subprocess.run([sys.executable, "-m", "growlm.cli.push", "--folder", str(model), "--repo-id", "org/x"],
                          cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.startswith("error: ") and done.stderr.count("\n") == 1, done.stderr
    assert "127.0.0.1:9" in done.stderr or "connect" in done.stderr.lower(), done.stderr


def test_push_with_a_wrong_token(capsys, tmp_path, model, hub_server, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_wrong_token")
    _expect_error(capsys, push_main, ["--folder", str(model), "--repo-id", "growlm-test/denied"], "401",
                  watch=tmp_path)
    assert "hf_wrong_token" not in capsys.readouterr().err
