"""The real-model recipes as shipped: they load into their config classes, and run.sh wires what they name.

python -m pytest -q tests/test_real_recipes.py
"""

from __future__ import annotations

from pathlib import Path

from obliviate.commands.erase import _split
from obliviate.config import read_recipe
from obliviate.erasure.losses import get_loss

ROOT = Path(__file__).resolve().parents[1]
REAL = ROOT / "recipes" / "real"


def test_erase_recipe_is_ga_to_reference_in_log_odds_with_the_kl_retain_term_under_the_default_gate():
    paths, config = _split(read_recipe(str(REAL / "erase.yaml"), {}), "erase.yaml")
    assert config.method == "ga_to_reference" and config.reference_model == "runs/real/base"
    assert config.method_args["retain_objective"] == "kl" and config.method_args["space"] == "log_odds"
    loss = get_loss(config)
    assert loss.needs_token_reference and loss.retain_objective == "kl" and loss.args.space == "log_odds"
    assert config.gate == {"every": 5, "benchmarks": ["default"]}
    assert paths["heldout"] == "runs/real/data/heldout.jsonl" and paths["retain"] == "runs/real/data/retain.jsonl"
    assert paths["heldout"] != paths["retain"]  # held-out text no loss and no gate reads


def test_run_sh_links_the_reference_and_takes_the_erase_recipe_from_the_environment():
    script = (REAL / "run.sh").read_text()
    assert 'ln -sfn "$MODEL" "$RUN/base"' in script  # erase.yaml's reference_model: runs/real/base
    assert "ERASE_RECIPE=${ERASE_RECIPE:-recipes/real/erase.yaml}" in script
    assert '--config "$ERASE_RECIPE"' in script


def test_the_emso_recipe_still_loads():
    _, config = _split(read_recipe(str(REAL / "erase-emso.yaml"), {}), "erase-emso.yaml")
    assert config.method == "emso" and get_loss(config) is not None


def test_the_band_recipe_gates_against_the_base_model_too():
    _, config = _split(read_recipe(str(REAL / "erase-band.yaml"), {}), "erase-band.yaml")
    assert config.gate == {"every": 5, "benchmarks": ["default"], "reference": True}
    assert config.reference_model == "runs/real/base"  # the gate's second anchor, linked by run.sh
    assert get_loss(config).retain_objective == "no_worse"
