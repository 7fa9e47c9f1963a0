"""Erasure losses, keyed by the recipe's ``method``: emso, ga, graddiff, npo, npo_rt, clipped_ga.

    python -c "from obliviate.erasure.losses import LOSSES; print(LOSSES.names())"

Adding a loss is one new module in this package with a class decorated ``@register_loss("name")``:
every module here is imported below, so the name is valid in recipes as soon as the file exists.
A loss defined elsewhere registers the same way once its module is imported.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from obliviate.registry import Registry, import_package_modules

if TYPE_CHECKING:
    from obliviate.erasure.losses.base import EraseLoss

LOSSES: Registry[EraseLoss] = Registry(
    "loss",
    plural="losses",
    key="method",
    hint="Add one with @register_loss('name') on an EraseLoss subclass in obliviate/erasure/losses/ (docs/erasure.md).",
)
"""Every erasure loss class by the recipe's ``method``."""


def register_loss(name: str):
    """Class decorator registering an :class:`EraseLoss` subclass as ``method: name`` (see :class:`Registry`)."""
    return LOSSES.register(name)


def get_loss(config) -> EraseLoss:
    """The loss object for ``config.method``; an unknown method raises naming the known ones."""
    return LOSSES.get(config.method)(config)


import_package_modules(__name__, __path__)  # each module's @register_loss runs (base holds none)

from obliviate.erasure.losses.base import (  # noqa: E402
    FORGET_REDUCTIONS,
    EraseLoss,
    SuffixOutput,
    forward_suffix,
    retain_nll,
    retain_nll_terms,
)

__all__ = [
    "FORGET_REDUCTIONS",
    "LOSSES",
    "EraseLoss",
    "SuffixOutput",
    "forward_suffix",
    "get_loss",
    "register_loss",
    "retain_nll",
    "retain_nll_terms",
]
