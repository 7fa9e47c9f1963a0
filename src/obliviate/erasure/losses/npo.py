"""Negative preference optimization (Zhang et al. 2024) on the forget suffix.

    python -c "from obliviate.erasure.losses.npo import NPO; help(NPO)"

L_i = -(2/beta) log sigmoid(-beta (log pi_theta(y|x) - log pi_ref(y|x))), with sequence
log-likelihoods of the suffix and pi_ref the model before erasure. Dropout is off during
erasure, so pi_ref's log-likelihoods never change: they are scored once, before the first step
(``suffix_log_prob`` of :func:`obliviate.metrics.score_sequences`), instead of keeping a frozen
copy of the model in memory.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from obliviate.erasure.losses import register_loss
from obliviate.erasure.losses.base import EraseLoss, SuffixOutput


@register_loss("npo")
class NPO(EraseLoss):
    """Per-sequence NPO term with ``npo_beta`` (default 0.1)."""

    needs_reference = True

    def sequence_losses(self, out: SuffixOutput, reference_log_prob: torch.Tensor | None = None) -> torch.Tensor:
        if reference_log_prob is None:
            raise ValueError("npo needs the reference log-likelihood of each forget suffix.")
        beta = self.config.npo_beta
        log_ratio = out.target_log_probs().sum(-1) - reference_log_prob.to(out.logits.device)
        return -(2.0 / beta) * F.logsigmoid(-beta * log_ratio)
