"""The built wheel works on its own: installed into a fresh virtualenv outside the checkout, its commands grow a
model, plan a growth and pretrain two steps, reading every runtime file (model card templates, the vendored data
and tokenizer) from the installed package."""

from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT, save_tiny_llama

pytestmark = pytest.mark.slow


def _run(command: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{command} failed:\n{done.stdout}\n{done.stderr}"
    return done


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> tuple[Path, dict[str, str], Path]:
    """(bin folder, environment, working folder) of a fresh venv holding only the growlm wheel; the pinned
    dependencies come from the test interpreter's site-packages (a .pth path entry: no editable growlm there)."""
    root = tmp_path_factory.mktemp("wheel")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    source = root / "source"  # a copy, so the in-tree build leaves nothing in the checkout
    shutil.copytree(REPO_ROOT, source, symlinks=True, ignore=shutil.ignore_patterns(
        ".git", ".venv", "runs", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache"))
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(root / "dist"),
          str(source)], cwd=root, env=env)
    wheel = next((root / "dist").glob("growlm-*.whl"))
    venv.EnvBuilder(with_pip=False).create(root / "venv")
    python = root / "venv" / "bin" / "python"
    purelib = Path(subprocess.check_output([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                           text=True).strip())
    deps = [p for p in [*site.getsitepackages(), sysconfig.get_paths()["purelib"]] if Path(p).is_dir()]
    (purelib / "_growlm_test_deps.pth").write_text("\n".join(dict.fromkeys(deps)) + "\n")
    _run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index", "-q",
          str(wheel)], cwd=root, env=env)
    work = root / "work"
    work.mkdir()
    return root / "venv" / "bin", env, work


def test_installed_package_is_used(installed):
    bin_dir, env, work = installed
    where = _run([str(bin_dir / "python"), "-c", "import growlm, growlm.assets as a; print(growlm.__file__); "
                  "print(a.SAMPLE_DATA_DIR.is_dir())"], cwd=work, env=env).stdout.split()
    assert str(bin_dir.parent) in where[0] and str(REPO_ROOT) not in where[0]
    assert where[1] == "True"


def test_growlm_stack_from_the_wheel(installed):
    bin_dir, env, work = installed
    src = save_tiny_llama(work / "src", with_tokenizer=True)
    _run([str(bin_dir / "growlm-stack"), "--src", str(src), "--g", "2", "--out", str(work / "grown")], cwd=work,
         env=env)
    card = (work / "grown" / "README.md").read_text()  # written from the packaged template
    assert card.startswith("---\n") and "Stacking Your Transformers" in card
    assert json.loads((work / "grown" / "config.json").read_text())["num_hidden_layers"] == 6


def test_growlm_plan_from_the_wheel(installed):
    bin_dir, env, work = installed
    done = _run([str(bin_dir / "growlm-plan"), "--params", "1.1B", "--tokens", "100B", "--json"], cwd=work, env=env)
    assert json.loads(done.stdout)["g"] == 4


def test_two_pretrain_steps_from_the_wheel(installed):
    bin_dir, env, work = installed
    out = work / "run"
    _run([str(bin_dir / "growlm-pretrain"), "--shape", "tiny-2L", "--max-steps", "2", "--seq-len", "32",
          "--global-batch-tokens", "256", "--micro-batch-size", "8", "--warmup-steps", "1", "--eval-every", "0",
          "--output-dir", str(out)], cwd=work, env={**env, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"})
    assert (out / "final" / "model.safetensors").is_file() and (out / "final" / "README.md").is_file()
