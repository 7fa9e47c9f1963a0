"""Resume state of an interrupted erasure: the weights touched so far and the report so far.

    python -c "from obliviate.erasure.state import load_checkpoint; help(load_checkpoint)"

Written after every finished chunk into ``<out>.partial/``: ``weights-<chunk>.safetensors`` holds
every parameter any selection has touched (unselected ones are still the input model's), then
``state.json`` is atomically replaced to point at it. A run killed at any moment therefore finds
either the previous complete state or the new one. Every random draw of the loop is seeded by
(seed, chunk, step), so a resumed run needs no RNG state to end with the same weights.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

STATE_VERSION = 1


class ResumeError(ValueError):
    """A partial directory that does not belong to this run."""


def fingerprint(config: dict, forget_ids: list[str], model_name: str | None, n_params: int) -> str:
    """What must match for a partial state to be resumed: the config, the forget ids, the model."""
    keep = {k: v for k, v in config.items() if k not in ("plots",)}
    blob = json.dumps(
        {"config": keep, "ids": forget_ids, "model": model_name, "n_params": n_params}, sort_keys=True, default=str
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def save_checkpoint(directory: str | os.PathLike, tensors: dict[str, torch.Tensor], payload: dict) -> None:
    """Write the tensors, then atomically point ``state.json`` at them; older weight files are removed."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    weights = f"weights-{payload['next_chunk']:06d}.safetensors"
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(directory / weights))
    tmp = directory / f"state.json.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump({**payload, "weights": weights, "version": STATE_VERSION}, f)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(directory / "state.json")
    for old in directory.glob("weights-*.safetensors"):
        if old.name != weights:
            old.unlink()


def load_checkpoint(directory: str | os.PathLike, expected_fingerprint: str) -> tuple[dict, dict] | None:
    """``(payload, tensors)`` of a partial state, or None when there is none.

    Raises:
        ResumeError: the state was written by a run with another config, forget set or model.
    """
    directory = Path(directory)
    state_file = directory / "state.json"
    if not state_file.is_file():
        return None
    payload = json.loads(state_file.read_text())
    if payload.get("version") != STATE_VERSION or payload.get("fingerprint") != expected_fingerprint:
        raise ResumeError(
            f"{directory} holds the resume state of a different erasure run (other config, forget "
            "set or model). Delete it to start over, or rerun with the same options to resume."
        )
    tensors = load_file(str(directory / payload["weights"]))
    return payload, tensors


def resume(
    directory: str | os.PathLike, expected_fingerprint: str, params: dict[str, torch.nn.Parameter], log, gate=None
) -> int:
    """Load a partial state into a run: weights into ``params``, records into ``log``, decisions into ``gate``.

    Args:
        directory: the run's checkpoint directory.
        expected_fingerprint: :func:`fingerprint` of this run.
        params: the model's parameters by name (the touched ones are overwritten).
        log: the run's :class:`~obliviate.erasure.log.ErasureLog` (``resumed_from`` set).
        gate: the run's gate, whose decisions so far are restored (None: ungated).

    Returns:
        The chunk to start at (0 when there is no state).

    Raises:
        ResumeError: the state belongs to another run.
    """
    loaded = load_checkpoint(directory, expected_fingerprint)
    if loaded is None:
        return 0
    payload, tensors = loaded
    with torch.no_grad():
        for n, t in tensors.items():
            params[n].data.copy_(t.to(params[n].device))
    log.resume(payload, set(tensors))
    if gate is not None:
        gate.decisions[:] = payload["gate_decisions"]
    log.resumed_from = payload["next_chunk"]
    return payload["next_chunk"]
