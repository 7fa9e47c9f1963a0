"""Token-clipped gradient ascent: push down only the forget tokens the model still predicts.

    python -c "from obliviate.erasure.losses.clipped_ga import ClippedGradientAscent; help(ClippedGradientAscent)"

Plain gradient ascent (Jang et al. 2022) keeps pushing every suffix token, and the gradient of
-log p_t(y_t) is largest where p_t(y_t) is already small: most of its effort goes into driving
unlikely tokens toward -inf, which is what wrecks the rest of the model. Here token t contributes
its log-likelihood only while it is still *memorized*: the model's argmax at t is y_t, or
p_t(y_t) > ``clip_probability`` (default 0.1, about a random digit's probability). A token pushed
below both stops pulling; the sequence stops entirely once the forgetting criterion holds (the
eraser's per-sequence stop). L_i = mean over active t of log p_t(y_t) (0 when none is active).
This is obliviate's extension, not a published method; docs/erasure.md gives the measurements.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from obliviate.erasure.config import EraseConfigError
from obliviate.erasure.losses import register_loss
from obliviate.erasure.losses.base import EraseLoss, SuffixOutput


@dataclass
class ClippedGAConfig:
    """``method_args`` of ``method: clipped_ga``."""

    clip_probability: float = field(
        default=0.1,
        metadata={"help": "a forget token stops pulling once it is not the argmax and p(y_t) <= this, in (0, 1)."},
    )

    def __post_init__(self):
        if not 0 < self.clip_probability < 1:
            raise EraseConfigError(f"clip_probability must be in (0, 1); got {self.clip_probability}.")


@register_loss("clipped_ga")
class ClippedGradientAscent(EraseLoss):
    """Per-sequence mean of log p_t(y_t) over the suffix tokens still predicted (argmax or p > clip_probability)."""

    config_class = ClippedGAConfig

    def sequence_losses(self, out: SuffixOutput, reference_log_prob: torch.Tensor | None = None) -> torch.Tensor:
        log_probs = out.log_probs()
        target = out.target_log_probs(log_probs)
        with torch.no_grad():  # which tokens still count is a mask, not part of the gradient
            predicted = log_probs.argmax(-1) == out.targets
            active = out.valid & (predicted | (target > torch.log(torch.tensor(self.args.clip_probability))))
        return (target * active).sum(-1) / out.valid.sum(-1).clamp_min(1)
