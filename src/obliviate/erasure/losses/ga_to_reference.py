"""Gradient ascent down to a reference model: each forget token is pushed only while the model still finds it
likelier than the reference does (``method: ga_to_reference``), plus GradDiff's retain term.

    python -c "from obliviate.erasure.losses.ga_to_reference import GAToReference; help(GAToReference)"

L_i = sum_t max(0, s_theta(y_t) - s_ref(y_t) + margin) / mean suffix length, + retain_weight x the
retain term, with s_ref from the ``reference_model`` (the model the fine-tuning started from; its per-token
scores of every forget suffix are computed once before the first step and the model is freed).

Why: memorization by a fine-tuning is the likelihood it *added*. A record's format ("555-", "@mailbox.test")
is as likely under the base model as under the fine-tuned one, so its tokens carry no term and are never
pushed: gradient ascent pushes them too, and every record of that format pays (the gate's record text, the
never-trained controls). A secret's digits sit at ~0.1 under the base and ~0.9 after fine-tuning: they are
pushed until they are no likelier than the base finds them, i.e. until greedy decoding no longer
reproduces them, and then left alone. This is the token-level, one-sided form of reverting the fine-tuning
on the forget set (cf. the reference-calibrated membership scores of Carlini et al. 2021 and Mireshghallah
et al. 2022, and NPO's reference ratio, Zhang et al. 2024); obliviate's extension, measured in
docs/perf/erasure.md.

``space`` is the score s; the floor is the same, the way there is not:

- ``log_prob`` (default): log p. Its gradient on the logits has size 1 - p, so it fades on exactly the tokens a
  model memorized hardest: at p = 0.9999 (two copies in SFT make that) a secret's token gets 1e-4 of the push,
  and beside a retain term it barely moves. Measured on SmolLM2-135M (docs/real-model.md): 50 kept steps left
  6 of 8 such secrets extractable and the forget term flat.
- ``log_odds``: log p - log(1 - p), whose gradient has size ~1 at any p. Every token of the sequence is made
  no more confident than the reference was: a format token the base already predicts (0.9) but the
  fine-tuned model is sure of (0.99999) is pushed back to 0.9 too. On SmolLM2 it took all 8 secrets out of
  greedy reach within the gate. (Weighting the log-odds gradient by the log-prob gain instead, which spares
  such tokens, left 2 of 8 extractable at the gate's KL bound.)
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from obliviate.erasure.config import EraseConfigError
from obliviate.erasure.losses import register_loss
from obliviate.erasure.losses.base import EraseLoss, SuffixOutput
from obliviate.erasure.losses.graddiff import RetainNLL, RetainTermConfig

_NOISE_NATS = 1e-4
SPACES = ("log_prob", "log_odds")


def token_scores(out: SuffixOutput, space: str) -> torch.Tensor:
    """Each suffix token's score in ``space``, ``(B, S)``, 0 at padding (the model's and the reference's alike).

    log(1 - p) is the logsumexp of the other tokens' log-probabilities: exact where float32 rounds p to 1
    (as in unlikelihood.py), where log1p(-p) is -inf.
    """
    log_probs = out.log_probs()
    score = out.target_log_probs(log_probs)
    if space == "log_odds":
        score = score - log_probs.scatter(-1, out.targets.unsqueeze(-1), float("-inf")).logsumexp(-1)
    return score.masked_fill(~out.valid, 0.0)


@dataclass
class GAToReferenceConfig(RetainTermConfig):
    """``method_args`` of ``method: ga_to_reference``: retain_weight, retain_objective, space, reference_margin."""

    space: str = field(
        default="log_prob",
        metadata={
            "help": "what is compared with the reference: log_prob (log p) or log_odds (log p - log(1 - p), whose "
            "gradient does not fade on a token memorized to p ~ 1)."
        },
    )
    reference_margin: float = field(
        default=0.0,
        metadata={"help": "push each token to this many nats below the reference's log-likelihood of it, >= 0."},
    )

    def __post_init__(self):
        super().__post_init__()
        if self.space not in SPACES:
            raise EraseConfigError(f"space must be one of {', '.join(SPACES)}; got {self.space!r}.")
        if not self.reference_margin >= 0:
            raise EraseConfigError(f"reference_margin must be >= 0; got {self.reference_margin}.")


@register_loss("ga_to_reference")
class GAToReference(RetainNLL, EraseLoss):
    """Token-mean of max(0, s(y_t) - s_ref(y_t) + margin) over the forget suffixes, plus the retain term."""

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

    def token_reference(self, out: SuffixOutput) -> torch.Tensor:
        """The ``(B, S)`` scores of the reference model's ``out``: what the eraser caches before the first step."""
        return token_scores(out, self.args.space)

    def sequence_losses(self, out: SuffixOutput, reference_log_prob: torch.Tensor | None = None) -> torch.Tensor:
        if reference_log_prob is None or reference_log_prob.shape != out.valid.shape:
            raise ValueError("ga_to_reference needs the reference's (B, S) score of every suffix token.")
        own = token_scores(out, self.args.space)
        gain = own - reference_log_prob.to(out.logits.device) + self.args.reference_margin
        # A token at the reference's level differs from it only by float rounding (another batch, another
        # padding): Adam would turn that 1e-7 gradient into a full-size step, so below _NOISE_NATS it is zero.
        return self.reduce(out, torch.where(gain > _NOISE_NATS, gain, 0.0).masked_fill(~out.valid, 0.0))
