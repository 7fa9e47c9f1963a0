"""Gradient difference: gradient ascent on the forget suffix plus NLL on retained text.

    python -c "from obliviate.erasure.losses.graddiff import GradDiff; help(GradDiff)"

L = -NLL(forget) + retain_weight * NLL(retain batch); the retain batch is ``retain_batch_size``
texts drawn each step from the retain set (``--retain``), a draw seeded by (seed, chunk, step).
"""

from __future__ import annotations

import torch

from obliviate.erasure.losses import register_loss
from obliviate.erasure.losses.base import EraseLoss, SuffixOutput


@register_loss("graddiff")
class GradDiff(EraseLoss):
    """Forget term as :class:`~obliviate.erasure.losses.ga.GradientAscent`; retain term the LM loss."""

    needs_retain = True

    def sequence_losses(self, out: SuffixOutput, reference_log_prob: torch.Tensor | None = None) -> torch.Tensor:
        return -out.sequence_nll()

    def retain_loss(self, model, retain_ids: torch.Tensor | None, retain_mask: torch.Tensor | None):
        if retain_ids is None or self.config.retain_weight == 0:
            return None
        labels = retain_ids.masked_fill(retain_mask == 0, -100)
        loss = model(input_ids=retain_ids, attention_mask=retain_mask, labels=labels, use_cache=False).loss
        return self.config.retain_weight * loss
