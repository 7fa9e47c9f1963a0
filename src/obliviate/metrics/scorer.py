"""``score_probes``: the public entry point for per-probe memorization and membership scores.

python -c "from obliviate.metrics import score_probes; help(score_probes)"
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import torch
from tqdm.auto import tqdm

from obliviate.data.probes import ProbeSet, ensure_pad_token
from obliviate.metrics.teacher_forced import (
    SamplingConfig,
    collate,
    sequence_metrics,
    suffix_logits,
    token_statistics,
)

METRIC_NAMES = (
    "loss",
    "memorization_accuracy",
    "exact_extraction",
    "prefix_match_length",
    "extraction_probability",
    "min_k",
    "min_k_plus_plus",
    "zlib_ratio",
    "reference_ratio",
    "extraction_strength",
)
"""Per-sequence metrics of DESIGN §3, oriented higher = more memorized except ``loss``."""
MIA_SCORES = ("min_k", "min_k_plus_plus", "zlib_ratio", "reference_ratio", "neg_loss", "gradnorm", "recall")
"""Membership-inference scores evaluated by ROC (``neg_loss`` is -loss, the LOSS attack). ``gradnorm`` and
``recall`` come from :mod:`obliviate.metrics.mia` (more passes), summarized when merged into the rows."""


def model_device(model) -> torch.device:
    return next(model.parameters()).device


def context_length(model) -> int | None:
    """The longest sequence the model's positions allow, or None when it declares no limit."""
    config = getattr(model, "config", None)
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def length_sorted_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices of ``lengths`` in batches of ``batch_size``, shortest first: the caller puts results back in order.

    Batching similar lengths together wastes less compute on padding.
    """
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


@torch.inference_mode()
def score_sequences(
    model,
    prefix_ids: Sequence[list[int]],
    suffix_ids: Sequence[list[int]],
    pad_token_id: int,
    batch_size: int = 32,
    min_k: float = 0.2,
    sampling: SamplingConfig | None = None,
    padding_side: str = "left",
    progress: bool | str = False,
    moments: bool = True,
) -> dict[str, torch.Tensor]:
    """Tensor-valued per-sequence scores (CPU, input order) for token-id sequences.

    The building block of :func:`score_probes`, exposure ranking and the erasure criterion: one
    teacher-forced pass per batch, reduced by :func:`~obliviate.metrics.teacher_forced.sequence_metrics`.
    ``moments=False`` leaves out ``min_k_plus_plus`` and the per-position moments it needs, the costliest
    statistic on a large vocabulary (callers that read only likelihood and argmax scores: perplexity, the
    erasure criterion).
    """
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    if len(prefix_ids) != len(suffix_ids):
        raise ValueError(f"got {len(prefix_ids)} prefixes but {len(suffix_ids)} suffixes; they pair up one to one.")
    for i, (prefix, suffix) in enumerate(zip(prefix_ids, suffix_ids)):
        if not prefix or not suffix:
            # An empty prefix leaves the first suffix token nothing to be predicted from (its logit would be a pad's).
            raise ValueError(
                f"sequence {i} has an empty {'prefix' if not prefix else 'suffix'}; every sequence "
                "needs at least one prefix token and one suffix token."
            )
    sampling = sampling or SamplingConfig()
    was_training = model.training
    model.eval()
    device = model_device(model)
    results: dict[str, list[torch.Tensor]] = {}
    batches = length_sorted_batches([len(p) + len(s) for p, s in zip(prefix_ids, suffix_ids)], batch_size)
    order: list[int] = []
    try:
        desc = progress if isinstance(progress, str) else "scoring"
        for batch in tqdm(batches, desc=desc, disable=not progress, leave=False):
            ids, mask, pos, start = collate(
                [prefix_ids[i] for i in batch], [suffix_ids[i] for i in batch], pad_token_id, padding_side
            )
            suffix_len = torch.tensor([len(suffix_ids[i]) for i in batch])
            ids, mask, pos, start, suffix_len = (t.to(device) for t in (ids, mask, pos, start, suffix_len))
            logits, targets, valid = suffix_logits(model, ids, mask, pos, start, suffix_len, padding_side)
            # Statistics of every (row, position) of the suffix window, padding included: cheaper than
            # copying the valid rows out, and sequence_metrics masks the padding away.
            stats = token_statistics(logits, targets, sampling, moments=moments)
            del logits
            for name, value in sequence_metrics(stats, valid, min_k, sampling).items():
                results.setdefault(name, []).append(value.cpu())
            order.extend(batch)
    finally:
        model.train(was_training)
    inverse = torch.empty(len(order), dtype=torch.long)
    inverse[torch.tensor(order, dtype=torch.long)] = torch.arange(len(order))
    return {name: torch.cat(parts)[inverse] for name, parts in results.items()}


def zlib_length(text: str) -> int:
    """Length in bytes of the zlib-compressed UTF-8 text (Carlini et al. 2021's zlib entropy)."""
    return len(zlib.compress(text.encode("utf-8")))


def score_probes(
    model,
    tokenizer,
    probes: ProbeSet,
    batch_size: int = 32,
    reference_model=None,
    min_k: float = 0.2,
    sampling: SamplingConfig | None = None,
    padding_side: str = "left",
    truncate: bool = False,
    progress: bool | str = False,
) -> list[dict]:
    """Score every probe with every per-sequence metric of DESIGN §3 from one teacher-forced pass.

    Args:
        model: any causal LM (``AutoModelForCausalLM``, PEFT-wrapped or not), on its device, any dtype.
        tokenizer: its tokenizer; without a pad token, eos is used for padding (with a warning).
        probes: the :class:`~obliviate.data.ProbeSet` to score.
        batch_size: sequences per forward pass.
        reference_model: optional model sharing the tokenizer (e.g. the base before SFT) for ``reference_ratio``.
        min_k: fraction of lowest-likelihood tokens for ``min_k`` and ``min_k_plus_plus``.
        sampling: the attacker's sampling setup for ``extraction_probability`` (default n=100, plain sampling).
        padding_side: ``left`` (default, lets the model skip non-suffix logits) or ``right``; scores agree.
        truncate: left-truncate prefixes that overflow the context instead of raising.
        progress: show a progress bar (a string sets its label).

    Returns:
        One dict per probe, in probe order: ``id``, ``role``, every name in :data:`METRIC_NAMES`
        (``reference_ratio`` only with a reference model), ``suffix_log_prob`` and ``suffix_length``.
    """
    ensure_pad_token(tokenizer)
    probes = probes.check_fits(context_length(model), truncate=truncate)
    vocab = model.get_input_embeddings().num_embeddings
    probes.check_vocab(vocab)
    prefixes, suffixes = [p.prefix_ids for p in probes], [p.suffix_ids for p in probes]
    common = dict(
        pad_token_id=tokenizer.pad_token_id,
        batch_size=batch_size,
        min_k=min_k,
        sampling=sampling,
        padding_side=padding_side,
    )
    scores = score_sequences(model, prefixes, suffixes, progress=progress, **common)
    reference = None
    if reference_model is not None:
        if reference_model.get_input_embeddings().num_embeddings != vocab:
            raise ValueError(
                "the reference model's vocabulary differs from the model's; "
                "reference_ratio needs both to share the tokenizer."
            )
        reference = score_sequences(
            reference_model, prefixes, suffixes, progress="scoring (reference)" if progress else False, **common
        )["loss"]
    rows = []
    for i, probe in enumerate(probes):
        row = {"id": probe.id, "role": probe.role}
        for name, values in scores.items():
            value = values[i].item()
            row[name] = int(value) if name in ("exact_extraction", "prefix_match_length", "suffix_length") else value
        suffix_text = probe.suffix if probe.suffix is not None else tokenizer.decode(probe.suffix_ids)
        row["zlib_ratio"] = -row["loss"] / zlib_length(suffix_text)
        if reference is not None:
            row["reference_ratio"] = reference[i].item() - row["loss"]
        rows.append(row)
    return rows
