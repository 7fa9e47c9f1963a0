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

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from obliviate.erasure.config import EraseConfigError
from obliviate.erasure.losses import register_loss
from obliviate.erasure.losses.base import EraseLoss, SuffixOutput
from obliviate.erasure.losses.graddiff import RetainNLL, RetainTermConfig


@dataclass
class NPOConfig:
    """``method_args`` of ``method: npo``."""

    npo_beta: float = field(default=0.1, metadata={"help": "inverse temperature beta, > 0."})

    def __post_init__(self):
        if not self.npo_beta > 0:
            raise EraseConfigError(f"npo_beta must be > 0; got {self.npo_beta}.")


@dataclass
class NPORetainConfig(NPOConfig, RetainTermConfig):
    """``method_args`` of ``method: npo_rt``: npo_beta and retain_weight."""

    def __post_init__(self):
        NPOConfig.__post_init__(self)
        RetainTermConfig.__post_init__(self)


@register_loss("npo")
class NPO(EraseLoss):
    """Per-sequence NPO term with ``npo_beta`` (default 0.1)."""

    config_class = NPOConfig
    needs_reference = True

    def sequence_losses(self, out: SuffixOutput, reference_log_prob: torch.Tensor | None = None) -> torch.Tensor:
        if reference_log_prob is None:
            raise ValueError(f"{self.name} needs the reference log-likelihood of each forget suffix.")
        beta = self.args.npo_beta
        log_ratio = out.target_log_probs().sum(-1) - reference_log_prob.to(out.logits.device)
        terms = -(2.0 / beta) * F.logsigmoid(-beta * log_ratio)
        return out.weigh(terms, self.reduction, self.mean_suffix_length)


@register_loss("npo_rt")
class NPORetain(RetainNLL, NPO):
    """NPO plus ``retain_weight`` x the retain batch's NLL (NPO-RT; open-unlearning's NPO)."""

    config_class = NPORetainConfig
