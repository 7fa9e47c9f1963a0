"""The recipes shipped with obliviate, found the same way in a checkout and in an installed wheel.

    python -c "from obliviate import recipes; print(recipes.names())"
    obliviate demo --config demo          # a shipped recipe by name, from any directory

The YAML files live in ``recipes/`` at the top of the repository, where the README's commands
(``--config recipes/track-sft.yaml``) read them. ``src/obliviate/_recipes`` is a symbolic link to that
folder, so setuptools copies the files into the wheel as package data and ``importlib.resources``
finds them under the installed package, with no second copy to keep in sync.
"""

from __future__ import annotations

import difflib
import os
from importlib import resources
from pathlib import Path

from obliviate.config import RecipeError

SUFFIX = ".yaml"


def recipe_dir() -> Path:
    """The folder holding the shipped recipes (the checkout's ``recipes/`` or the installed copy)."""
    folder = resources.files("obliviate") / "_recipes"
    # Wheels install as plain files, so the resource is a real directory; a zipped install is not supported.
    return Path(str(folder))


def names() -> list[str]:
    """Every shipped recipe, as the name :func:`path` takes: ``demo``, ``accelerate/ddp-cpu``, ..."""
    root = recipe_dir()
    return sorted(p.relative_to(root).with_suffix("").as_posix() for p in root.rglob(f"*{SUFFIX}"))


def path(name: str) -> Path:
    """The shipped recipe called ``name`` (``"demo"``, ``"erase-emso.yaml"``, ``"accelerate/ddp-cpu"``).

    Raises:
        RecipeError: no shipped recipe has that name; the message lists them and the nearest.
    """
    key = Path(str(name)).as_posix().removesuffix(SUFFIX)
    candidate = recipe_dir() / f"{key}{SUFFIX}"
    if key and candidate.is_file():
        return candidate
    known = names()
    match = difflib.get_close_matches(key, known, n=1, cutoff=0.5)
    hint = f" Did you mean {match[0]!r}?" if match else ""
    raise RecipeError(f"no shipped recipe named {name!r}.{hint} Shipped recipes: {', '.join(known)}.")


def resolve_recipe(path_or_name: str | os.PathLike) -> Path:
    """A recipe file: an existing path as given, else the shipped recipe it names.

    ``recipes/NAME.yaml`` (the form the docs use) falls back to the shipped copy too, so the documented
    commands also work outside a checkout.

    Args:
        path_or_name: a path to a YAML file, or the name of a shipped recipe (see :func:`names`).

    Raises:
        RecipeError: neither an existing file nor a shipped recipe; the message lists the shipped ones.
    """
    given = Path(path_or_name)
    if given.is_file():
        return given
    parts = given.parts
    key = Path(*parts[1:]) if len(parts) > 1 and parts[0] == "recipes" else given
    if given.suffix in ("", SUFFIX) and not given.is_absolute():
        try:
            return path(key.as_posix())
        except RecipeError:
            pass
    raise RecipeError(
        f"recipe {str(path_or_name)!r} is neither a file nor a shipped recipe. "
        f"Shipped recipes (give the name, e.g. --config demo): {', '.join(names())}."
    )
