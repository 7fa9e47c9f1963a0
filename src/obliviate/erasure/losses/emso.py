"""EMSO's loss: entropy maximization on the forget suffix (DESIGN §5, reconstructed from the abstract).

    python -c "from obliviate.erasure.losses.emso import EntropyLoss; help(EntropyLoss)"

``entropy``: L_EM = -mean_t H(p_t), H(p) = -sum_v p_v log p_v. Minimizing KL(p_t || Uniform) =
log V - H(p_t) has the same gradient. ``uniform_ce``: cross-entropy to a uniform target,
-1/V sum_v log p_v = KL(Uniform || p_t) + log V, a different objective that also pushes every
token's probability up from zero. Both are bounded below (by -log V and log V): the model is pushed
toward "confused" on these tokens, not toward arbitrarily low likelihood as gradient ascent is.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from obliviate.erasure.config import ENTROPY_VARIANTS, EraseConfigError
from obliviate.erasure.losses import register_loss
from obliviate.erasure.losses.base import EraseLoss, SuffixOutput


@dataclass
class EMSOConfig:
    """``method_args`` of ``method: emso``."""

    entropy_variant: str = field(
        default="uniform_ce",
        metadata={
            "help": "uniform_ce (CE(U, p_t) = KL(U||p_t) + log V: the ME loss of Yuan et al. 2024, 'A Closer Look at "
            "Machine Unlearning for LLMs') or entropy (-mean H(p_t), the gradient of KL(p_t||U)); "
            "docs/perf/erasure.md has both under the default gate."
        },
    )

    def __post_init__(self):
        if self.entropy_variant not in ENTROPY_VARIANTS:
            raise EraseConfigError(
                f"entropy_variant must be one of {', '.join(ENTROPY_VARIANTS)}; got {self.entropy_variant!r}."
            )


@register_loss("emso")
class EntropyLoss(EraseLoss):
    """-H(p_t) (or CE(Uniform, p_t) for ``uniform_ce``) per suffix token, reduced by ``forget_reduction``."""

    config_class = EMSOConfig

    def sequence_losses(self, out: SuffixOutput, reference_log_prob: torch.Tensor | None = None) -> torch.Tensor:
        log_probs = out.log_probs()
        if self.args.entropy_variant == "uniform_ce":
            per_token = -log_probs.mean(-1)
        else:
            per_token = (log_probs.exp() * log_probs).sum(-1)  # = -H(p_t)
        return self.reduce(out, per_token)
