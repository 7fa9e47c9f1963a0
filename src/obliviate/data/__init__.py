"""Probe sets, flagged-file I/O and the synthetic corpus."""

from obliviate.data.probes import (
    ROLES,
    Probe,
    ProbeError,
    ProbeSet,
    ensure_pad_token,
    load_probes,
    read_jsonl,
)

__all__ = ["ROLES", "Probe", "ProbeError", "ProbeSet", "ensure_pad_token", "load_probes", "read_jsonl"]
