"""YAML recipes as thin overrides of config dataclasses (the way TRL's CLI loads ``--config``).

    python -c "from obliviate.config import load_recipe; help(load_recipe)"

``load_recipe(path, RecipeClass, overrides)`` is the one loader: read the YAML, apply the dotted
overrides once, fill the dataclass; every check is the dataclass's ``__post_init__``. Unknown keys
are errors that name the key, the section, the file and the nearest valid key, raised before any
model is loaded, so a typo fails in the first second rather than after an hour of training.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml


class RecipeError(ValueError):
    """A recipe or override that does not fit the config dataclasses."""


def read_yaml(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise RecipeError(
            f"recipe {path} does not exist. Recipes shipped with obliviate live in recipes/ "
            "(e.g. recipes/erase-emso.yaml)."
        )
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise RecipeError(f"recipe {path} is not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise RecipeError(f"recipe {path} must be a mapping of keys to values, got {type(data).__name__}.")
    return data


def nearest(name: str, valid) -> str:
    match = difflib.get_close_matches(name, list(valid), n=1, cutoff=0.5)
    return f" Did you mean {match[0]!r}?" if match else ""


def check_keys(data: dict, valid, where: str) -> None:
    valid = set(valid)
    for key in data:
        if key not in valid:
            raise RecipeError(
                f"unknown key {key!r} in {where}.{nearest(key, valid)} Valid keys: {', '.join(sorted(valid))}."
            )


_SCALARS = (bool, int, float, str)


def _scalar_type(annotation: Any) -> type | None:
    """``int`` for ``int`` / ``int | None`` / ``Optional[int]`` (likewise float, bool, str); None otherwise."""
    if annotation in _SCALARS:
        return annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        non_none = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(non_none) == 1 and non_none[0] in _SCALARS:
            return non_none[0]
    return None


def _check_type(value: Any, annotation: Any) -> Any:
    """A YAML value of the right scalar type for the field (ints widen to float), else ``ValueError``."""
    kind = _scalar_type(annotation)
    if kind is None or value is None:
        return value
    if kind is str and isinstance(value, os.PathLike):
        return os.fspath(value)
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, kind) and not (kind is not bool and isinstance(value, bool)):
        return value
    raise ValueError(
        f"expected {'true/false' if kind is bool else kind.__name__}, got {type(value).__name__} {value!r}"
    )


def _coerce(value: Any, annotation: Any) -> Any:
    """Turn CLI strings into the field's type; check YAML values, which already have theirs."""
    if not isinstance(value, str):
        return _check_type(value, annotation)
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        if value.lower() in ("none", "null") and type(None) in args:
            return None
        non_none = [a for a in args if a is not type(None)]
        annotation = non_none[0] if len(non_none) == 1 else str
    if annotation is bool:
        if value.lower() in ("1", "true", "yes", "on"):
            return True
        if value.lower() in ("0", "false", "no", "off"):
            return False
        raise RecipeError(f"expected true/false, got {value!r}")
    if annotation in (int, float):
        try:
            return annotation(value)
        except ValueError:
            raise ValueError(f"expected {'an integer' if annotation is int else 'a number'}, got {value!r}") from None
    if annotation is str or annotation is typing.Any:
        return value
    return yaml.safe_load(value)


def from_dict(cls, data: dict[str, Any] | None, where: str | None = None):
    """Instantiate dataclass ``cls`` from ``data``; unknown keys raise :class:`RecipeError`."""
    data = dict(data or {})
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    check_keys(data, fields, where or cls.__name__)
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in data.items():
        try:
            kwargs[key] = _coerce(value, hints.get(key, Any))
        except ValueError as e:
            # Name the key and where it came from (the recipe file and section): "fast" alone says nothing.
            raise RecipeError(f"{key}: {e}, in {where or cls.__name__}.") from None
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise RecipeError(f"{where or cls.__name__}: {e}") from None


def apply_overrides(data: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Set dotted keys (``gate.every``) over a recipe; the CLI's flags win over the file.

    A ``None`` value sets the key to null (``--set gate=null``): callers leave unset flags out.
    """
    data = dict(data)
    for dotted, value in overrides.items():
        *parents, leaf = dotted.split(".")
        node = data
        for i, part in enumerate(parents):
            child = node.get(part)
            if child is not None and not isinstance(child, dict):
                raise RecipeError(
                    f"cannot set {dotted!r}: {'.'.join(parents[: i + 1])} is {child!r}, not a section "
                    "of keys; set the whole key instead."
                )
            node[part] = dict(child or {})
            node = node[part]
        node[leaf] = value
    return data


def section(cls, value: Any, name: str):
    """A recipe section as dataclass ``cls``: ``value`` itself when already one, else built from its mapping.

    For the ``__post_init__`` of a config that holds sections (``tracking:``, ``flag_rule:``): errors name
    the section, and :func:`from_dict` one level up adds the file.
    """
    return value if isinstance(value, cls) else from_dict(cls, value, f"section {name!r}")


def _where(source: Any) -> str:
    if source is None:
        return "the options"
    return "the recipe" if isinstance(source, Mapping) else f"recipe {source}"


def read_recipe(
    source: str | os.PathLike | Mapping | None,
    overrides: dict[str, Any] | None = None,
    valid=None,
    where: str | None = None,
) -> dict[str, Any]:
    """A recipe's mapping with the dotted ``overrides`` applied over it, once.

    Args:
        source: a YAML file, a mapping already read, or None (defaults and overrides only).
        overrides: dotted keys set over the recipe (``{"training.max_steps": 10}``).
        valid: the allowed top-level keys, checked in the file and again after the overrides.
        where: names the recipe in errors (default: ``recipe PATH``).
    """
    where = where or _where(source)
    data = {} if source is None else dict(source) if isinstance(source, Mapping) else read_yaml(source)
    if valid is not None:
        check_keys(data, valid, where)
    data = apply_overrides(data, overrides or {})
    if valid is not None and overrides:
        check_keys(data, valid, f"{where} (with the command-line overrides)")
    return data


def load_recipe(
    source: str | os.PathLike | Mapping | None,
    recipe_class,
    overrides: dict[str, Any] | None = None,
    where: str | None = None,
):
    """Read a recipe into ``recipe_class``, the one loader every command and the demo use.

    The recipe's top-level keys are the fields of ``recipe_class``; every check is the dataclass's own
    (``__post_init__``, which builds its sections with :func:`section`), so a recipe and the Python API
    fail the same way.

    Args:
        source: a YAML file, a mapping, or None for defaults only.
        recipe_class: the dataclass the recipe fills (``TrackRecipe``, ``DemoSettings``, ``BenchConfig``, ...).
        overrides: dotted keys to set over the file, applied once (CLI flags win over the recipe).
        where: names the recipe in errors (default: ``recipe PATH``).

    Returns:
        The ``recipe_class`` instance.

    Raises:
        RecipeError: a missing or invalid file, an unknown key (naming the nearest valid one and where it
            is), or a value the dataclass rejects.
    """
    where = where or _where(source)
    valid = {f.name for f in dataclasses.fields(recipe_class) if f.init}
    return from_dict(recipe_class, read_recipe(source, overrides, valid, where), where)
