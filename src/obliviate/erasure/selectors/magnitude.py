"""Ablation selector: the weights with the largest erasure-loss gradient, |g_L|, direction ignored.

python -c "from obliviate.erasure.selectors.magnitude import Magnitude; help(Magnitude)"
"""

from __future__ import annotations

from obliviate.erasure.selectors import register_selector
from obliviate.erasure.selectors.base import Selector


@register_selector("magnitude")
class Magnitude(Selector):
    def __init__(self, config):
        super().__init__(config)
        self.streams = {"loss": {"loss": 1.0}}

    def element_score(self, name, grads):
        return grads["loss"].abs_()
