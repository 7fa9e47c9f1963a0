"""Probes: the sequences whose memorization obliviate measures (DESIGN §2).

    python -c "from obliviate.data import load_probes; help(load_probes)"

A probe is an ``id``, a ``role`` (``member``, ``canary`` or ``control``) and token ids split
into a prefix (what an attacker supplies) and a suffix (what must not come back). Prefix
and suffix text are tokenized separately, the suffix without special tokens, and the ids
concatenated — so the suffix ids are exactly the tokens scored, whatever the tokenizer
would merge across the boundary.
"""

from __future__ import annotations

import json
import numbers
import os
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROLES = ("member", "canary", "control")


class ProbeError(ValueError):
    """Bad probe input: the message says which probe and what to do."""


@dataclass
class Probe:
    """One sequence to measure. ``meta`` keeps any extra fields of the input row."""

    id: str
    role: str
    prefix_ids: list[int]
    suffix_ids: list[int]
    prefix: str | None = None
    suffix: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def input_ids(self) -> list[int]:
        return self.prefix_ids + self.suffix_ids

    @property
    def group(self) -> str | None:
        """The probe's format or source (row key ``group``): controls calibrate only probes of their own group."""
        group = self.meta.get("group")
        return None if group is None else str(group)

    def __len__(self) -> int:
        return len(self.prefix_ids) + len(self.suffix_ids)


class ProbeSet:
    """An ordered, id-unique collection of :class:`Probe`."""

    def __init__(self, probes: Iterable[Probe]):
        self.probes: list[Probe] = list(probes)
        seen: set[str] = set()
        for probe in self.probes:
            if probe.id in seen:
                raise ProbeError(f"duplicate probe id {probe.id!r}: every probe needs a unique id.")
            seen.add(probe.id)
            if probe.role not in ROLES:
                raise ProbeError(f"probe {probe.id!r} has unknown role {probe.role!r}; use one of {', '.join(ROLES)}.")
            if not probe.suffix_ids:
                raise ProbeError(
                    f"probe {probe.id!r} has an empty suffix: there is nothing to measure. "
                    "Give it a non-empty suffix/completion, or drop it."
                )
            if not probe.prefix_ids:
                # Nothing predicts the first suffix token then: its score would read a pad position.
                raise ProbeError(
                    f"probe {probe.id!r} has an empty prefix: the first suffix token has no context "
                    "to be predicted from. Give at least one prefix token (e.g. the tokenizer's BOS)."
                )
        self._by_id = {p.id: p for p in self.probes}

    def __len__(self) -> int:
        return len(self.probes)

    def __iter__(self) -> Iterator[Probe]:
        return iter(self.probes)

    def __getitem__(self, key: int | str) -> Probe:
        return self._by_id[key] if isinstance(key, str) else self.probes[key]

    def __contains__(self, probe_id: str) -> bool:
        return probe_id in self._by_id

    @property
    def ids(self) -> list[str]:
        return [p.id for p in self.probes]

    def by_role(self, *roles: str) -> ProbeSet:
        return ProbeSet(p for p in self.probes if p.role in roles)

    def subset(self, ids: Iterable[str]) -> ProbeSet:
        missing = [i for i in ids if i not in self._by_id]
        if missing:
            raise ProbeError(f"unknown probe ids {missing[:5]}{' …' if len(missing) > 5 else ''}.")
        return ProbeSet(self._by_id[i] for i in ids)

    def check_fits(self, max_length: int | None, truncate: bool = False) -> ProbeSet:
        """Raise naming the first probe longer than ``max_length`` tokens, or left-truncate prefixes."""
        if max_length is None:
            return self
        out = []
        for p in self.probes:
            if len(p) <= max_length:
                out.append(p)
                continue
            if len(p.suffix_ids) >= max_length:
                # Truncation drops prefix tokens only: the suffix is what is measured and is never cut.
                raise ProbeError(
                    f"probe {p.id!r} has a suffix of {len(p.suffix_ids)} tokens, which alone needs the model's whole "
                    f"context of {max_length} (at least one prefix token must remain); --truncate cannot help, as "
                    "it only drops prefix tokens. Shorten the suffix (or use suffix_tokens for text probes)."
                )
            if not truncate:
                raise ProbeError(
                    f"probe {p.id!r} is {len(p)} tokens ({len(p.prefix_ids)} prefix + {len(p.suffix_ids)} suffix), "
                    f"longer than the model's context of {max_length}. Shorten it, or pass truncate=True "
                    "(--truncate) to drop the oldest prefix tokens."
                )
            keep = max_length - len(p.suffix_ids)
            out.append(
                Probe(p.id, p.role, p.prefix_ids[len(p.prefix_ids) - keep :], p.suffix_ids, None, p.suffix, p.meta)
            )
        return ProbeSet(out)

    def check_vocab(self, vocab_size: int) -> None:
        for p in self.probes:
            bad = [t for t in p.input_ids if t < 0 or t >= vocab_size]
            if bad:
                raise ProbeError(
                    f"probe {p.id!r} has token ids {bad[:5]} outside the vocabulary [0, {vocab_size}); "
                    "it was tokenized with another tokenizer — re-tokenize from its text."
                )


def ensure_pad_token(tokenizer) -> None:
    """Batching needs a pad token; fall back to EOS with a warning (the attention mask hides it)."""
    if tokenizer.pad_token_id is not None:
        return
    if tokenizer.eos_token_id is None:
        raise ProbeError("the tokenizer has neither a pad nor an eos token; set tokenizer.pad_token before scoring.")
    warnings.warn(f"tokenizer has no pad token; using its eos token {tokenizer.eos_token!r} for padding.", stacklevel=2)
    tokenizer.pad_token = tokenizer.eos_token


def _encode(tokenizer, text: str, special: bool) -> list[int]:
    return list(tokenizer(text, add_special_tokens=special)["input_ids"])


def _token_ids(value, key: str, pid: str, where: str) -> list[int]:
    """A ``prefix_ids``/``suffix_ids`` field as a list of ints, or an error naming the probe and line."""
    if (
        isinstance(value, (str, bytes))
        or not isinstance(value, (list, tuple))
        or not all(isinstance(t, numbers.Integral) and not isinstance(t, bool) for t in value)
    ):
        raise ProbeError(
            f"probe {pid!r}{where}: {key} must be a list of integer token ids, got "
            f'{type(value).__name__} {str(value)[:40]!r}. Write e.g. "{key}": [464, 3290].'
        )
    return [int(t) for t in value]


def _text(row: dict, key: str, pid: str, where: str) -> str:
    value = row[key]
    if not isinstance(value, str):
        raise ProbeError(
            f"probe {pid!r}{where}: {key} must be a string, got {type(value).__name__} {value!r}. "
            f'Quote it in the JSON ("{key}": "{value}").'
        )
    return value


def probe_from_row(
    row: dict,
    tokenizer=None,
    prefix_tokens: int = 32,
    suffix_tokens: int = 32,
    default_role: str = "member",
    line: str = "",
) -> Probe:
    """Build a :class:`Probe` from one input row (see :func:`load_probes` for the accepted shapes).

    Raises:
        ProbeError: a row that is not a JSON object, has no id, or has a field of the wrong type; the
            message names the probe id and ``line`` (``file:line``).
    """
    where = f" ({line})" if line else ""
    if not isinstance(row, dict):
        raise ProbeError(
            f"probe row{where} is a JSON {type(row).__name__} ({str(row)[:40]!r}), not an object; "
            'each line must be an object like {"id": "p1", "prompt": ..., "completion": ...}.'
        )
    if "id" not in row:
        raise ProbeError(f"probe row{where} has no 'id' field; every probe needs a stable id.")
    pid, role = str(row["id"]), row.get("role", default_role)
    known = {"id", "role", "prefix", "suffix", "prompt", "completion", "text", "prefix_ids", "suffix_ids"}
    meta = {k: v for k, v in row.items() if k not in known}
    for key in ("prefix", "suffix", "prompt", "completion", "text"):
        if row.get(key) is not None:
            _text(row, key, pid, where)
    if row.get("prefix_ids") is not None and row.get("suffix_ids") is not None:
        return Probe(
            pid,
            role,
            _token_ids(row["prefix_ids"], "prefix_ids", pid, where),
            _token_ids(row["suffix_ids"], "suffix_ids", pid, where),
            row.get("prefix", row.get("prompt")),
            row.get("suffix", row.get("completion")),
            meta,
        )
    if tokenizer is None:
        raise ProbeError(f"probe {pid!r}{where} has text but no token ids; pass a tokenizer.")
    if "prefix" in row or "prompt" in row:
        prefix = row.get("prefix", row.get("prompt"))
        suffix = row.get("suffix", row.get("completion"))
        if suffix is None:
            raise ProbeError(f"probe {pid!r}{where} has a prefix/prompt but no suffix/completion.")
        if prefix is None:
            raise ProbeError(f"probe {pid!r}{where} has a suffix/completion but its prefix/prompt is null.")
        return Probe(
            pid, role, _encode(tokenizer, prefix, True), _encode(tokenizer, suffix, False), prefix, suffix, meta
        )
    if "text" in row:
        ids = _encode(tokenizer, row["text"], True)
        if len(ids) <= prefix_tokens:
            raise ProbeError(
                f"probe {pid!r}{where}: text has {len(ids)} tokens, none left after a "
                f"{prefix_tokens}-token prefix. Lower prefix_tokens or give a longer text."
            )
        pre, suf = ids[:prefix_tokens], ids[prefix_tokens : prefix_tokens + suffix_tokens]
        return Probe(pid, role, pre, suf, tokenizer.decode(pre), tokenizer.decode(suf), meta)
    raise ProbeError(f"probe {pid!r}{where} needs prefix/suffix, prompt/completion, text, or prefix_ids/suffix_ids.")


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """Read a JSONL file, with errors that name the file and line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file. Check the path (relative paths start at {Path.cwd()}).")
    rows = []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise ProbeError(f"{path}:{n}: not valid JSON ({e.msg}).") from None
    return rows


def check_unique_ids(rows: list, label: str) -> None:
    """Refuse two rows with the same ``id``, naming both lines (a probe file is never silently de-duplicated).

    Args:
        rows: rows as read from the file (non-dict rows are left to :func:`probe_from_row`).
        label: the file name, for the message.
    """
    first: dict[str, int] = {}
    for n, row in enumerate(rows, 1):
        if isinstance(row, dict) and "id" in row:
            pid = str(row["id"])
            if pid in first:
                raise ProbeError(
                    f"duplicate probe id {pid!r} at {label}:{first[pid]} and {label}:{n}: every probe "
                    "needs a unique id (a row repeated on purpose belongs in the training file)."
                )
            first[pid] = n


def load_probes(
    source,
    tokenizer=None,
    prefix_tokens: int = 32,
    suffix_tokens: int = 32,
    roles: Iterable[str] | None = None,
    default_role: str = "member",
) -> ProbeSet:
    """Load probes from a JSONL path, a list of dicts or a ``datasets.Dataset``.

    Accepted row shapes: ``{"id", "role", "prefix", "suffix"}``, ``{"id", "role", "prompt", "completion"}``,
    ``{"id", "role", "text"}`` (split at ``prefix_tokens``, suffix of ``suffix_tokens`` tokens), or any of these
    with ``prefix_ids``/``suffix_ids`` given (then used as they are).

    Args:
        source: path to a JSONL file, a list of row dicts, or a ``datasets.Dataset``.
        tokenizer: the model's tokenizer; needed unless every row carries token ids.
        prefix_tokens: prefix length for ``text`` rows (Carlini et al. use 50).
        suffix_tokens: suffix length for ``text`` rows.
        roles: keep only rows with these roles.
        default_role: role of rows without one.

    Returns:
        ProbeSet: in file order; ids must be unique.
    """
    if isinstance(source, (str, os.PathLike)):
        rows, label = read_jsonl(source), str(source)
        if not rows:
            raise ProbeError(f"{source} holds no probes (the file is empty): give one JSON object per line.")
    else:
        rows, label = [r if isinstance(r, (str, int, float, list)) else dict(r) for r in source], "row"
    check_unique_ids(rows, label)
    probes = []
    for n, row in enumerate(rows, 1):
        if roles is not None and isinstance(row, dict) and row.get("role", default_role) not in roles:
            continue
        probes.append(probe_from_row(row, tokenizer, prefix_tokens, suffix_tokens, default_role, f"{label}:{n}"))
    return ProbeSet(probes)
