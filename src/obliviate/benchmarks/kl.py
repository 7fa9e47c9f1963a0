"""``kl_to_original``: how far the model's next-token distributions moved from the original's, on neutral text.

    python -c "from obliviate.benchmarks.kl import KLToOriginal; help(KLToOriginal)"

score ``kl`` = mean over every predicted token t of every row of KL(P_t || Q_t) in nats, P_t the
original model's next-token distribution, Q_t the current model's (token-weighted, like perplexity:
each token after a row's first is predicted from the tokens before it). The **first model the
benchmark scores is the original**: the gate's baseline pass caches P there, and every later run
compares with that cache (baseline KL is 0). Perplexity alone is one-sided on the true token; KL
sees drift in either direction and on every token of the vocabulary (DESIGN §6).

Memory: the cache never holds a ``B×T×V`` float32. With ``top_k`` (default 64) it keeps, per
position, the original's k largest log-probabilities and their token ids, and the KL is that of the
two distributions coarsened to {those k tokens, "every other token"}:

    KL_k = sum_{v in K_t} P(v) log(P(v)/Q(v)) + P(rest) log(P(rest)/Q(rest)),  P(rest) = 1 - sum_K P

By the data-processing inequality KL_k <= KL (a lower bound), exact when the original puts no mass
outside its top k; the gap is at most the KL between the tails, which carry 1 - P(K_t) of the mass.
``top_k: null`` caches the whole distribution (exact; ``T×V`` floats, for small vocabularies). Log-
softmaxes are taken one row at a time, so working memory is one ``T×V`` float32 beyond the logits.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from obliviate.benchmarks.base import BenchmarkError
from obliviate.benchmarks.perplexity import Perplexity, PerplexityConfig
from obliviate.benchmarks.registry import register_benchmark
from obliviate.metrics import context_length
from obliviate.metrics.scorer import length_sorted_batches, model_device
from obliviate.metrics.teacher_forced import collate, suffix_logits


@dataclass
class KLConfig(PerplexityConfig):
    """Options of ``kl_to_original`` (data options as ``perplexity``)."""

    top_k: int | None = field(
        default=64,
        metadata={
            "help": "cache the original's top-k log-probs per position (KL of the coarsened distributions, a lower "
            "bound); null = the whole distribution (exact)."
        },
    )

    def __post_init__(self):
        super().__post_init__()
        if self.top_k is not None and (not isinstance(self.top_k, int) or self.top_k < 1):
            raise ValueError(f"top_k must be an integer >= 1 or null, got {self.top_k!r}")


def coarse_kl(p_log: torch.Tensor, p_idx: torch.Tensor | None, q_log: torch.Tensor) -> torch.Tensor:
    """Per-position KL(P || Q) from P's cached log-probs (top-k with ids ``p_idx``, or all when None).

    Args:
        p_log: ``(T, k)`` (or ``(T, V)``) original log-probabilities.
        p_idx: ``(T, k)`` token ids of ``p_log``'s columns; None when ``p_log`` covers the vocabulary.
        q_log: ``(T, V)`` current log-probabilities (float32).

    Returns:
        ``(T,)`` KL in nats, clamped at 0 against float rounding.
    """
    if p_idx is None:
        return (p_log.exp() * (p_log - q_log)).sum(-1).clamp_min(0)
    q_top = q_log.gather(-1, p_idx)
    p = p_log.exp()
    head = (p * (p_log - q_top)).sum(-1)
    # The "every other token" bucket; log1p(-x) of the kept mass, floored to keep log finite.
    p_rest = (1 - p.sum(-1)).clamp_min(0)
    q_rest = (1 - q_top.exp().sum(-1)).clamp_min(1e-30)
    tail = torch.where(p_rest > 0, p_rest * (p_rest.clamp_min(1e-30).log() - q_rest.log()), torch.zeros_like(p_rest))
    return (head + tail).clamp_min(0)


@register_benchmark("kl_to_original")
class KLToOriginal(Perplexity):
    """Mean per-token KL(original || current) on ``{"text"}`` rows; score ``kl`` (nats/token), lower is better."""

    config_class = KLConfig
    directions = {"kl": "lower"}
    primary = "kl"
    config: KLConfig

    def tokenize(self, tokenizer) -> None:
        super().tokenize(tokenizer)
        self.reset()

    def reset(self) -> None:
        """Forget the cached original: the next model scored becomes the original."""
        self.original: list[tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]] | None = None

    def _rows(self, model):
        """Yield ``(row_index, (S, V) float32 log-probs, (S,) valid)`` one row at a time, batched forwards."""
        prefixes, suffixes = self._inputs(context_length(model))
        device = model_device(model)
        # Rows of similar length batched together: the gate's text runs 11-48 tokens, and in file order a third
        # of each batch's positions were padding that the live blocks and the head computed.
        for batch in length_sorted_batches(
            [len(p) + len(s) for p, s in zip(prefixes, suffixes)], self.config.batch_size
        ):
            p, s = [prefixes[i] for i in batch], [suffixes[i] for i in batch]
            ids, mask, pos, first = collate(p, s, self.pad_token_id, "right")
            lengths = torch.tensor([len(x) for x in s])
            ids, mask, pos, first, lengths = (t.to(device) for t in (ids, mask, pos, first, lengths))
            logits, _, valid = suffix_logits(model, ids, mask, pos, first, lengths, "right")
            for b, row in enumerate(batch):
                n = int(lengths[b])
                yield row, logits[b, :n].float().log_softmax(-1), n
            del logits

    def compute(self, model, tokenizer) -> dict[str, float]:
        if self.original is None:
            cache: list = [None] * len(self._inputs(context_length(model))[0])
            for row, log_probs, _ in self._rows(model):  # rows come in length order: kept by index
                if self.config.top_k is None or self.config.top_k >= log_probs.shape[-1]:
                    cache[row] = (log_probs.cpu(), None)
                else:
                    values, idx = log_probs.topk(self.config.top_k, dim=-1)
                    cache[row] = (values.cpu(), idx.cpu())
            self.original = cache
            self.last_token_count = sum(c[0].shape[0] for c in cache)
            return {"kl": 0.0}
        total, tokens = 0.0, 0
        for row, log_probs, n in self._rows(model):
            p_log, p_idx = self.original[row]
            if p_log.shape[0] != n:
                raise BenchmarkError(
                    f"kl_to_original: row {row} has {n} predicted tokens but the cached original "
                    f"{p_log.shape[0]}: the data or the context changed; call reset()."
                )
            device = log_probs.device
            kl = coarse_kl(p_log.to(device), None if p_idx is None else p_idx.to(device), log_probs)
            total += float(kl.double().sum())
            tokens += n
        self.last_token_count = tokens
        return {"kl": total / tokens}
