"""How ``EraseConfig`` resolves ``method_args`` / ``selector_args``: each loss and selector owns its settings.

A loss or selector class names its settings dataclass as ``config_class``; :func:`resolve_args` checks the
recipe's ``method_args`` (or ``selector_args``) against it, folds in the flat keys written before those
sections existed (:data:`METHOD_ALIASES`, :data:`SELECTOR_ALIASES`), and :func:`component_args` builds the
instance a component reads. ``EraseConfig.__post_init__`` (erasure/config.py) calls them.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from obliviate.erasure.config import EraseConfig

METHOD_ALIASES = ("entropy_variant", "retain_weight", "npo_beta", "clip_probability")
"""Flat recipe keys that are aliases of a loss's ``method_args`` (the recipes written before method_args)."""
SELECTOR_ALIASES = ("retain_contrast",)
"""Flat recipe keys that are aliases of a selector's ``selector_args``."""


def component_args(config_class: type | None, args: dict | None):
    """An instance of ``config_class`` (a loss's or selector's settings) from ``args``; None without a class.

    Keys ``config_class`` does not have are left out, so a config resolved for another component still builds
    this one's defaults; :class:`EraseConfig` has already refused unknown keys by then.
    """
    if config_class is None:
        return None
    fields = {f.name for f in dataclasses.fields(config_class)}
    return config_class(**{k: v for k, v in (args or {}).items() if k in fields})


def resolve_args(config: EraseConfig, component: type, key: str, aliases: tuple[str, ...], what: str) -> dict:
    """``config.<key>`` checked against ``component.config_class`` with the flat aliases folded in, as a full dict.

    A flat alias the component has is moved into the args (and set to None on ``config``, so ``to_dict()``
    round-trips); one it does not have is ignored, as before method_args existed (a shared recipe may set
    ``entropy_variant`` for runs of several methods). The same field given both ways is an error.
    """
    # Imported here: config.py imports this module at its top, so EraseConfigError is not defined yet then.
    from obliviate.config import RecipeError, from_dict
    from obliviate.erasure.config import EraseConfigError

    given = getattr(config, key)
    if given is None:
        given = {}
    if not isinstance(given, dict):
        raise EraseConfigError(f"{key} must be a mapping of {what}'s settings; got {given!r}.")
    config_class = component.config_class
    fields = {f.name for f in dataclasses.fields(config_class)} if config_class is not None else set()
    merged = dict(given)
    for name in aliases:
        value = getattr(config, name)
        if value is None or name not in fields:
            continue
        if name in given:
            raise EraseConfigError(
                f"{name} is given twice, as the flat key `{name}: {value}` and as "
                f"`{key}: {{{name}: {given[name]}}}`; keep one of them."
            )
        merged[name] = value
        setattr(config, name, None)
    if config_class is None:
        if merged:
            raise EraseConfigError(
                f"{what} has no settings of its own, so {key} must be empty; got {', '.join(merged)}."
            )
        return {}
    try:
        return dataclasses.asdict(from_dict(config_class, merged, f"{key} of {what}"))
    except RecipeError as e:
        raise EraseConfigError(str(e)) from None
