"""Gradient ascent down to a reference model: each forget token is pushed only while the model still finds it
likelier than the reference does (``method: ga_to_reference``), plus GradDiff's retain term.

    python -c "from obliviate.erasure.losses.ga_to_reference import GAToReference; help(GAToReference)"

L_i = sum_t max(0, log p_theta(y_t) - log p_ref(y_t) + margin) / mean suffix length, + retain_weight x the
retain term, with p_ref the ``reference_model`` (the model the fine-tuning started from; its per-token
log-likelihoods of every forget suffix are computed once before the first step and the model is freed).

``gradient`` says how a token above the reference is pushed; the value and the point where a token stops
(its log-likelihood gain <= 0) are the same for both:

- ``log_prob`` (default): the gradient of the term itself. On the logits it is (1 - p) times the log-odds
  gradient, so it fades on exactly the tokens a model has memorized hardest: at p = 0.9999 (two copies in SFT
  make that) a secret's token gets 1e-4 of the push, and beside a retain term it barely moves. Measured on
  SmolLM2-135M (docs/real-model.md): 50 kept steps left 6 of 8 such secrets extractable, the forget term flat.
- ``log_odds``: the log-odds gradient (size ~1 at any p) weighted by the token's log-likelihood gain
  max(0, log p - log p_ref), a constant in the step. A secret's token (gain ~7 nats) is pushed hard at any
  p; a format token the base predicts almost as well (p 0.99999 vs 0.9: gain 0.1) barely at all. The
  unweighted log-odds hinge, tried first, pushed such tokens as hard as secrets (their log-odds gain is 9)
  and took the never-trained controls' MA from 0.26 to 0.07.

Why: memorization by a fine-tuning is the likelihood it *added*. A record's format ("555-", "@mailbox.test")
is as likely under the base model as under the fine-tuned one, so its tokens carry no term and are never
pushed: gradient ascent pushes them too, and every record of that format pays (the gate's record text, the
never-trained controls). A secret's digits sit at ~0.1 under the base and ~0.9 after fine-tuning: they are
pushed until they are no likelier than the base finds them, i.e. until greedy decoding no longer
reproduces them, and then left alone. This is the token-level, one-sided form of reverting the fine-tuning
on the forget set (cf. the reference-calibrated membership scores of Carlini et al. 2021 and Mireshghallah
et al. 2022, and NPO's reference ratio, Zhang et al. 2024); obliviate's extension, measured in
docs/perf/erasure.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from obliviate.erasure.config import EraseConfigError
from obliviate.erasure.losses import register_loss
from obliviate.erasure.losses.base import EraseLoss, SuffixOutput
from obliviate.erasure.losses.graddiff import RetainNLL, RetainTermConfig

_NOISE_NATS = 1e-4
GRADIENTS = ("log_prob", "log_odds")


def log_odds(out: SuffixOutput, log_probs: torch.Tensor) -> torch.Tensor:
    """log p - log(1 - p) of each suffix token, ``(B, S)``; log(1 - p) as the logsumexp of the other tokens,
    exact where float32 rounds p to 1 (as in unlikelihood.py)."""
    others = log_probs.scatter(-1, out.targets.unsqueeze(-1), float("-inf")).logsumexp(-1)
    return out.target_log_probs(log_probs) - others


@dataclass
class GAToReferenceConfig(RetainTermConfig):
    """``method_args`` of ``method: ga_to_reference``: retain_weight, retain_objective, gradient, reference_margin."""

    gradient: str = field(
        default="log_prob",
        metadata={
            "help": "how a token above the reference is pushed: log_prob (the term's own gradient, of size 1 - p) or "
            "log_odds (the log-odds gradient weighted by the token's gain: does not fade on a token at p ~ 1)."
        },
    )
    reference_margin: float = field(
        default=0.0,
        metadata={"help": "push each token to this many nats below the reference's log-likelihood of it, >= 0."},
    )

    def __post_init__(self):
        super().__post_init__()
        if self.gradient not in GRADIENTS:
            raise EraseConfigError(f"gradient must be one of {', '.join(GRADIENTS)}; got {self.gradient!r}.")
        if not self.reference_margin >= 0:
            raise EraseConfigError(f"reference_margin must be >= 0; got {self.reference_margin}.")


@register_loss("ga_to_reference")
class GAToReference(RetainNLL, EraseLoss):
    """Token-mean of max(0, log p(y_t) - log p_ref(y_t) + margin) over the forget suffixes, plus the retain term."""

    config_class = GAToReferenceConfig
    needs_token_reference = True
    default_reduction = "token"  # as ga / graddiff

    def __init__(self, config):
        super().__init__(config)
        if not getattr(config, "reference_model", None):
            raise EraseConfigError(
                "method ga_to_reference needs reference_model: the model the fine-tuning started from (a name or "
                "path, e.g. runs/demo/toy/base), whose likelihood of each forgotten token is the floor."
            )

    def sequence_losses(self, out: SuffixOutput, reference_log_prob: torch.Tensor | None = None) -> torch.Tensor:
        if reference_log_prob is None or reference_log_prob.shape != out.valid.shape:
            raise ValueError("ga_to_reference needs the reference's (B, S) log-likelihood of every suffix token.")
        log_probs = out.log_probs()
        gain = out.target_log_probs(log_probs) - reference_log_prob.to(out.logits.device) + self.args.reference_margin
        # A token at the reference's level differs from it only by float rounding (another batch, another
        # padding): Adam would turn that 1e-7 gradient into a full-size step, so below _NOISE_NATS it is zero.
        term = torch.where(gain > _NOISE_NATS, gain, 0.0).masked_fill(~out.valid, 0.0)
        if self.args.gradient == "log_odds":
            # Same value, gradient = term x d(log-odds): the detached parts cancel in the value.
            odds = log_odds(out, log_probs)
            term = term.detach() + term.detach() * (odds - odds.detach())
        return self.reduce(out, term)
