"""Ablation selector: every candidate weight (plain full fine-tuning of the erasure loss).

python -c "from obliviate.erasure.selectors.all import AllSelector; help(AllSelector)"
"""

from __future__ import annotations

from obliviate.erasure.selectors import register_selector
from obliviate.erasure.selectors.base import Selection, Selector


@register_selector("all")
class AllSelector(Selector):
    def select(self, params, grads, generator, group=None) -> Selection:
        return Selection(
            {n: None for n in params},
            sum(p.numel() for p in params.values()),
            {n: p.numel() for n, p in params.items()},
        )
