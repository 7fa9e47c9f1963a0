"""Gradient difference: gradient ascent on the forget suffix plus NLL on retained text.

    python -c "from obliviate.erasure.losses.graddiff import GradDiff; help(GradDiff)"

L = -NLL(forget) + retain_weight * NLL(retain batch) (open-unlearning's ``GradDiff`` with gamma = 1,
alpha = ``retain_weight``); the retain batch is ``retain_batch_size`` texts drawn each step from the
retain set (``--retain``), a draw seeded by (seed, chunk, step). The retain NLL is the token mean over
the batch, computed padding-independently by :func:`~obliviate.erasure.losses.base.retain_nll`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from obliviate.erasure.config import EraseConfigError
from obliviate.erasure.losses import register_loss
from obliviate.erasure.losses.base import EraseLoss, SuffixOutput


@dataclass
class RetainTermConfig:
    """``method_args`` of the losses with a retain term (graddiff; npo_rt adds npo_beta)."""

    retain_weight: float = field(default=1.0, metadata={"help": "weight of the retain term (alpha), >= 0."})
    retain_objective: str = field(
        default="nll",
        metadata={
            "help": "nll: the retain text's NLL (the published GradDiff / NPO-RT); kl: KL(original || current) on it "
            "(erasure/retain_kl.py), which keeps the model where it was instead of fitting the text; no_worse: the "
            "NLL's rise above the original's, token by token (first-order at the start, where the KL is flat)."
        },
    )

    def __post_init__(self):
        from obliviate.erasure.retain_kl import RETAIN_OBJECTIVES

        if not self.retain_weight >= 0:
            raise EraseConfigError(f"retain_weight must be >= 0; got {self.retain_weight}.")
        if self.retain_objective not in RETAIN_OBJECTIVES:
            raise EraseConfigError(
                f"retain_objective must be one of {', '.join(RETAIN_OBJECTIVES)}; got {self.retain_objective!r}."
            )


class RetainNLL:
    """Mixin: ``retain_weight`` x the retain batch's token-mean NLL, or its KL to the original (graddiff, npo_rt)."""

    needs_retain = True

    @property
    def retain_objective(self) -> str:
        return self.args.retain_objective

    def retain_loss(self, retain_nll: torch.Tensor) -> torch.Tensor | None:
        weight = self.args.retain_weight
        return None if weight == 0 else weight * retain_nll


@register_loss("graddiff")
class GradDiff(RetainNLL, EraseLoss):
    """Forget term as :class:`~obliviate.erasure.losses.ga.GradientAscent`; retain term the LM loss."""

    config_class = RetainTermConfig

    default_reduction = "token"  # Jang et al.'s and open-unlearning's token mean over the batch

    def sequence_losses(self, out: SuffixOutput, reference_log_prob: torch.Tensor | None = None) -> torch.Tensor:
        return self.reduce(out, out.target_log_probs())
