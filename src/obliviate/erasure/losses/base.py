"""What every erasure loss sees: differentiable suffix logits of the forget batch.

    python -c "from obliviate.erasure.losses import LOSSES; print(sorted(LOSSES))"

The forward pass is :func:`obliviate.metrics.teacher_forced.suffix_logits`, the same left-padded,
suffix-only pass the scorer uses, here with gradients on: the loss sees exactly the positions the
memorization metrics score.

``forget_reduction`` (every loss): ``token`` averages the per-token terms over all suffix tokens of
the batch, as a Hugging Face ``model(labels=...).loss`` does (open-unlearning, Jang et al. 2022), so a
long suffix weighs more; ``sequence`` averages each suffix's own token mean, then over sequences, so
every sequence weighs the same. A loss returns per-sequence values l_i and the eraser minimizes
sum_i l_i / N_active; for ``token`` l_i = (sum over i's tokens) / mean_length, mean_length being the
active set's mean suffix length (``EraseLoss.mean_suffix_length`` when the eraser sets it, else the
micro-batch's own: exact whenever the active set is one micro-batch).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from obliviate.erasure.config import component_args
from obliviate.metrics.teacher_forced import collate, suffix_logits

FORGET_REDUCTIONS = ("token", "sequence")


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

    def lengths(self) -> torch.Tensor:
        """Valid suffix positions of each sequence, ``(B,)`` float."""
        return self.valid.sum(-1).float()

    def reduce(self, per_token: torch.Tensor, reduction: str, mean_length: float | None = None) -> torch.Tensor:
        """``(B,)`` terms from ``(B, S)`` per-token values whose sum / N_active is the ``reduction`` mean.

        ``sequence``: each suffix's token mean. ``token``: each suffix's token sum / ``mean_length``
        (the active set's mean suffix length; this batch's own when None), so the sum over the active set
        divided by its size is the mean over all of its tokens.
        """
        if reduction == "sequence":
            return self.token_mean(per_token)
        if reduction != "token":
            raise ValueError(f"forget_reduction must be one of {', '.join(FORGET_REDUCTIONS)}, got {reduction!r}")
        total = per_token.masked_fill(~self.valid, 0.0).sum(-1)
        return total / (mean_length if mean_length is not None else self.lengths().mean())

    def weigh(self, per_sequence: torch.Tensor, reduction: str, mean_length: float | None = None) -> torch.Tensor:
        """Sequence-level terms (NPO's) under ``reduction``: as they are for ``sequence``; for ``token`` each is
        weighted by its suffix length / ``mean_length``, i.e. every token carries its sequence's term."""
        if reduction == "sequence":
            return per_sequence
        if reduction != "token":
            raise ValueError(f"forget_reduction must be one of {', '.join(FORGET_REDUCTIONS)}, got {reduction!r}")
        lengths = self.lengths()
        return per_sequence * lengths / (mean_length if mean_length is not None else lengths.mean())


def forward_suffix(model, prefix_ids: list[list[int]], suffix_ids: list[list[int]], pad_token_id: int) -> SuffixOutput:
    """Teacher-forced forward over prefix+suffix with gradients, keeping only suffix logits."""
    ids, mask, pos, start = collate(prefix_ids, suffix_ids, pad_token_id, "left")
    suffix_len = torch.tensor([len(s) for s in suffix_ids])
    device = next(model.parameters()).device
    ids, mask, pos, start, suffix_len = (t.to(device) for t in (ids, mask, pos, start, suffix_len))
    logits, targets, valid = suffix_logits(model, ids, mask, pos, start, suffix_len, "left")
    return SuffixOutput(logits, targets, valid)


def retain_nll(model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor | None:
    """Token-mean NLL of a tokenized retain batch, the same whatever side the tokenizer padded.

    Each row's real tokens are re-collated as the scorer collates them: explicit ``position_ids``
    and the row's first token only as context (nothing before it to predict it from), so a shorter
    row is never predicted from a pad position nor shifted in absolute position. Equals the Hugging
    Face ``model(labels=...).loss`` of the right-padded batch. None when no row has two tokens.
    """
    rows = [row[m.bool()].tolist() for row, m in zip(input_ids, attention_mask)]
    rows = [r for r in rows if len(r) >= 2]
    if not rows:
        return None
    # Pad id 0 is any valid id: padding is masked out and its logits are never read.
    return sum(retain_nll_terms(model, rows, 0))


def retain_nll_terms(model, rows: list[list[int]], pad_token_id: int, rows_per_pass: int | None = None):
    """The token-mean NLL of ``rows`` (token ids, each >= 2 tokens) as per-pass shares that sum to it.

    One place for the retain NLL (graddiff's and npo_rt's retain term, the contrastive_retain selector):
    rows collated as the scorer does (explicit positions, each row's first token only context), at most
    ``rows_per_pass`` rows a forward pass so memory stays bounded; each share divides by the whole batch's
    token count, so backward on each in turn accumulates exactly the gradient of the full mean.
    """
    targets = sum(len(r) - 1 for r in rows)
    step = rows_per_pass or len(rows)
    for start in range(0, len(rows), step):
        part = rows[start : start + step]
        out = forward_suffix(model, [r[:1] for r in part], [r[1:] for r in part], pad_token_id)
        yield -out.target_log_probs().sum() / targets


class EraseLoss:
    """A forget loss: per-sequence terms over the forget batch, plus an optional retain term.

    The eraser minimizes ``sum_i sequence_losses_i / N_active + retain_loss`` with N_active the number of
    not-yet-forgotten sequences in the chunk (over all processes), so micro-batches and shards add up.
    ``mean_suffix_length`` (the active set's total suffix tokens / N_active) may be set by the eraser
    before each pass; ``forget_reduction: token`` is then the exact token mean over the active set.
    """

    name: ClassVar[str] = ""
    config_class: ClassVar[type | None] = None
    """The dataclass of this loss's own settings (the recipe's ``method_args``); None: it has none."""
    needs_retain: ClassVar[bool] = False
    needs_reference: ClassVar[bool] = False
    needs_token_reference: ClassVar[bool] = False
    """True: ``sequence_losses`` gets the ``reference_model``'s ``(B, S)`` log-likelihood of each suffix token."""
    default_reduction: ClassVar[str] = "sequence"
    """``forget_reduction`` when the config leaves it null: the convention of the loss's paper and peers."""

    def __init__(self, config):
        self.config = config
        # EraseConfig resolved method_args (flat aliases included) against config_class already.
        self.args = component_args(self.config_class, getattr(config, "method_args", None))
        self.reduction = getattr(config, "forget_reduction", None) or self.default_reduction
        if self.reduction not in FORGET_REDUCTIONS:
            raise ValueError(f"forget_reduction must be one of {', '.join(FORGET_REDUCTIONS)}, got {self.reduction!r}")
        self.mean_suffix_length: float | None = None

    def reduce(self, out: SuffixOutput, per_token: torch.Tensor) -> torch.Tensor:
        """``(B,)`` forget terms from per-token values under this loss's ``forget_reduction``."""
        return out.reduce(per_token, self.reduction, self.mean_suffix_length)

    def sequence_losses(self, out: SuffixOutput, reference_log_prob: torch.Tensor | None = None) -> torch.Tensor:
        """``(B,)`` loss of each forget sequence (lower = more forgotten)."""
        raise NotImplementedError

    def retain_loss(self, retain_nll: torch.Tensor) -> torch.Tensor | None:
        """The loss's term on retained text given (a share of) the retain NLL, or None (no retain term)."""
        return None
