"""Erasure losses, keyed by the recipe's ``method``: emso, ga, graddiff, npo, clipped_ga.

    python -c "from obliviate.erasure.losses import LOSSES; print(sorted(LOSSES))"
"""

from __future__ import annotations

import importlib

LOSSES: dict[str, type] = {}


def register_loss(name: str):
    def wrap(cls):
        cls.name = name
        LOSSES[name] = cls
        return cls

    return wrap


def get_loss(config):
    """The loss object for ``config.method``."""
    if config.method not in LOSSES:
        raise ValueError(f"unknown erasure method {config.method!r}; known: {', '.join(sorted(LOSSES))}.")
    return LOSSES[config.method](config)


for _module in ("emso", "ga", "graddiff", "npo", "clipped_ga"):
    importlib.import_module(f"obliviate.erasure.losses.{_module}")

from obliviate.erasure.losses.base import EraseLoss, SuffixOutput, forward_suffix  # noqa: E402

__all__ = ["LOSSES", "EraseLoss", "SuffixOutput", "forward_suffix", "get_loss", "register_loss"]
