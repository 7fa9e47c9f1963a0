"""Reproductions of the source papers' findings on the built-in toy model (docs/studies.md).

    obliviate study recipes/studies/skew.yaml --out runs/studies/skew
    obliviate study recipes/studies/finetune_method.yaml --minimal --out /tmp/ft

Each study is one module with a config dataclass and ``run_study(config, out) -> dict``;
:func:`run_recipe` reads a recipe's ``study`` key and runs it.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path

STUDIES = {
    "skew": ("obliviate.studies.skew", "SkewConfig"),
    "finetune_method": ("obliviate.studies.finetune_method", "FinetuneMethodConfig"),
    "density": ("obliviate.studies.density", "DensityStudyConfig"),
    "erasure": ("obliviate.studies.erasure", "ErasureStudyConfig"),
}
"""study name -> (module, config class)."""


def study_of(recipe: str | os.PathLike):
    """The module and config class of the recipe's ``study``."""
    from obliviate.config import read_yaml
    from obliviate.studies.common import StudyError

    name = read_yaml(recipe).get("study")
    if name not in STUDIES:
        raise StudyError(f"recipe {recipe} has study: {name!r}; give one of {', '.join(STUDIES)}.")
    module_name, class_name = STUDIES[name]
    module = importlib.import_module(module_name)
    return module, getattr(module, class_name)


def run_recipe(
    recipe: str | os.PathLike, out: str | os.PathLike, minimal: bool = False, overrides: dict | None = None
) -> dict:
    """Load a study recipe (``--minimal``: its ``minimal:`` overrides) and run it into ``out``."""
    from obliviate.studies.common import load_study

    module, config_class = study_of(recipe)
    config = load_study(recipe, config_class, minimal, overrides)
    return module.run_study(config, Path(out))
