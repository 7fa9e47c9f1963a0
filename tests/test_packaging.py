"""Installed, not only cloned: the shipped recipes resolve by name, and a built wheel runs the demo on its own.

python -m pytest -q tests/test_packaging.py               # the resolver (fast)
python -m pytest -q -m slow tests/test_packaging.py       # build the wheel, install it, run the demo
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from obliviate import recipes
from obliviate.config import RecipeError
from obliviate.demo import default_recipe

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted(p.relative_to(ROOT / "recipes").with_suffix("").as_posix() for p in (ROOT / "recipes").rglob("*.yaml"))


def test_every_recipe_of_the_checkout_is_shipped_under_its_name():
    assert {"demo", "erase-emso", "track-sft", "utility", "accelerate/ddp-cpu"} <= set(SHIPPED)
    assert recipes.names() == SHIPPED
    for name in SHIPPED:
        assert recipes.path(name).read_bytes() == (ROOT / "recipes" / f"{name}.yaml").read_bytes(), name
    assert recipes.path("erase-emso.yaml") == recipes.path("erase-emso")
    assert default_recipe() == recipes.path("demo")


def test_resolve_prefers_a_real_file_then_falls_back_to_the_shipped_recipe(tmp_path, monkeypatch):
    own = tmp_path / "demo.yaml"
    own.write_text("toy: {seed: 1}\n")
    monkeypatch.chdir(tmp_path)
    assert recipes.resolve_recipe("demo.yaml") == Path("demo.yaml")  # the user's file in the cwd wins
    assert recipes.resolve_recipe("demo") == recipes.path("demo")
    # The documented form works outside a checkout: there is no recipes/ folder in tmp_path.
    assert recipes.resolve_recipe("recipes/track-sft.yaml") == recipes.path("track-sft")
    assert recipes.resolve_recipe(Path("recipes") / "accelerate" / "ddp-cpu.yaml") == recipes.path("accelerate/ddp-cpu")


def test_unknown_recipes_say_what_is_shipped(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(RecipeError, match=r"no shipped recipe named 'erase-emsoo'. Did you mean 'erase-emso'\?"):
        recipes.path("erase-emsoo")
    with pytest.raises(
        RecipeError, match=r"'mine.yaml' is neither a file nor a shipped recipe.*--config demo.*utility"
    ):
        recipes.resolve_recipe("mine.yaml")
    with pytest.raises(RecipeError, match="neither a file nor a shipped recipe"):
        recipes.resolve_recipe(tmp_path / "demo.yaml")  # an absolute path is a file or nothing


# --- the built wheel ---------------------------------------------------------------------------------


def _clean_env() -> dict[str, str]:
    """The environment without the test run's PYTHONPATH, which would put the source tree first."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP")}
    env.update(
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        HF_EVALUATE_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        OMP_NUM_THREADS="1",
        PIP_NO_INDEX="1",
        PIP_DISABLE_PIP_VERSION_CHECK="1",
    )
    return env


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel built from a copy of what a release holds (the source tree stays free of build/)."""
    tree = tmp_path_factory.mktemp("tree")
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "build")
    shutil.copytree(ROOT / "src", tree / "src", symlinks=True, ignore=ignore)  # _recipes stays a link
    shutil.copytree(ROOT / "recipes", tree / "recipes")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, tree / name)
    dist = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", str(tree), "-w", str(dist)],
        check=True,
        cwd=tree,
        env=_clean_env(),
        timeout=300,
    )
    (built,) = dist.glob("obliviate-*.whl")
    return built


@pytest.mark.slow
def test_wheel_ships_every_recipe_as_a_file(wheel):
    with zipfile.ZipFile(wheel) as archive:
        members = set(archive.namelist())
        shipped = sorted(
            m.removeprefix("obliviate/_recipes/").removesuffix(".yaml")
            for m in members
            if m.startswith("obliviate/_recipes/")
        )
        assert shipped == SHIPPED
        # Real copies, not the link: the installed recipe reads like the checkout's.
        assert archive.read("obliviate/_recipes/demo.yaml") == (ROOT / "recipes" / "demo.yaml").read_bytes()
    assert "obliviate/recipes.py" in members and "obliviate/evaluate_metrics/exact_match/exact_match.py" in members


@pytest.mark.slow
def test_installed_wheel_runs_the_quick_demo_from_an_empty_directory(wheel, tmp_path):
    """pip install (not editable) into a fresh venv, then `obliviate demo --quick` where no checkout is near."""
    venv = tmp_path / "venv"
    # No pip of its own: the running environment's pip and dependencies (torch, transformers, ...) are reused
    # through a .pth line, so nothing is downloaded; that path's own .pth files (an editable obliviate) are not run.
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    Path(site, "_shared_env.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    env = _clean_env()
    # --no-index: the dependencies must already be satisfied by the shared environment.
    subprocess.run([str(python), "-m", "pip", "install", "-q", str(wheel)], check=True, env=env, timeout=300)

    empty = tmp_path / "elsewhere"
    empty.mkdir()
    where = subprocess.run(
        [str(python), "-c", "import obliviate; print(obliviate.__file__)"],
        cwd=empty,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    assert Path(where).is_relative_to(venv) and not Path(where).is_relative_to(ROOT), where

    env["OBLIVIATE_CACHE"] = str(tmp_path / "cache")
    run = subprocess.run(
        [str(venv / "bin" / "obliviate"), "demo", "--quick", "--out", "out"],
        cwd=empty,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    summary = json.loads((empty / "out" / "demo.json").read_text())
    assert Path(summary["recipe"]).is_relative_to(venv), summary["recipe"]  # the installed copy of demo.yaml
    assert summary["quick"] is True
    assert (empty / "out" / "report.md").is_file() and (empty / "out" / "erase" / "erasure_report.json").is_file()
    assert "report: out/report.html" in run.stdout
