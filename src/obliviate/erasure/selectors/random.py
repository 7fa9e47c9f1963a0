"""Ablation selector: ``select_fraction`` of the units drawn uniformly at random (seeded by seed and chunk).

python -c "from obliviate.erasure.selectors.random import RandomSelector; help(RandomSelector)"
"""

from __future__ import annotations

import torch

from obliviate.erasure.selectors import register_selector
from obliviate.erasure.selectors.base import Selector, unit_count


@register_selector("random")
class RandomSelector(Selector):
    def unit_scores(self, params, grads, generator):
        # One uniform draw per unit (not summed per-element noise, which would favour large tensors).
        return {
            n: torch.rand(unit_count(p.shape, self.config.granularity), generator=generator) for n, p in params.items()
        }
