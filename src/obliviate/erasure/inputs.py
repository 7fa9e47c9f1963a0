"""Retained text and the utility gate of an erasure run, from what the caller gave.

    python -c "from obliviate.erasure.inputs import build_gate; help(build_gate)"
"""

from __future__ import annotations

import os


def read_retain(retain) -> list[str]:
    """Texts of a ``{"text"}`` JSONL path, or the given strings; ``[]`` for None."""
    if retain is None:
        return []
    if isinstance(retain, (str, os.PathLike)):
        from obliviate.data.probes import ProbeError, read_jsonl

        rows = read_jsonl(retain)
        bad = [n for n, r in enumerate(rows, 1) if not isinstance(r, dict) or not isinstance(r.get("text"), str)]
        if bad:
            raise ProbeError(f"{retain}:{bad[0]}: retain rows need a \"text\" string field.")
        return [r["text"] for r in rows]
    return [str(t) for t in retain]


def build_gate(config, tokenizer, retain, retain_texts: list[str]):
    """The :class:`~obliviate.benchmarks.UtilityGate` of ``config.gate``.

    ``"default"``: :func:`~obliviate.benchmarks.default_retain_gate` on the retain file (retain perplexity at
    most +2%); the same benchmark on the texts when retain is a list; no gate without retained text.
    A mapping is a ``gate:`` section; None is no gate.
    """
    from obliviate.benchmarks import UtilityGate, default_retain_gate

    section = config.gate
    if section is None:
        return None
    if section == "default":
        if isinstance(retain, (str, os.PathLike)):
            return default_retain_gate(str(retain), tokenizer)
        if retain_texts:
            return UtilityGate.from_config({"benchmarks": [
                {"name": "perplexity", "data": [{"text": t} for t in retain_texts], "label": "retain",
                 "max_relative_increase": 0.02}]}, tokenizer)
        return None
    return UtilityGate.from_config(section, tokenizer)
