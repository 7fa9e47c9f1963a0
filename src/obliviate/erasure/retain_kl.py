"""The retain term against the original model: ``method_args.retain_objective: kl`` or ``no_worse``.

    python -c "from obliviate.erasure.retain_kl import OriginalRetainCache; help(OriginalRetainCache)"

GradDiff's published retain term is the NLL of the retain text (Liu et al. 2022; open-unlearning's
``retain_loss_type: NLL``). Minimizing it *fits* that text: on a pretrained model and prose it was
never fine-tuned on, perplexity there falls step after step (SmolLM2 on license text: 130.9 -> 117.9),
which a two-sided gate rightly calls drift, and which spends the erasure's budget on learning instead
of on keeping. The KL form (open-unlearning's ``retain_loss_type: KL``, the "KL minimization" baseline
of TOFU, Maini et al. 2024) instead pulls the current model's next-token distributions on the retain
rows back toward the original's: zero at the start, never rewarded for moving.

The original's distributions are computed once, before the first step, for every text of the loss
split, and cached as top-k log-probabilities with their ids (the ``kl_to_original`` benchmark's
coarsening, :func:`obliviate.benchmarks.kl.coarse_kl`, a lower bound on the full KL that is exact when
the original puts no mass outside its top k). Memory: k x (4 + 8) bytes per retain token.

``no_worse`` is obliviate's one-sided NLL: the token mean of max(0, NLL_current(y_t) - NLL_original(y_t)) over
the retain rows, the original's log p(y_t) cached beside the top k. Why a third form: the KL is zero *and flat*
at the original (it is quadratic there), so it cannot resist the first steps, while the text's perplexity
moves linearly with them. Measured on SmolLM2 (docs/real-model.md): five erasure steps at lr 3e-5 raised every
gate row's loss by ~0.04 nats a token (a diffuse loss of confidence, +3.3% perplexity) at a KL of 0.001, and
the +2% gate rejected every block. The hinge has a full-size gradient on every token whose loss rose, and
like the KL it is never rewarded for fitting the text: a token already likelier than before carries no term.
"""

from __future__ import annotations

import torch

from obliviate.benchmarks.kl import coarse_kl
from obliviate.erasure.losses.base import forward_suffix

RETAIN_OBJECTIVES = ("nll", "kl", "no_worse")
CACHED_OBJECTIVES = ("kl", "no_worse")  # those that read the original's pass


class OriginalRetainCache:
    """Top-k next-token log-probs of the original model on each retain row (token ids, >= 2 tokens).

    Args:
        model: the model before erasure (scored without gradients).
        rows: token ids of every retain text the losses may draw, in the order the draws index them.
        pad_token_id: any valid id (padding is masked).
        rows_per_pass: at most this many rows a forward pass.
        top_k: log-probs kept per position.
    """

    def __init__(self, model, rows: list[list[int]], pad_token_id: int, rows_per_pass: int, top_k: int = 64):
        self.rows = rows
        # Per row: (top-k log-probs, their ids, log p of each actual next token), all on the original.
        self.cache: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None] = []
        with torch.no_grad():
            for start in range(0, len(rows), rows_per_pass):
                part = rows[start : start + rows_per_pass]
                usable = [r for r in part if len(r) >= 2]
                if not usable:
                    self.cache += [None] * len(part)
                    continue
                out = forward_suffix(model, [r[:1] for r in usable], [r[1:] for r in usable], pad_token_id)
                log_probs, b = out.log_probs(), 0
                for r in part:
                    if len(r) < 2:
                        self.cache.append(None)
                        continue
                    values, ids = log_probs[b][out.valid[b]].topk(min(top_k, log_probs.shape[-1]), dim=-1)
                    target = out.target_log_probs(log_probs)[b][out.valid[b]]
                    self.cache.append((values.cpu(), ids.cpu(), target.cpu()))
                    b += 1

    def terms(self, model, picks: list[int], pad_token_id: int, rows_per_pass: int, objective: str = "kl"):
        """Shares of the retain term over the rows ``picks`` that sum to it: the mean per-token
        KL(original || current) (``kl``) or the mean per-token NLL rise above the original's (``no_worse``).

        Each share divides by the draw's whole token count, so backward on each in turn accumulates the
        gradient of the full mean, as :func:`~obliviate.erasure.losses.base.retain_nll_terms` does for the NLL.
        """
        if objective not in CACHED_OBJECTIVES:
            raise ValueError(f"objective must be one of {', '.join(CACHED_OBJECTIVES)}; got {objective!r}.")
        picks = [i for i in picks if self.cache[i] is not None]
        targets = sum(len(self.rows[i]) - 1 for i in picks)
        for start in range(0, len(picks), rows_per_pass):
            part = picks[start : start + rows_per_pass]
            rows = [self.rows[i] for i in part]
            out = forward_suffix(model, [r[:1] for r in rows], [r[1:] for r in rows], pad_token_id)
            log_probs = out.log_probs()
            own = out.target_log_probs(log_probs) if objective == "no_worse" else None
            total = log_probs.new_zeros(())
            for b, i in enumerate(part):
                p_log, p_idx, p_target = (t.to(log_probs.device) for t in self.cache[i])
                if objective == "kl":
                    total = total + coarse_kl(p_log, p_idx, log_probs[b][out.valid[b]]).sum()
                else:  # NLL now - NLL before = log p_before(y) - log p_now(y), counted only where it rose
                    total = total + (p_target - own[b][out.valid[b]]).clamp_min(0).sum()
            yield total / targets
