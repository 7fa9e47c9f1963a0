"""What ``obliviate erase`` says about itself: a missing gate or controls, a resume, an interruption.

    from obliviate.commands._erase_notes import run_notes, resume_note, interrupted_note

An erasure without a utility gate, or judged against absolute thresholds instead of never-trained
controls, is a weaker result than the default; the user must hear so before the run and again in
its closing lines, never find "(0 rejected by the gate)" and guess.
"""

from __future__ import annotations

import json
import os


def has_gate(config, retain) -> bool:
    """Whether the run is gated: ``gate: null`` is not; the default gate needs retained text."""
    gate = getattr(config, "gate", None)
    return gate is not None and (gate != "default" or retain is not None)


def _forget_has_controls(forget) -> bool:
    from obliviate.data.probes import read_jsonl

    try:
        return any(isinstance(r, dict) and r.get("role") == "control" for r in read_jsonl(forget))
    except (OSError, ValueError):
        return True  # an unreadable file gets its own error when the run loads it


def run_notes(paths: dict, config) -> list[str]:
    """Warnings for a run without a gate or without controls (empty for a fully gated, control-relative run)."""
    notes = []
    if not has_gate(config, paths.get("retain")):
        if getattr(config, "gate", None) is None:
            notes.append("note: no utility gate (--no-gate / gate: null): no erasure step is checked or rolled back.")
        else:
            notes.append(
                "WARNING: no utility gate: without --retain (or a `gate:` section) no erasure step is "
                'checked or rolled back. Pass --retain FILE ({"text"} JSONL) for the default gate '
                "(retain perplexity +2% at most), or --no-gate to erase ungated on purpose."
            )
    thresholds = getattr(config, "thresholds", "auto")
    if thresholds == "absolute" or (
        thresholds == "auto"
        and not paths.get("controls")
        and paths.get("forget")
        and not _forget_has_controls(paths["forget"])
    ):
        notes.append(
            f"WARNING: no controls: without --controls (or control rows in {paths.get('forget')}) "
            f"'forgotten' means below ABSOLUTE thresholds (MA < {getattr(config, 'max_memorization_accuracy', '?')}, "
            f"extraction probability < {getattr(config, 'max_extraction_probability', '?')}), not below the "
            "never-trained controls' level. Pass --controls FILE (role=control probes) for the latter."
        )
    return notes


def _state(out: str | os.PathLike) -> dict | None:
    from obliviate.erasure.run import partial_dir

    state = partial_dir(out) / "state.json"
    try:
        return json.loads(state.read_text())
    except (OSError, ValueError):
        return None


def resume_note(out: str | os.PathLike) -> str | None:
    """``"resuming ..."`` when ``out`` has a partial state from an interrupted run, else None."""
    from obliviate.erasure.run import partial_dir

    state = _state(out)
    if state is None:
        return None
    done = int(state.get("next_chunk", 0))
    return (
        f"resuming the interrupted run from {partial_dir(out)}: {done} chunk{'s' if done != 1 else ''} "
        "already done (the result is the same as an uninterrupted run)."
    )


def interrupted_note(out: str | os.PathLike) -> str:
    """What to do after Ctrl-C: the finished chunks are kept and the same command resumes."""
    from obliviate.erasure.run import partial_dir

    state = _state(out)
    if state is None:
        return "interrupted before the first chunk finished; nothing was saved. Rerun the same command to start again."
    done = int(state.get("next_chunk", 0))
    return (
        f"interrupted after chunk {done}; its state is in {partial_dir(out)}. Rerun the same command to "
        "resume from there."
    )


def closing_notes(report: dict, notes: list[str]) -> list[str]:
    """The warnings again, as the last lines, so a long run's output still ends with them."""
    lines = [n.replace("WARNING: ", "warning: ", 1) for n in notes]
    if report.get("resumed_from_chunk"):
        lines.append(f"resumed from chunk {report['resumed_from_chunk']} of an interrupted run")
    return lines
