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

import contextlib
import inspect
import math
from dataclasses import dataclass

import torch

# Logit entries reduced at once in float32: bounds each transient to CHUNK_ELEMENTS * 4 bytes
# (~100 MB, e.g. 512 positions of a 50k vocabulary) whatever the batch, while a small vocabulary
# gets a few large operations instead of many small ones (each one a threaded region on CPU).
CHUNK_ELEMENTS = 512 * 50_000


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


def token_statistics(
    logits: torch.Tensor, targets: torch.Tensor, sampling: SamplingConfig | None = None, moments: bool = True
) -> dict:
    """Per-position statistics for logits ``(..., V)`` and true tokens ``(...)``, in float32 chunks.

    Returns ``target_log_prob`` (log p_t(y_t)), ``correct`` (argmax == y), ``mean_log_prob`` (mu_t = E_p log p)
    and ``std_log_prob`` (sigma_t) unless ``moments`` is False, and ``sampling_log_prob`` (log q_t(y_t)) when
    ``sampling`` is not plain, each shaped like ``targets``. The moments (Min-K%++'s only input) are the
    costliest part on a large vocabulary: an exp and two more passes over every logit. Chunks run along the
    first dimension, so a strided view of the model's logits is read in place, never copied whole.
    """
    if logits.dim() == 1 or logits.shape[:-1] != targets.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and targets {tuple(targets.shape)} do not match")
    positions_per_row = max(1, targets[0].numel()) if targets.dim() > 0 and len(targets) else 1
    step = max(1, CHUNK_ELEMENTS // (positions_per_row * logits.shape[-1]))
    out = {k: [] for k in ("target_log_prob", "correct", "mean_log_prob", "std_log_prob", "sampling_log_prob")}
    for start in range(0, logits.shape[0], step):
        chunk = logits[start : start + step].float()
        y = targets[start : start + step].unsqueeze(-1)
        log_probs = chunk.log_softmax(-1)
        out["target_log_prob"].append(log_probs.gather(-1, y).squeeze(-1))
        # argmax of the logits themselves: exactly what greedy decoding picks.
        out["correct"].append(chunk.argmax(-1) == y.squeeze(-1))
        if moments:
            probs = log_probs.exp()
            mu = torch.linalg.vecdot(probs, log_probs)
            # Centered second moment, in place: E[log^2 p] - mu^2 cancels catastrophically in float32 on
            # near-uniform rows, where sigma is tiny and Min-K%++ divides by it.
            centered = log_probs.sub_(mu.unsqueeze(-1)).square_()
            out["mean_log_prob"].append(mu)
            out["std_log_prob"].append(torch.linalg.vecdot(probs, centered).sqrt())
            del probs, centered
        if sampling is not None and not sampling.is_plain:
            flat = chunk.reshape(-1, chunk.shape[-1])
            out["sampling_log_prob"].append(_sampling_log_prob(flat, y.reshape(-1), sampling).view(y.shape[:-1]))
        del log_probs
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
    sampled = stats.get("sampling_log_prob", stats["target_log_prob"]).masked_fill(~mask, 0)
    log_p_z = sampled.sum(-1)
    # P(extracted in n samples) = 1 - (1 - p_z)^n, in log space so tiny p_z does not round to 0.
    log_not_once = torch.log1p(-log_p_z.exp().clamp(max=1 - 1e-12))
    extraction_probability = -torch.expm1(sampling.n * log_not_once)
    # Extraction strength (Carlini et al. 2021, as MUSE / open-unlearning use it): 1 - k/|S| with k the
    # smallest start from which every argmax matches, i.e. the share of the suffix in its all-correct tail.
    # Padding counts as right inside the run (it sits before or after the real positions) and is masked out.
    correct_tail = (right_or_pad.flip(-1).long().cumprod(-1).bool() & mask.flip(-1)).sum(-1)
    scores = {
        "loss": loss,
        "memorization_accuracy": correct.sum(-1) / lengths,
        "exact_extraction": right_or_pad.all(-1).long(),
        "prefix_match_length": (right_or_pad.long().cumprod(-1).bool() & mask).sum(-1),
        "extraction_strength": correct_tail / lengths,
        "extraction_probability": extraction_probability,
        "suffix_log_prob": log_p_z,
        "min_k": _lowest_fraction_mean(stats["target_log_prob"], mask, min_k),
        "suffix_length": lengths.long(),
    }
    if "mean_log_prob" in stats:  # token_statistics(moments=True)
        z = (stats["target_log_prob"] - stats["mean_log_prob"]) / stats["std_log_prob"].clamp_min(1e-12)
        scores["min_k_plus_plus"] = _lowest_fraction_mean(z, mask, min_k)
    return scores


def _unwrapped(model):
    """The transformers model inside PEFT / DDP / FSDP wrappers."""
    base = model
    while hasattr(base, "get_base_model") or hasattr(base, "module"):
        base = base.get_base_model() if hasattr(base, "get_base_model") else base.module
    return base


def _accepts_logits_to_keep(model) -> bool:
    return "logits_to_keep" in inspect.signature(_unwrapped(model).forward).parameters


def _make_contiguous(module, args):
    if args and isinstance(args[0], torch.Tensor) and not args[0].is_contiguous():
        return (args[0].contiguous(), *args[1:])
    return None


@contextlib.contextmanager
def _contiguous_head_input(model):
    """Hand the output head a contiguous copy of its input while the block runs.

    ``logits_to_keep`` slices the last positions out of ``(B, T, H)`` hidden states: a view that cannot be
    flattened to 2-D, so ``F.linear`` runs a batched matmul against the weight expanded to ``(B, H, V)``;
    measured on SmolLM2's 49k-token head (one CPU thread), 3x the time of the 2-D matmul on a copy.
    The copy is ``B x keep x H``: nothing beside the ``B x keep x V`` logits.
    """
    base = _unwrapped(model)
    head = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
    hook = head.register_forward_pre_hook(_make_contiguous) if isinstance(head, torch.nn.Module) else None
    try:
        yield
    finally:
        if hook is not None:
            hook.remove()


def collate(prefix_ids: list[list[int]], suffix_ids: list[list[int]], pad_id: int, padding_side: str = "left"):
    """Pad prefix+suffix rows; returns input_ids, attention_mask, position_ids and each row's suffix start."""
    rows = [p + s for p, s in zip(prefix_ids, suffix_ids)]
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    suffix_start = []
    for i, (row, prefix) in enumerate(zip(rows, prefix_ids)):
        offset = width - len(row) if padding_side == "left" else 0
        ids[i, offset : offset + len(row)] = torch.tensor(row)
        mask[i, offset : offset + len(row)] = 1
        suffix_start.append(offset + len(prefix))
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    return ids, mask, position_ids, torch.tensor(suffix_start)


def suffix_logits(model, ids, mask, position_ids, suffix_start, suffix_len, padding_side: str):
    """Forward pass returning ``(B, S_max, V)`` logits predicting each suffix token, ``(B, S_max)`` targets
    and the ``(B, S_max)`` mask of real (non-padding) suffix positions."""
    s_max = int(suffix_len.max())
    j = torch.arange(s_max, device=ids.device)
    kwargs = {}
    if padding_side == "left":
        if _accepts_logits_to_keep(model):
            # Left padding aligns every suffix at the end: only the last s_max + 1 positions need logits.
            kwargs["logits_to_keep"] = s_max + 1
        with _contiguous_head_input(model) if kwargs else contextlib.nullcontext():
            logits = model(
                input_ids=ids, attention_mask=mask, position_ids=position_ids, use_cache=False, **kwargs
            ).logits
        # Logit at position t predicts token t + 1. Suffixes are flush right, so shorter ones start later
        # (their leading window positions are masked); the logits are a strided view, never copied.
        valid = j[None, :] >= (s_max - suffix_len[:, None])
        return logits[:, logits.shape[1] - s_max - 1 : -1], ids[:, ids.shape[1] - s_max :], valid
    logits = model(input_ids=ids, attention_mask=mask, position_ids=position_ids, use_cache=False).logits
    # Right padding: suffix token k of row b sits at suffix_start[b] + k, predicted by the logit before it.
    valid = j[None, :] < suffix_len[:, None]
    token_pos = (suffix_start[:, None] + j[None, :]).clamp(max=ids.shape[1] - 1)
    rows = torch.arange(ids.shape[0], device=ids.device)[:, None]
    return logits[rows, token_pos - 1], ids[rows, token_pos], valid
