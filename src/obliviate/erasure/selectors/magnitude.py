"""Ablation selector: the weights with the largest erasure-loss gradient, |g_L|, direction ignored.

    python -c "from obliviate.erasure.selectors.magnitude import Magnitude; help(Magnitude)"
"""

from __future__ import annotations

from obliviate.erasure.selectors import register_selector
from obliviate.erasure.selectors.base import Selector


@register_selector("magnitude")
class Magnitude(Selector):
    needs = ("loss",)

    def element_scores(self, params, grads):
        return {n: grads["loss"][n].abs() for n in params}
