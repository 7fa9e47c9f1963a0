"""``flagged.jsonl`` and its ``flagged.meta.json`` sidecar (DESIGN §7).

    python -c "from obliviate.data.flagged import read_flagged; help(read_flagged)"

A flagged row carries text *and* token ids, so erasure can re-tokenize the text and fail
clearly when the model's tokenizer is not the one that flagged it.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from obliviate import __version__
from obliviate.data.probes import Probe, ProbeError, ProbeSet, probe_from_row, read_jsonl


def tokenizer_fingerprint(tokenizer) -> str:
    """A short hash of the vocabulary: equal fingerprints mean equal token ids for equal text."""
    vocab = sorted(tokenizer.get_vocab().items())
    return hashlib.sha256(json.dumps(vocab).encode()).hexdigest()[:16]


def flagged_row(probe: Probe, step: int | None, reason: str, metrics: dict, tokenizer=None) -> dict:
    """The JSON object written for one flagged probe."""
    decode = tokenizer.decode if tokenizer is not None else (lambda ids: None)
    return {
        "id": probe.id,
        "role": probe.role,
        "prefix": probe.prefix if probe.prefix is not None else decode(probe.prefix_ids),
        "suffix": probe.suffix if probe.suffix is not None else decode(probe.suffix_ids),
        "prefix_ids": list(probe.prefix_ids),
        "suffix_ids": list(probe.suffix_ids),
        "step": step,
        "reason": reason,
        "metrics": metrics,
        **({"meta": probe.meta} if probe.meta else {}),
    }


def append_flagged(path: str | os.PathLike, rows: list[dict]) -> None:
    """Append rows and flush to disk at once, so a crash never loses a flag already made."""
    with open(path, "a") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
        f.flush()
        os.fsync(f.fileno())


def write_meta(path: str | os.PathLike, model_name: str | None, tokenizer, thresholds: dict, **extra) -> None:
    meta = {
        "model": model_name,
        "tokenizer": getattr(tokenizer, "name_or_path", None),
        "tokenizer_fingerprint": tokenizer_fingerprint(tokenizer) if tokenizer is not None else None,
        "vocab_size": len(tokenizer) if tokenizer is not None else None,
        "thresholds": thresholds,
        "obliviate_version": __version__,
        **extra,
    }
    tmp = Path(str(path) + ".tmp")
    tmp.write_text(json.dumps(meta, indent=2))
    tmp.replace(path)


def _tokens_agree(row: dict, probe: Probe, tokenizer) -> bool:
    """Do the row's ids match its text under ``tokenizer``?

    Probes are tokenized in one of two ways: prefix and suffix separately (``load_probes``) or
    jointly and split where the prompt's own tokens end (as ``SFTTrainer`` does, ``data/sft.py``).
    Either is the same tokenizer; a different tokenizer gives neither, nor decodes the ids back
    to the stored text.
    """
    ids = probe.prefix_ids + probe.suffix_ids
    if any(t < 0 or t >= len(tokenizer) for t in ids):
        return False
    fresh = probe_from_row({k: v for k, v in row.items() if k not in ("prefix_ids", "suffix_ids")}, tokenizer)
    if fresh.prefix_ids == probe.prefix_ids and fresh.suffix_ids == probe.suffix_ids:
        return True
    if list(tokenizer(fresh.prefix + fresh.suffix)["input_ids"]) == ids:
        return True
    decoded = tokenizer.decode(ids, clean_up_tokenization_spaces=False)
    return decoded in (fresh.prefix + fresh.suffix, fresh.prefix + fresh.suffix + (tokenizer.eos_token or ""))


def read_flagged(path: str | os.PathLike, tokenizer, check_tokens: bool = True) -> ProbeSet:
    """Load a flagged file (or any probes file) as a :class:`ProbeSet` for erasure.

    When a row has both text and ids, the text is re-tokenized with ``tokenizer`` and must give the same
    ids: otherwise the file was flagged with another tokenizer and erasing by id would erase the wrong text.
    """
    rows = read_jsonl(path)
    if not rows:
        raise ProbeError(f"{path} has no rows: there is nothing to erase.")
    probes = []
    for n, row in enumerate(rows, 1):
        row = {**row.get("meta", {}), **{k: v for k, v in row.items() if k not in ("meta", "metrics")}}
        probe = probe_from_row(row, tokenizer, line=f"{path}:{n}")
        has_text = (row.get("prefix") or row.get("prompt")) is not None and (
            row.get("suffix") or row.get("completion")
        ) is not None
        if check_tokens and "prefix_ids" in row and has_text and not _tokens_agree(row, probe, tokenizer):
            raise ProbeError(
                f"{path}:{n}: the token ids of {probe.id!r} disagree with this tokenizer's tokenization of its "
                "text: the file was flagged with a different tokenizer. Erase with the model and tokenizer that "
                "flagged it, or drop prefix_ids/suffix_ids from the file to re-tokenize from text."
            )
        probes.append(probe)
    return ProbeSet(probes)
