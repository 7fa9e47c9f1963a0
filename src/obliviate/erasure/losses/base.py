"""What every erasure loss sees: differentiable suffix logits of the forget batch.

    python -c "from obliviate.erasure.losses import LOSSES; print(sorted(LOSSES))"

The forward pass is :func:`obliviate.metrics.teacher_forced.suffix_logits`, the same left-padded,
suffix-only pass the scorer uses, here with gradients on: the loss sees exactly the positions the
memorization metrics score.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from obliviate.metrics.teacher_forced import collate, suffix_logits


@dataclass
class SuffixOutput:
    """Logits predicting each suffix token, ``(B, S, V)``; ``targets`` and ``valid`` are ``(B, S)``."""

    logits: torch.Tensor
    targets: torch.Tensor
    valid: torch.Tensor

    def log_probs(self) -> torch.Tensor:
        return self.logits.float().log_softmax(-1)

    def target_log_probs(self, log_probs: torch.Tensor | None = None) -> torch.Tensor:
        """log p_t(y_t), 0 at padding, ``(B, S)``."""
        log_probs = self.log_probs() if log_probs is None else log_probs
        gathered = log_probs.gather(-1, self.targets.unsqueeze(-1)).squeeze(-1)
        return gathered.masked_fill(~self.valid, 0.0)

    def token_mean(self, values: torch.Tensor) -> torch.Tensor:
        """Per-sequence mean of ``(B, S)`` values over valid suffix positions."""
        return values.masked_fill(~self.valid, 0.0).sum(-1) / self.valid.sum(-1).clamp_min(1)

    def sequence_nll(self) -> torch.Tensor:
        """Mean NLL of each suffix, ``(B,)`` (the ``loss`` metric, differentiable)."""
        return -self.token_mean(self.target_log_probs())


def forward_suffix(model, prefix_ids: list[list[int]], suffix_ids: list[list[int]], pad_token_id: int) -> SuffixOutput:
    """Teacher-forced forward over prefix+suffix with gradients, keeping only suffix logits."""
    ids, mask, pos, start = collate(prefix_ids, suffix_ids, pad_token_id, "left")
    suffix_len = torch.tensor([len(s) for s in suffix_ids])
    device = next(model.parameters()).device
    ids, mask, pos, start, suffix_len = (t.to(device) for t in (ids, mask, pos, start, suffix_len))
    logits, targets, valid = suffix_logits(model, ids, mask, pos, start, suffix_len, "left")
    return SuffixOutput(logits, targets, valid)


class EraseLoss:
    """A forget loss: per-sequence terms over the forget batch, plus an optional retain term.

    The eraser minimizes ``sum_i sequence_losses_i / N_active + retain_loss`` with N_active the number of
    not-yet-forgotten sequences in the chunk (over all processes), so micro-batches and shards add up.
    """

    name: ClassVar[str] = ""
    needs_retain: ClassVar[bool] = False
    needs_reference: ClassVar[bool] = False

    def __init__(self, config):
        self.config = config

    def sequence_losses(self, out: SuffixOutput, reference_log_prob: torch.Tensor | None = None) -> torch.Tensor:
        """``(B,)`` loss of each forget sequence (lower = more forgotten)."""
        raise NotImplementedError

    def retain_loss(self, model, retain_ids: torch.Tensor | None, retain_mask: torch.Tensor | None):
        """A term on retained text (graddiff), or None."""
        return None
