"""Weight selectors, keyed by the recipe's ``selector``: contrastive, magnitude, random, all.

    python -c "from obliviate.erasure.selectors import SELECTORS; print(sorted(SELECTORS))"
"""

from __future__ import annotations

import importlib

SELECTORS: dict[str, type] = {}


def register_selector(name: str):
    def wrap(cls):
        cls.name = name
        SELECTORS[name] = cls
        return cls

    return wrap


def get_selector(config):
    """The selector object for ``config.selector``."""
    if config.selector not in SELECTORS:
        raise ValueError(f"unknown selector {config.selector!r}; known: {', '.join(sorted(SELECTORS))}.")
    return SELECTORS[config.selector](config)


for _module in ("contrastive", "magnitude", "random", "all"):
    importlib.import_module(f"obliviate.erasure.selectors.{_module}")

from obliviate.erasure.selectors.base import Selection, Selector, select_top  # noqa: E402

__all__ = ["SELECTORS", "Selection", "Selector", "get_selector", "register_selector", "select_top"]
