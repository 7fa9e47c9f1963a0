"""The demo's recipe: ``recipes/demo.yaml`` read into :class:`DemoSettings`, every section checked first.

    python -c "from obliviate.demo import load_demo_recipe; print(load_demo_recipe(quick=True).training)"

Sections are config dataclasses (``toy`` -> ToyConfig, ``tracking`` -> TrackConfig, ``erase`` ->
EraseConfig), ``training`` is checked against TRL's SFTConfig, ``utility`` holds benchmark entries, and
``quick`` dotted overrides that ``--quick`` applies. Loading goes through :func:`obliviate.config.load_recipe`.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from obliviate.config import RecipeError, check_keys, load_recipe, read_yaml, section

SECTIONS = ("toy", "training", "tracking", "erase", "utility", "quick")


class DemoError(ValueError):
    """The demo cannot run as asked; the message says what to change."""


def default_recipe() -> Path:
    """The shipped ``recipes/demo.yaml`` (package data: an installed copy finds it too)."""
    from obliviate.recipes import path as recipe_path

    return recipe_path("demo")


def check_quick(quick: Any) -> dict[str, Any]:
    """The ``quick:`` section: dotted keys into the other sections (``training.num_train_epochs: 2``)."""
    quick = dict(quick or {})
    for key in quick:
        if key.split(".", 1)[0] not in SECTIONS[:-1] or "." not in key:
            raise RecipeError(
                f"quick: key {key!r} must be a dotted key into one of {', '.join(SECTIONS[:-1])} "
                "(e.g. training.num_train_epochs)."
            )
    return quick


@dataclass
class DemoSettings:
    """A checked demo recipe: every section built from its dataclass, nothing loaded yet."""

    toy: Any = field(default=None, metadata={"help": "obliviate.toy.ToyConfig fields: the base model and corpus."})
    training: Any = field(default=None, metadata={"help": "TRL SFTConfig fields (output_dir is OUT/track)."})
    tracking: Any = field(default=None, metadata={"help": "obliviate.callbacks.TrackConfig fields."})
    erase: Any = field(default=None, metadata={"help": "obliviate.erasure.EraseConfig fields, gate included."})
    utility: Any = field(default=None, metadata={"help": "Benchmark entries measured before and after erasure."})
    quick: Any = field(default=None, metadata={"help": "Dotted overrides --quick applies (a fast end-to-end run)."})
    recipe: str = field(default="", init=False, metadata={"help": "The file read."})
    is_quick: bool = field(default=False, init=False, metadata={"help": "Whether the quick overrides were applied."})

    def __post_init__(self):
        from obliviate.benchmarks.gate import DEFAULT_ENTRY, TOLERANCE_KEYS
        from obliviate.benchmarks.suite import check_entries, check_entry_keys
        from obliviate.callbacks.config import TrackConfig
        from obliviate.erasure.config import EraseConfig
        from obliviate.toy import ToyConfig

        self.quick = check_quick(self.quick)
        self.toy = section(ToyConfig, self.toy, "toy")
        self.tracking = section(TrackConfig, self.tracking, "tracking")
        self.erase = section(EraseConfig, self.erase, "erase")
        if isinstance(self.erase.gate, dict):  # its shape is GateConfig's to check; the entries' keys too, early
            for i, entry in enumerate(self.erase.gate.get("benchmarks") or []):
                if entry != DEFAULT_ENTRY:  # the default gate on the gate-only split
                    check_entry_keys(entry, f"erase.gate.benchmarks[{i}] ({entry['name']})", (*TOLERANCE_KEYS, "score"))
        self.utility = check_entries(self.utility, "section 'utility'")
        for i, entry in enumerate(self.utility):
            check_entry_keys(entry, f"section 'utility'[{i}] ({entry['name']})")
        self.training = dict(self.training or {})
        if "output_dir" in self.training:
            raise RecipeError("the demo sets training.output_dir itself (OUT/track); remove it and pass --out.")
        from trl import SFTConfig

        check_keys(self.training, {f.name for f in dataclasses.fields(SFTConfig) if f.init}, "section 'training'")


def load_demo_recipe(
    path: str | os.PathLike | None = None, overrides: dict[str, Any] | None = None, quick: bool = False
) -> DemoSettings:
    """Read and check the demo recipe before anything heavy runs.

    Args:
        path: the YAML recipe (default: ``recipes/demo.yaml``).
        overrides: dotted keys set over the recipe (``{"training.num_train_epochs": 4}``); CLI flags.
        quick: apply the recipe's ``quick:`` overrides first (CLI overrides still win).

    Returns:
        DemoSettings.

    Raises:
        RecipeError: a missing file, an unknown section or key (naming the nearest valid one), a bad value.
    """
    path = Path(path) if path is not None else default_recipe()
    where = f"recipe {path}"
    data = read_yaml(path)
    try:
        quick_overrides = check_quick(data.get("quick")) if quick else {}
    except RecipeError as e:
        raise RecipeError(f"{where}: {e}") from None
    # One application: the recipe's quick keys, then the command line's, which win.
    settings = load_recipe(data, DemoSettings, {**quick_overrides, **(overrides or {})}, where)
    settings.recipe, settings.is_quick = str(path), quick
    return settings
