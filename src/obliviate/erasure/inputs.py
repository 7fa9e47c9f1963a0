"""Retained text, held-out text and the utility gate of an erasure run, from what the caller gave.

    python -c "from obliviate.erasure.inputs import split_retain; help(split_retain)"

A gate that reads rows a loss optimizes protects only those rows (measured: the gate's own rows
moved +1.8% while other held-out text moved +22%). So the retain text is split, deterministically,
into three disjoint parts (DESIGN §6):

- ``loss``: what graddiff's retain term and the ``contrastive_retain`` selector may use;
- ``gate``: read only by the gate (the default gate: two-sided perplexity and ``kl_to_original``);
- ``audit``: read by nothing during erasure, scored before and after for the report, so a gate that
  protects only its own rows is visible. ``--heldout FILE`` replaces it (then the retain text is split
  in two).

``--neighbors FILE`` (records of the forget set's format that are kept, :func:`read_neighbors`) joins the
loss part only: no gate and no audit reads them.

The split is by the SHA-256 of each distinct text (identical rows always land together), so it does
not depend on the file's order and a rerun splits the same way.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

from obliviate.data.probes import ProbeError


def read_retain(retain) -> list[str]:
    """Texts of a ``{"text"}`` JSONL path, or the given strings; ``[]`` for None."""
    if retain is None:
        return []
    if isinstance(retain, (str, os.PathLike)):
        from obliviate.data.probes import read_jsonl

        rows = read_jsonl(retain)
        bad = [n for n, r in enumerate(rows, 1) if not isinstance(r, dict) or not isinstance(r.get("text"), str)]
        if bad:
            raise ProbeError(f'{retain}:{bad[0]}: retain rows need a "text" string field.')
        return [r["text"] for r in rows]
    return [str(t) for t in retain]


@dataclass
class RetainSplit:
    """Disjoint parts of the retain text (see the module docstring)."""

    loss: list[str]
    gate: list[str]
    audit: list[str]

    def to_dict(self) -> dict:
        return {"loss_rows": len(self.loss), "gate_rows": len(self.gate), "audit_rows": len(self.audit)}


def split_retain(texts: list[str], gate_fraction: float, audit_fraction: float, loss_uses_retain: bool) -> RetainSplit:
    """Split ``texts`` into loss / gate / audit parts by the hash of each distinct text.

    Args:
        texts: the retain texts (duplicates are kept together).
        gate_fraction: share of distinct texts for the gate (all but the audit's when no loss uses retain text).
        audit_fraction: share for the audit (0 when ``--heldout`` gives the audit text).
        loss_uses_retain: whether a loss or the selector reads retain text.

    Raises:
        ProbeError: too few distinct texts to give the gate (and a loss that needs one) at least one row.
    """
    order = sorted(dict.fromkeys(texts), key=lambda t: hashlib.sha256(t.encode("utf-8")).hexdigest())
    n = len(order)
    need = 2 if loss_uses_retain else 1
    if n < need:
        raise ProbeError(
            f"the retain text has {n} distinct row(s); the gate needs rows no loss trains on"
            f"{' and the retain loss rows of its own' if loss_uses_retain else ''}: give at least {need}."
        )
    n_gate = max(1, round(n * gate_fraction)) if loss_uses_retain else n
    n_audit = round(n * audit_fraction)
    if loss_uses_retain:
        n_gate = min(n_gate, n - 1)
        n_audit = min(n_audit, n - n_gate - 1)
    else:
        n_audit = min(n_audit, n - 1)
        n_gate = n - n_audit
    audit, gate, loss = (set(order[:n_audit]), set(order[n_audit : n_audit + n_gate]), set(order[n_audit + n_gate :]))
    keep = list(dict.fromkeys(texts))  # the caller's order within each part
    return RetainSplit([t for t in keep if t in loss], [t for t in keep if t in gate], [t for t in keep if t in audit])


def _forget_texts(forget, tokenizer) -> dict[str, str]:
    return {
        p.id: (
            p.prefix + p.suffix if p.prefix is not None and p.suffix is not None else tokenizer.decode(p.input_ids)
        ).strip()
        for p in forget
    }


def read_heldout(path, forget, tokenizer) -> list[str]:
    """The texts of ``--heldout`` (``{"text"}`` JSONL), refusing rows that hold a sequence being erased.

    Raises:
        ProbeError: naming each held-out line and the forget id it contains: held-out text must be text the
            erasure neither trains on nor erases, or its before/after scores measure the erasure itself.
    """
    return _read_apart_from_forget(path, forget, tokenizer, "--heldout", "Held-out text", "the erasure never trains on")


def read_neighbors(path, forget, tokenizer) -> list[str]:
    """The texts of ``--neighbors`` (``{"text"}`` JSONL), refusing rows that hold a sequence being erased.

    Neighbors are records of the forget set's format that no one asked to forget (other customers' records
    beside the flagged ones). Only the retain term reads them, never the gate: the secrets leak into such
    records (the fine-tuned model completes another customer's passphrase with a secret's words), so their
    next-token distributions *should* move, and a KL bound on them would reject the erasure for working
    (measured on SmolLM2: 0.82 nats/token on 16 such rows against 0.04 on prose). The never-trained controls
    judge what happened to the format.

    Raises:
        ProbeError: naming each line that contains a forget sequence: a row cannot be both kept and erased.
    """
    return _read_apart_from_forget(path, forget, tokenizer, "--neighbors", "Neighbor records", "the erasure keeps")


def _read_apart_from_forget(path, forget, tokenizer, flag: str, what: str, purpose: str) -> list[str]:
    texts = read_retain(path)
    if not texts:
        raise ProbeError(f'{flag} {path} has no rows; give {{"text"}} rows {purpose}.')
    erased = _forget_texts(forget, tokenizer)
    clashes = [(n, i) for n, text in enumerate(texts, 1) for i, f in erased.items() if f and f in text]
    if clashes:
        source = f"{path}:" if isinstance(path, (str, os.PathLike)) else "row "
        shown = "; ".join(f"{source}{n} holds {i}" for n, i in clashes[:8])
        raise ProbeError(
            f"{flag} overlaps the forget set in {len(clashes)} row(s): {shown}"
            f"{' …' if len(clashes) > 8 else ''}. {what} must not contain what is being erased; "
            "remove those rows."
        )
    return texts


def _rows(texts: list[str]) -> list[dict]:
    return [{"text": t} for t in texts]


def _entry_texts(entry: dict) -> list[str] | None:
    """The ``{"text"}`` rows a gate entry reads, when it reads such rows (None otherwise)."""
    data = entry.get("data")
    key = entry.get("text_key", "text")
    if entry.get("completion_only"):
        return None
    if isinstance(data, (str, os.PathLike)) and os.path.isfile(data):
        from obliviate.data.probes import read_jsonl

        return [r[key] for r in read_jsonl(data) if isinstance(r, dict) and isinstance(r.get(key), str)]
    if isinstance(data, list):
        return [r[key] for r in data if isinstance(r, dict) and isinstance(r.get(key), str)]
    return None


def gate_entries(config, split: RetainSplit) -> list[dict] | None:
    """The gate's benchmark entries: ``"default"`` (or a section's ``- default`` item) expanded on ``split.gate``.

    Raises:
        ProbeError: a gate entry that reads rows a loss trains on (``split.loss``), naming the entry.
    """
    from obliviate.benchmarks.gate import DEFAULT_ENTRY, default_gate_entries

    section = config.gate
    if section is None:
        return None
    benchmarks = [DEFAULT_ENTRY] if section == "default" else list(section.get("benchmarks") or [])
    entries = []
    for entry in benchmarks:
        if entry == DEFAULT_ENTRY:
            if not split.gate:
                return None if section == "default" else _no_gate_text()
            kl = None if section == "default" else section.get("default_kl")
            entries += default_gate_entries(_rows(split.gate), kl_tolerance=kl)
        else:
            entries.append(dict(entry))
    trained = set(split.loss)
    for entry in entries:
        reads = _entry_texts(entry)
        clash = sorted(trained & set(reads or ()))
        if clash:
            raise ProbeError(
                f"gate benchmark {entry.get('label') or entry['name']!r} reads {len(clash)} row(s) the "
                f"erasure's retain loss trains on (e.g. {clash[0][:60]!r}): a gate on trained rows "
                "protects only them. Use `- default` (the gate-only split of --retain) or other text."
            )
    return entries


def _no_gate_text():
    raise ProbeError("gate: `default` needs retain text to read: pass --retain FILE (its gate-only split is gated).")


def build_gate(config, tokenizer, split: RetainSplit):
    """The :class:`~obliviate.benchmarks.UtilityGate` of ``config.gate`` on the gate-only text (None: no gate).

    ``"default"``: :func:`~obliviate.benchmarks.default_gate_entries` on ``split.gate`` with the
    :class:`~obliviate.benchmarks.GateConfig` schedule; no gate without retain text. A mapping is a ``gate:``
    section whose ``benchmarks`` may hold ``default`` beside other entries.
    """
    from obliviate.benchmarks import UtilityGate

    entries = gate_entries(config, split)
    if entries is None:
        return None
    section = {} if config.gate == "default" else {k: v for k, v in config.gate.items() if k != "benchmarks"}
    return UtilityGate.from_config({**section, "benchmarks": entries}, tokenizer)


def audit_suite(gate, texts: list[str], tokenizer):
    """The gate's text benchmarks (perplexity, kl_to_original) again on ``texts``, the held-out text no one reads.

    Labels are ``heldout_<gate label>``; None without a gate, text benchmarks or texts.
    """
    from obliviate.benchmarks import UtilitySuite

    if gate is None or not texts:
        return None
    entries = []
    for bench in gate.suite:
        if bench.name not in ("perplexity", "kl_to_original") or getattr(bench.config, "completion_only", False):
            continue
        options = {k: v for k, v in vars(bench.config).items() if k not in ("data", "label", "text_key")}
        entries.append({"name": bench.name, **options, "data": _rows(texts), "label": f"heldout_{bench.label}"})
    return UtilitySuite.from_config(entries, tokenizer) if entries else None
