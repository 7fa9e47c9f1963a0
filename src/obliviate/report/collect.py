"""Find and load the files a run directory holds, whichever stages wrote them.

    python -c "from obliviate.report.collect import collect_run; print(collect_run('runs/demo').found)"

A run directory is anything `obliviate track`, `erase`, `score`, `bench` or `demo` wrote: the
files below are looked up in it and in its sub-directories (shallowest first), so one report can
cover a whole demo (`track/`, `erase/`, ...) or a single stage.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# name in RunFiles.found -> file name searched for
FILES = {
    "history": "history.jsonl",
    "flagged": "flagged.jsonl",
    "erasure": "erasure_report.json",
    "scores": "scores.jsonl",
    "scores_before": "scores_before.jsonl",
    "scores_after": "scores_after.jsonl",
    "utility": "utility.json",
    "utility_before": "utility_before.json",
    "utility_after": "utility_after.json",
    "timings": "timings.json",
    "probes": "probes.jsonl",
    "track": "track.json",
}
# Model and checkpoint directories hold nothing a report reads; skipping them keeps the walk short.
_SKIP_DIRS = {"plots", "__pycache__", ".git"}
MAX_DEPTH = 3


class RunDirError(FileNotFoundError):
    """The run directory is missing or holds nothing a report can be built from."""


@dataclass
class RunFiles:
    """Everything :func:`collect_run` found. Missing inputs are ``None`` / empty."""

    run_dir: Path
    found: dict[str, Path] = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)
    flagged: list[dict] = field(default_factory=list)
    erasure: dict | None = None
    scores: list[dict] = field(default_factory=list)
    scores_before: list[dict] = field(default_factory=list)
    scores_after: list[dict] = field(default_factory=list)
    utility_before: dict | None = None
    utility_after: dict | None = None
    timings: dict | None = None
    track: dict | None = None
    probe_meta: dict[str, dict] = field(default_factory=dict)

    @property
    def empty(self) -> bool:
        return not (
            self.history
            or self.flagged
            or self.erasure
            or self.scores
            or self.scores_before
            or self.utility_before
            or self.utility_after
            or self.timings
        )


def _find(run_dir: Path, name: str) -> Path | None:
    """Shallowest file called ``name`` under ``run_dir`` (ties broken by path, so the choice is stable)."""
    best: tuple[int, str, Path] | None = None
    for root, dirs, files in os.walk(run_dir):
        depth = len(Path(root).relative_to(run_dir).parts)
        dirs[:] = sorted(
            d for d in dirs if d not in _SKIP_DIRS and not d.startswith("checkpoint-") and not d.startswith(".")
        )
        if depth >= MAX_DEPTH:
            dirs[:] = []
        if name in files:
            path = Path(root) / name
            key = (depth, str(path), path)
            if best is None or key[:2] < best[:2]:
                best = key
    return best[2] if best else None


def read_jsonl_lenient(path: Path) -> list[dict]:
    """JSONL rows; a torn last line (a run killed mid-write) is dropped rather than failing the report."""
    rows = []
    lines = path.read_text().splitlines()
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if n == len(lines):
                break
            raise ValueError(
                f"{path}:{n} is not valid JSON; fix or remove that line and run the report again."
            ) from None
    return rows


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e.msg}); it may be from an interrupted run.") from None


def _probe_meta(files: RunFiles) -> dict[str, dict]:
    """Per-probe extras (``repetitions``, ...) joined from every place that may carry them.

    History rows carry scores only; the probes file (copied into the run, or the toy build's) and
    the flagged rows' ``meta`` carry the probes' own fields.
    """
    meta: dict[str, dict] = {}
    # A track run records the probes file it used (it may live outside the run directory).
    path = (files.track or {}).get("recipe", {}).get("probes") if "probes" not in files.found else None
    if isinstance(path, str) and Path(path).is_file():
        files.found["probes"] = Path(path)
    if "probes" in files.found:
        for row in read_jsonl_lenient(files.found["probes"]):
            if "id" in row:
                extra = {
                    k: v
                    for k, v in row.items()
                    if k not in ("prompt", "completion", "prefix", "suffix", "text", "prefix_ids", "suffix_ids")
                }
                meta[str(row["id"])] = extra
    for row in files.flagged:
        entry = meta.setdefault(str(row.get("id")), {})
        entry.update(row.get("meta") or {})
        entry.setdefault("role", row.get("role"))
    for row in files.history[:5000]:
        if "repetitions" in row:
            meta.setdefault(str(row["id"]), {})["repetitions"] = row["repetitions"]
    return meta


def collect_run(run_dir: str | os.PathLike) -> RunFiles:
    """Load every report input under ``run_dir``.

    Args:
        run_dir: a directory written by ``obliviate track|erase|score|bench|demo``.

    Returns:
        RunFiles: parsed contents, and ``found`` mapping each input name to the file used.

    Raises:
        RunDirError: ``run_dir`` does not exist or is not a directory.
    """
    run_dir = Path(run_dir)
    if not run_dir.exists():
        raise RunDirError(
            f"run directory {run_dir} does not exist. Pass the --out directory of "
            "`obliviate demo|track|erase|score` (e.g. runs/demo)."
        )
    if not run_dir.is_dir():
        raise RunDirError(f"{run_dir} is a file; pass the run directory that contains it ({run_dir.parent}).")
    files = RunFiles(run_dir=run_dir)
    for key, name in FILES.items():
        path = _find(run_dir, name)
        if path is not None:
            files.found[key] = path
    found = files.found
    if "history" in found:
        files.history = read_jsonl_lenient(found["history"])
    if "flagged" in found:
        files.flagged = read_jsonl_lenient(found["flagged"])
    if "erasure" in found:
        files.erasure = _read_json(found["erasure"])
    for key in ("scores", "scores_before", "scores_after"):
        if key in found:
            setattr(files, key, read_jsonl_lenient(found[key]))
    if "utility_before" in found:
        files.utility_before = _read_json(found["utility_before"])
    elif "utility" in found:
        files.utility_before = _read_json(found["utility"])
    if "utility_after" in found:
        files.utility_after = _read_json(found["utility_after"])
    if files.erasure and isinstance(files.erasure.get("utility"), dict):
        # The eraser's own before/after is measured on exactly the model it changed.
        files.utility_before = files.utility_before or files.erasure["utility"].get("before")
        files.utility_after = files.utility_after or files.erasure["utility"].get("after")
    if "timings" in found:
        files.timings = _read_json(found["timings"])
    if "track" in found:
        files.track = _read_json(found["track"])
    files.probe_meta = _probe_meta(files)
    return files


def group_of(probe_id: str, role: str | None, meta: dict[str, dict]) -> str:
    """Display group of a probe: ``canary ×N`` by repetition count when known, else its role."""
    info = meta.get(probe_id, {})
    role = role or info.get("role") or "member"
    reps = info.get("repetitions")
    if role == "canary":
        return f"canary ×{reps}" if reps is not None else "canaries"
    return {"member": "members", "control": "controls"}.get(role, role)


def group_order(labels) -> list[str]:
    """Canaries by repetition count, then members, then controls."""

    def key(label: str):
        if label.startswith("canary ×"):
            try:
                return (0, int(label.split("×", 1)[1]), label)
            except ValueError:
                return (0, 10**9, label)
        return ({"canaries": 1, "members": 2, "controls": 3}.get(label, 4), 0, label)

    return sorted(set(labels), key=key)


def gate_tolerances(report: dict) -> list[dict[str, Any]]:
    """The tolerances the run's gate applied, ``[{"benchmark", "score", "kind", "value", "direction"}]``.

    Read from the report's ``gate`` record (``UtilityGate.summary()``: the tolerances as the gate resolved
    them), never re-derived from the recipe; [] for an ungated run or a report with no such record. A
    tolerance's direction is its kind's (``TOLERANCE_KEYS``) when an older record lacks it.
    """
    from obliviate.benchmarks.tolerances import TOLERANCE_KEYS

    gate = report.get("gate")
    if not isinstance(gate, dict) or not isinstance(gate.get("tolerances"), list):
        return []
    return [
        {
            "benchmark": t.get("benchmark"),
            "score": t.get("score"),
            "kind": t["kind"],
            "value": t["value"],
            "direction": t.get("direction") or TOLERANCE_KEYS.get(t["kind"]),
        }
        for t in gate["tolerances"]
        if isinstance(t, dict) and t.get("kind") and t.get("value") is not None
    ]


def score_directions(report: dict | None) -> dict[str, str]:
    """``{"label/score": "lower" | "higher"}`` as the run recorded them: the utility scores' directions and
    the gate's (its baseline scores, its tolerances' kinds)."""
    report = report or {}
    recorded: dict[str, dict] = {}
    for source in ((report.get("gate") or {}).get("directions"), (report.get("utility") or {}).get("directions")):
        for label, scores in (source or {}).items():
            recorded.setdefault(label, {}).update({k: v for k, v in (scores or {}).items() if v})
    out = {f"{label}/{score}": d for label, scores in recorded.items() for score, d in scores.items()}
    for t in gate_tolerances(report):
        out.setdefault(f"{t['benchmark']}/{t['score']}", t["direction"])
    return out


def declared_direction(key: str) -> str | None:
    """The direction the registered benchmarks declare for the score name of ``label/score`` (None when none
    does, or they disagree): for utility files that record no directions (``utility.json``)."""
    from obliviate.benchmarks.registry import BENCHMARKS

    score = key.rsplit("/", 1)[-1]
    found = {BENCHMARKS.get(name).directions.get(score) for name in BENCHMARKS.names()} - {None}
    return found.pop() if len(found) == 1 else None
