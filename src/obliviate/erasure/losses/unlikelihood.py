"""Unlikelihood erasure: minimize -log(1 - p_t(y_t)) on the forget suffix, plus NLL on retained text.

    python -c "from obliviate.erasure.losses.unlikelihood import Unlikelihood; help(Unlikelihood)"

The unlikelihood objective of Welleck et al. 2019 (arXiv 1908.04319), applied to the forget suffix
tokens themselves, beside GradDiff's retain term (``retain_weight`` x the retain batch's NLL).

Why it suits memorized text: gradient ascent's token gradient on the logits is p - onehot(y), of size
(1 - p): it vanishes on exactly the tokens a model has memorized (p close to 1), so GA spends its
drift budget pushing already-unlikely tokens toward -inf while a repeated canary (p ~ 1 on every digit)
barely moves. The unlikelihood term's gradient is p / (1 - p) times GA's, so it is largest where
p_t(y_t) is largest and fades once p_t(y_t) is small: a token is pushed until it is no longer
predicted, then left alone, without a clip or a cap.
"""

from __future__ import annotations

import torch

from obliviate.erasure.losses import register_loss
from obliviate.erasure.losses.base import EraseLoss, SuffixOutput
from obliviate.erasure.losses.graddiff import RetainNLL, RetainTermConfig


def log_one_minus_p(out: SuffixOutput) -> torch.Tensor:
    """log(1 - p_t(y_t)) of each suffix token, ``(B, S)``, as logsumexp of the other tokens' log-probabilities.

    Exact and differentiable even where float32 rounds p_t(y_t) to 1 (a memorized token's usual state), which
    log1p(-exp(log p)) is not: its value is -inf there and any clamp zeroes the gradient that matters most.
    """
    others = out.log_probs().scatter(-1, out.targets.unsqueeze(-1), float("-inf"))
    return others.logsumexp(-1)


@register_loss("unlikelihood")
class Unlikelihood(RetainNLL, EraseLoss):
    """Forget term: -log(1 - p_t(y_t)) over the suffix tokens (0 once forgotten); retain term the LM loss."""

    config_class = RetainTermConfig

    default_reduction = "token"  # as graddiff: the token mean over the batch

    def sequence_losses(self, out: SuffixOutput, reference_log_prob: torch.Tensor | None = None) -> torch.Tensor:
        per_token = -log_one_minus_p(out).masked_fill(~out.valid, 0.0)
        return self.reduce(out, per_token)
