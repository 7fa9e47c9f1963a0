"""Memorization tracking during fine-tuning: the callback, flag rule, budget and the ``track`` recipe.

obliviate track --config recipes/track-sft.yaml
"""

from obliviate.callbacks.budget import MemorizationBudget
from obliviate.callbacks.config import TrackConfig, TrackingError
from obliviate.callbacks.flagging import FlagRule
from obliviate.callbacks.memorization import MemorizationCallback


def run_track(recipe, overrides=None, callbacks=()):
    """Run a ``track`` recipe (SFTTrainer + :class:`MemorizationCallback`); see :mod:`obliviate.callbacks.track`."""
    from obliviate.callbacks.track import run_track as _run_track

    return _run_track(recipe, overrides, callbacks)


__all__ = ["FlagRule", "MemorizationBudget", "MemorizationCallback", "TrackConfig", "TrackingError", "run_track"]
