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
                raise ProbeError(f"probe {probe.id!r} has an empty suffix: there is nothing to measure. "
                                 "Give it a non-empty suffix/completion, or drop it.")
            if not probe.prefix_ids:
                # Nothing predicts the first suffix token then: its score would read a pad position.
                raise ProbeError(f"probe {probe.id!r} has an empty prefix: the first suffix token has no context "
                                 "to be predicted from. Give at least one prefix token (e.g. the tokenizer's BOS).")
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
            if not truncate or len(p.suffix_ids) >= max_length:
                raise ProbeError(
                    f"probe {p.id!r} is {len(p)} tokens ({len(p.prefix_ids)} prefix + {len(p.suffix_ids)} suffix), "
                    f"longer than the model's context of {max_length}. Shorten it, or pass truncate=True "
                    "(--truncate) to drop the oldest prefix tokens."
                )
            keep = max_length - len(p.suffix_ids)
            out.append(Probe(p.id, p.role, p.prefix_ids[len(p.prefix_ids) - keep:], p.suffix_ids, None, p.suffix, p.meta))
        return ProbeSet(out)

    def check_vocab(self, vocab_size: int) -> None:
        for p in self.probes:
            bad = [t for t in p.input_ids if t < 0 or t >= vocab_size]
            if bad:
                raise ProbeError(f"probe {p.id!r} has token ids {bad[:5]} outside the vocabulary [0, {vocab_size}); "
                                 "it was tokenized with another tokenizer — re-tokenize from its text.")


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


def probe_from_row(row: dict, tokenizer=None, prefix_tokens: int = 32, suffix_tokens: int = 32,
                   default_role: str = "member", line: str = "") -> Probe:
    """Build a :class:`Probe` from one input row (see :func:`load_probes` for the accepted shapes)."""
    where = f" ({line})" if line else ""
    if "id" not in row:
        raise ProbeError(f"probe row{where} has no 'id' field; every probe needs a stable id.")
    pid, role = str(row["id"]), row.get("role", default_role)
    known = {"id", "role", "prefix", "suffix", "prompt", "completion", "text", "prefix_ids", "suffix_ids"}
    meta = {k: v for k, v in row.items() if k not in known}
    if row.get("prefix_ids") is not None and row.get("suffix_ids") is not None:
        return Probe(pid, role, [int(t) for t in row["prefix_ids"]], [int(t) for t in row["suffix_ids"]],
                     row.get("prefix", row.get("prompt")), row.get("suffix", row.get("completion")), meta)
    if tokenizer is None:
        raise ProbeError(f"probe {pid!r}{where} has text but no token ids; pass a tokenizer.")
    if "prefix" in row or "prompt" in row:
        prefix = row.get("prefix", row.get("prompt"))
        suffix = row.get("suffix", row.get("completion"))
        if suffix is None:
            raise ProbeError(f"probe {pid!r}{where} has a prefix/prompt but no suffix/completion.")
        return Probe(pid, role, _encode(tokenizer, prefix, True), _encode(tokenizer, suffix, False), prefix, suffix, meta)
    if "text" in row:
        ids = _encode(tokenizer, row["text"], True)
        if len(ids) <= prefix_tokens:
            raise ProbeError(f"probe {pid!r}{where}: text has {len(ids)} tokens, none left after a "
                             f"{prefix_tokens}-token prefix. Lower prefix_tokens or give a longer text.")
        pre, suf = ids[:prefix_tokens], ids[prefix_tokens:prefix_tokens + suffix_tokens]
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


def load_probes(source, tokenizer=None, prefix_tokens: int = 32, suffix_tokens: int = 32,
                roles: Iterable[str] | None = None, default_role: str = "member") -> ProbeSet:
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
    else:
        rows, label = [dict(r) for r in source], "row"
    probes = []
    for n, row in enumerate(rows, 1):
        if roles is not None and row.get("role", default_role) not in roles:
            continue
        probes.append(probe_from_row(row, tokenizer, prefix_tokens, suffix_tokens, default_role, f"{label}:{n}"))
    return ProbeSet(probes)
