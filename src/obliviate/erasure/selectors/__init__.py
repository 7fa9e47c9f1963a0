"""Weight selectors, keyed by the recipe's ``selector``: contrastive, magnitude, random, all.

    python -c "from obliviate.erasure.selectors import SELECTORS; print(SELECTORS.names())"

Adding a selector is one new module in this package with a class decorated
``@register_selector("name")``: every module here is imported below.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from obliviate.registry import Registry, import_package_modules

if TYPE_CHECKING:
    from obliviate.erasure.selectors.base import Selector

SELECTORS: Registry[Selector] = Registry(
    "selector",
    key="selector",
    hint="Add one with @register_selector('name') on a Selector subclass in obliviate/erasure/selectors/ "
    "(docs/erasure.md).",
)
"""Every weight selector class by the recipe's ``selector``."""


def register_selector(name: str):
    """Class decorator registering a :class:`Selector` subclass as ``selector: name`` (see :class:`Registry`)."""
    return SELECTORS.register(name)


def get_selector(config) -> Selector:
    """The selector object for ``config.selector``; an unknown name raises naming the known ones."""
    return SELECTORS.get(config.selector)(config)


import_package_modules(__name__, __path__)  # each module's @register_selector runs (base holds none)

from obliviate.erasure.selectors.base import Selection, Selector, select_top  # noqa: E402

__all__ = ["SELECTORS", "Selection", "Selector", "get_selector", "register_selector", "select_top"]
