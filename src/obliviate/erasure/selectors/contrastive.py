"""EMSO's contrastive gradient metric (DESIGN §5, reconstructed from the abstract).

    python -c "from obliviate.erasure.selectors.contrastive import Contrastive; help(Contrastive)"

A descent step -eta * g_L on the erasure loss changes the forget suffix's NLL by about
-eta * sum_i g_L,i * g_NLL,i, so weight i helps forgetting by s_i = -g_L,i * g_NLL,i: large when
the loss gradient is large *and* points the way that raises the memorized tokens' loss. With
``method: emso`` g_L is the entropy gradient g_EM of the paper; with the baselines it is their
own loss's gradient (for ``ga`` s_i = g_NLL,i^2, magnitude-only).

``retain_contrast`` (lambda, default 0 = the DESIGN's metric) adds the same first-order estimate for
retained text: the step raises the retain NLL by about -eta * sum_i g_L,i * g_R,i, so
s_i = -g_L,i * (g_NLL,i - lambda * g_R,i) ranks weights by forgetting gained minus retain loss caused.
This is our extension, not part of the reconstruction; docs/perf/erasure.md measures it.
"""

from __future__ import annotations

from obliviate.erasure.selectors import register_selector
from obliviate.erasure.selectors.base import Selector


@register_selector("contrastive")
class Contrastive(Selector):
    needs = ("loss", "nll")

    def __init__(self, config):
        super().__init__(config)
        if config.retain_contrast > 0:
            self.needs = ("loss", "nll", "retain_nll")

    def element_scores(self, params, grads):
        lam = self.config.retain_contrast
        if lam > 0:
            return {n: -(grads["loss"][n] * (grads["nll"][n] - lam * grads["retain_nll"][n])) for n in params}
        return {n: -(grads["loss"][n] * grads["nll"][n]) for n in params}
