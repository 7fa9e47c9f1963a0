"""Gradient ascent on the forget suffix's NLL (Jang et al. 2022): L = -NLL, unbounded below.

    python -c "from obliviate.erasure.losses.ga import GradientAscent; help(GradientAscent)"

With ``forget_reduction: token`` L = -(sum of the batch's suffix-token NLLs) / (their number), the
Hugging Face ``-model(labels=...).loss`` Jang et al. and open-unlearning's ``GradAscent`` minimize;
``sequence`` averages each suffix's mean NLL over sequences instead.
"""

from __future__ import annotations

import torch

from obliviate.erasure.losses import register_loss
from obliviate.erasure.losses.base import EraseLoss, SuffixOutput


@register_loss("ga")
class GradientAscent(EraseLoss):
    """Per-sequence terms of -NLL (log p_t(y_t) reduced by ``forget_reduction``)."""

    default_reduction = "token"  # Jang et al.'s and open-unlearning's token mean over the batch

    def sequence_losses(self, out: SuffixOutput, reference_log_prob: torch.Tensor | None = None) -> torch.Tensor:
        return self.reduce(out, out.target_log_probs())
