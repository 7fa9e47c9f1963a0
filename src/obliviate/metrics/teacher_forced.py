"""Every per-sequence memorization score from one batched teacher-forced pass (DESIGN §3).

    python -m obliviate.cli score --model runs/toy/base --probes runs/toy/probes.jsonl --out runs/toy/scores

Greedy decoding from the prefix reproduces the suffix exactly when ``argmax p_t = y_t`` at every
suffix position (each greedy step sees the true context precisely while all earlier steps were
right), so exact extraction, prefix-match length and memorization accuracy need no ``generate``:
one forward pass over prefix+suffix gives them all, together with the likelihood-based
membership scores.

Batches are left-padded with explicit ``position_ids`` so padding never changes a score, and
only the logits of suffix positions are kept (``logits_to_keep``) and reduced in float32 chunks,
so a large vocabulary never materializes a batch x T x V float32 log-softmax.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass

import torch

# Rows of (position, vocab) reduced at once in float32: bounds the transient memory to
# CHUNK_ROWS * V * 4 bytes (~100 MB for a 50k vocabulary) whatever the batch.
CHUNK_ROWS = 512


@dataclass
class SamplingConfig:
    """The sampling distribution ``q_t`` an extraction attack would use (Hayes et al. 2024).

    ``extraction_probability`` = 1 - (1 - p_z)^n with p_z = prod_t q_t(y_t), where q_t applies the
    temperature, then top-k, then top-p (the order ``generate`` applies them) and renormalizes.
    """

    n: int = 100
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None

    def __post_init__(self):
        if self.n < 1:
            raise ValueError(f"sampling n must be >= 1, got {self.n}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k is not None and self.top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {self.top_k}")

    @property
    def is_plain(self) -> bool:
        return self.temperature == 1.0 and self.top_k is None and (self.top_p is None or self.top_p >= 1.0)


def _sampling_log_prob(logits: torch.Tensor, targets: torch.Tensor, sampling: SamplingConfig) -> torch.Tensor:
    """log q(y) under temperature / top-k / top-p, -inf where y is filtered out (float32 rows)."""
    scaled = logits / sampling.temperature
    if sampling.top_k is not None and sampling.top_k < scaled.shape[-1]:
        kth = torch.topk(scaled, sampling.top_k, dim=-1).values[..., -1:]
        scaled = scaled.masked_fill(scaled < kth, -math.inf)
    if sampling.top_p is not None and sampling.top_p < 1.0:
        # Same rule as transformers' TopPLogitsWarper: drop the low tail whose mass is <= 1 - top_p,
        # always keeping the most likely token.
        sorted_logits, order = torch.sort(scaled, dim=-1)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        drop_sorted = cumulative <= (1 - sampling.top_p)
        drop_sorted[..., -1] = False
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        scaled = scaled.masked_fill(drop, -math.inf)
    return scaled.log_softmax(-1).gather(-1, targets[:, None]).squeeze(-1)


def token_statistics(logits: torch.Tensor, targets: torch.Tensor, sampling: SamplingConfig | None = None) -> dict:
    """Per-position statistics for rows of logits ``(N, V)`` and true tokens ``(N,)``, in float32 chunks.

    Returns ``target_log_prob`` (log p_t(y_t)), ``correct`` (argmax == y), ``mean_log_prob`` (mu_t = E_p log p),
    ``std_log_prob`` (sigma_t), and ``sampling_log_prob`` (log q_t(y_t)) when ``sampling`` is not plain.
    """
    out = {k: [] for k in ("target_log_prob", "correct", "mean_log_prob", "std_log_prob", "sampling_log_prob")}
    for start in range(0, logits.shape[0], CHUNK_ROWS):
        chunk = logits[start:start + CHUNK_ROWS].float()
        y = targets[start:start + CHUNK_ROWS]
        log_probs = chunk.log_softmax(-1)
        probs = log_probs.exp()
        target = log_probs.gather(-1, y[:, None]).squeeze(-1)
        mu = (probs * log_probs).sum(-1)
        second = (probs * log_probs.square()).sum(-1)
        out["target_log_prob"].append(target)
        out["correct"].append(chunk.argmax(-1) == y)
        out["mean_log_prob"].append(mu)
        out["std_log_prob"].append((second - mu.square()).clamp_min(0).sqrt())
        if sampling is not None and not sampling.is_plain:
            out["sampling_log_prob"].append(_sampling_log_prob(chunk, y, sampling))
        del log_probs, probs
    return {k: torch.cat(v) for k, v in out.items() if v}


def _lowest_fraction_mean(values: torch.Tensor, mask: torch.Tensor, fraction: float) -> torch.Tensor:
    """Mean of the ``fraction`` lowest valid values per row (at least one), as in Min-K% (Shi et al. 2023)."""
    lengths = mask.sum(-1)
    count = (lengths.float() * fraction).floor().long().clamp(min=1)
    ordered = values.masked_fill(~mask, math.inf).sort(-1).values
    cumulative = ordered.masked_fill(~torch.isfinite(ordered), 0).cumsum(-1)
    return cumulative.gather(-1, (count - 1)[:, None]).squeeze(-1) / count


def sequence_metrics(stats: dict, mask: torch.Tensor, min_k: float, sampling: SamplingConfig) -> dict:
    """Reduce ``(B, S)`` per-position statistics (``mask`` = valid suffix position) to per-sequence scores."""
    lengths = mask.sum(-1).float()
    target = stats["target_log_prob"].masked_fill(~mask, 0)
    correct = stats["correct"] & mask
    right_or_pad = correct | ~mask
    loss = -target.sum(-1) / lengths
    z = (stats["target_log_prob"] - stats["mean_log_prob"]) / stats["std_log_prob"].clamp_min(1e-12)
    sampled = stats.get("sampling_log_prob", stats["target_log_prob"]).masked_fill(~mask, 0)
    log_p_z = sampled.sum(-1)
    # P(extracted in n samples) = 1 - (1 - p_z)^n, in log space so tiny p_z does not round to 0.
    log_not_once = torch.log1p(-log_p_z.exp().clamp(max=1 - 1e-12))
    extraction_probability = -torch.expm1(sampling.n * log_not_once)
    return {
        "loss": loss,
        "memorization_accuracy": correct.sum(-1) / lengths,
        "exact_extraction": right_or_pad.all(-1).long(),
        "prefix_match_length": (right_or_pad.long().cumprod(-1).bool() & mask).sum(-1),
        "extraction_probability": extraction_probability,
        "suffix_log_prob": log_p_z,
        "min_k": _lowest_fraction_mean(stats["target_log_prob"], mask, min_k),
        "min_k_plus_plus": _lowest_fraction_mean(z, mask, min_k),
        "suffix_length": lengths.long(),
    }


def _accepts_logits_to_keep(model) -> bool:
    base = model
    while hasattr(base, "get_base_model") or hasattr(base, "module"):
        base = base.get_base_model() if hasattr(base, "get_base_model") else base.module
    return "logits_to_keep" in inspect.signature(base.forward).parameters


def collate(prefix_ids: list[list[int]], suffix_ids: list[list[int]], pad_id: int, padding_side: str = "left"):
    """Pad prefix+suffix rows; returns input_ids, attention_mask, position_ids and each row's suffix start."""
    rows = [p + s for p, s in zip(prefix_ids, suffix_ids)]
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    suffix_start = []
    for i, (row, prefix) in enumerate(zip(rows, prefix_ids)):
        offset = width - len(row) if padding_side == "left" else 0
        ids[i, offset:offset + len(row)] = torch.tensor(row)
        mask[i, offset:offset + len(row)] = 1
        suffix_start.append(offset + len(prefix))
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    return ids, mask, position_ids, torch.tensor(suffix_start)


def suffix_logits(model, ids, mask, position_ids, suffix_start, suffix_len, padding_side: str):
    """Forward pass returning ``(B, S_max, V)`` logits predicting each suffix token and ``(B, S_max)`` targets."""
    s_max = int(suffix_len.max())
    kwargs = {}
    keep_from = 0
    if padding_side == "left" and _accepts_logits_to_keep(model):
        # Left padding aligns every suffix at the end: keep only the last s_max + 1 positions.
        kwargs["logits_to_keep"] = s_max + 1
        keep_from = ids.shape[1] - (s_max + 1)
    logits = model(input_ids=ids, attention_mask=mask, position_ids=position_ids, use_cache=False, **kwargs).logits
    j = torch.arange(s_max, device=ids.device)
    # Logit at position t predicts token t + 1; suffix token k of row b sits at suffix_start[b] + k.
    # Left padding puts every suffix flush right, so shorter suffixes start later; pad positions are masked.
    if padding_side == "left":
        start = ids.shape[1] - s_max + j[None, :]
        valid = j[None, :] >= (s_max - suffix_len[:, None])
    else:
        start = suffix_start[:, None] + j[None, :]
        valid = j[None, :] < suffix_len[:, None]
    token_pos = start.clamp(max=ids.shape[1] - 1)
    rows = torch.arange(ids.shape[0], device=ids.device)[:, None]
    gathered = logits[rows, token_pos - 1 - keep_from]
    targets = ids[rows, token_pos]
    return gathered, targets, valid
