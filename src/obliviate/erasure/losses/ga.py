"""Gradient ascent on the forget suffix's NLL (Jang et al. 2022): L = -NLL, unbounded below.

    python -c "from obliviate.erasure.losses.ga import GradientAscent; help(GradientAscent)"
"""

from __future__ import annotations

import torch

from obliviate.erasure.losses import register_loss
from obliviate.erasure.losses.base import EraseLoss, SuffixOutput


@register_loss("ga")
class GradientAscent(EraseLoss):
    """Per-sequence -mean_t(-log p_t(y_t))."""

    def sequence_losses(self, out: SuffixOutput, reference_log_prob: torch.Tensor | None = None) -> torch.Tensor:
        return -out.sequence_nll()
