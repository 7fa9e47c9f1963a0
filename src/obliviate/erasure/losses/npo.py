"""Negative preference optimization (Zhang et al. 2024) on the forget suffix.

    python -c "from obliviate.erasure.losses.npo import NPO; help(NPO)"

L_i = -(2/beta) log sigmoid(-beta (log pi_theta(y|x) - log pi_ref(y|x))), with sequence
log-likelihoods of the suffix (summed over its tokens) and pi_ref the model before erasure. Dropout
is off during erasure, so pi_ref's log-likelihoods never change: they are scored once, before the
first step (``suffix_log_prob`` of :func:`obliviate.metrics.score_sequences`), instead of keeping a
frozen copy of the model in memory.

``npo`` is the paper's pure NPO (no retain term). ``npo_rt`` adds ``retain_weight`` x retain NLL, the
paper's NPO-RT and open-unlearning's ``NPO`` (which defaults to alpha = 1, as ``retain_weight`` does).
The NPO term is per sequence, so ``forget_reduction: sequence`` (the mean over sequences) is the
paper's; ``token`` weighs each sequence's term by its suffix length (every token carries it).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from obliviate.erasure.losses import register_loss
from obliviate.erasure.losses.base import EraseLoss, SuffixOutput
from obliviate.erasure.losses.graddiff import RetainNLL


@register_loss("npo")
class NPO(EraseLoss):
    """Per-sequence NPO term with ``npo_beta`` (default 0.1)."""

    needs_reference = True

    def sequence_losses(self, out: SuffixOutput, reference_log_prob: torch.Tensor | None = None) -> torch.Tensor:
        if reference_log_prob is None:
            raise ValueError(f"{self.name} needs the reference log-likelihood of each forget suffix.")
        beta = self.config.npo_beta
        log_ratio = out.target_log_probs().sum(-1) - reference_log_prob.to(out.logits.device)
        terms = -(2.0 / beta) * F.logsigmoid(-beta * log_ratio)
        return out.weigh(terms, self.reduction, self.mean_suffix_length)


@register_loss("npo_rt")
class NPORetain(RetainNLL, NPO):
    """NPO plus ``retain_weight`` x the retain batch's NLL (NPO-RT; open-unlearning's NPO)."""
