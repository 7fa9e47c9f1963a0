"""EMSO's contrastive gradient metric (DESIGN §5, reconstructed from the abstract).

    python -c "from obliviate.erasure.selectors.contrastive import Contrastive; help(Contrastive)"

A descent step -eta * g_L on the erasure loss changes the forget suffix's NLL by about
-eta * sum_i g_L,i * g_NLL,i, so weight i helps forgetting by s_i = -g_L,i * g_NLL,i: large when
the loss gradient is large *and* points the way that raises the memorized tokens' loss. With
``method: emso`` g_L is the entropy gradient g_EM of the paper; with the baselines it is their
own loss's gradient (for ``ga`` s_i = g_NLL,i^2, magnitude-only).

``contrastive`` is that metric on the forget set alone (lambda = 0), as the EMSO abstract states it ("no
data other than the forget set"). ``contrastive_retain`` (lambda = ``retain_contrast``) adds the same first-order estimate for
retained text: the step raises the retain NLL by about -eta * sum_i g_L,i * g_R,i, so
s_i = -g_L,i * (g_NLL,i - lambda * g_R,i) ranks weights by forgetting gained minus retain loss caused.
This is our extension, not part of the reconstruction; docs/perf/erasure.md measures it.

Two gradient streams suffice, because gradients are linear: g_L and d = grad(NLL - lambda * NLL_R).
For ``ga`` the loss is exactly -NLL, so g_L = -g_NLL and the forget batch needs one backward pass:
the streams are g_NLL and (with lambda > 0) g_R, and s = g_NLL * (g_NLL - lambda * g_R).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from obliviate.erasure.config import EraseConfigError
from obliviate.erasure.selectors import register_selector
from obliviate.erasure.selectors.base import Selector


@dataclass
class ContrastiveRetainConfig:
    """``selector_args`` of ``selector: contrastive_retain``."""

    retain_contrast: float = field(
        default=1.0,
        metadata={
            "help": "lambda in s_i = -g_loss,i * (g_nll_forget,i - lambda * g_nll_retain,i): the first-order forgetting "
            "gain minus the retain-loss increase, >= 0."
        },
    )

    def __post_init__(self):
        if not self.retain_contrast >= 0:
            raise EraseConfigError(f"retain_contrast must be >= 0; got {self.retain_contrast}.")


@register_selector("contrastive")
class Contrastive(Selector):
    def retain_weight(self, config) -> float:
        """lambda: 0 for the paper-faithful metric; the retain-contrast subclass reads ``retain_contrast``."""
        return 0.0

    def __init__(self, config):
        super().__init__(config)
        self.retain_contrast = lam = self.retain_weight(config)
        # GA's loss terms are -NLL exactly (same per-sequence normalization), so its g_L is -g_NLL.
        self.loss_is_negative_nll = config.method == "ga"
        if self.loss_is_negative_nll:
            self.streams = {"nll": {"nll": 1.0}}
            if lam > 0:
                self.streams["retain"] = {"retain_nll": 1.0}
        else:
            self.streams = {"loss": {"loss": 1.0}, "direction": {"nll": 1.0}}
            if lam > 0:
                self.streams["direction"]["retain_nll"] = -lam

    def element_score(self, name, grads):
        if self.loss_is_negative_nll:
            g = grads["nll"]
            if "retain" in grads:  # s = g_N * (g_N - lambda g_R), computed into the retain buffer
                return grads["retain"].mul_(-self.retain_contrast).add_(g).mul_(g)
            return g.square_()
        return grads["loss"].mul_(grads["direction"]).neg_()


@register_selector("contrastive_retain")
class ContrastiveRetain(Contrastive):
    """obliviate's extension: s_i = -g_L,i * (g_NLL,i - lambda * g_R,i), lambda = ``retain_contrast``, with g_R
    the gradient of the LM loss on the loss split of the retained text. Not in the EMSO paper."""

    config_class = ContrastiveRetainConfig

    def retain_weight(self, config) -> float:
        return self.args.retain_contrast
