"""The report's erasure sections, read from an erasure run's ``report.json``.

``_erasure_sections``: the trajectory (gate decisions, chunks), what the gate saw beside held-out text it
never saw, the collateral on never-erased probes, and the per-sequence before/after;
``_erasure_warnings``: the summary's plain warnings when the run had no utility gate or no controls.
"""

from __future__ import annotations

from pathlib import Path

from obliviate.report import plots
from obliviate.report.render import Section
from obliviate.report.rows import _flat, _num, utility_rows


def _erasure_warnings(report: dict) -> list[str]:
    """Say plainly when the erasure ran without a gate or without controls (a weaker result)."""
    out = []
    # The run records its gate (``gate``: null when ungated); a report without that record counts its decisions.
    if not report.get("gate") and not report.get("gate_decisions"):
        out.append(
            "**No utility gate**: no erasure step was checked or rolled back (the run had no retained "
            "text and no `gate:` section, or `gate: null`); utility was not protected."
        )
    thresholds = report.get("thresholds") or {}
    # Reports record the control groups the criterion had (older ones a single threshold source).
    source = thresholds.get("source", "controls" if thresholds.get("control_groups") else "absolute")
    if thresholds and source != "controls":
        out.append(
            f"**No controls**: 'forgotten' means below {source} thresholds, not below the never-trained "
            "controls' level."
        )
    return out


def _erasure_sections(report: dict, plots_dir: Path) -> list[Section]:
    """The erasure run's sections in report order (each only when its inputs exist)."""
    return (
        _trajectory(report, plots_dir)
        + _gate_and_heldout(report)
        + _collateral(report)
        + _per_sequence(report, plots_dir)
    )


def _trajectory(report: dict, plots_dir: Path) -> list[Section]:
    """The forget metrics and gated utility per step (plot), the gate's decisions and the chunks (tables)."""
    config = report.get("config") or {}
    decisions = report.get("gate_decisions") or []
    img = plots.plot_erasure_trajectory(report, plots_dir / "erasure_trajectory.png")
    rows = [
        [
            _num(d.get("step")),
            _num(d.get("chunk")),
            d.get("decision", "–")
            + (" (between original and reference)" if d.get("anchor") == "reference band" else ""),
            "; ".join(d.get("violations") or d.get("outside_original") or []) or "–",
            ", ".join(f"{k}={v:.4g}" for k, v in _flat(d.get("scores")).items()),
        ]
        for d in decisions
    ]
    chunks = [
        [c.get("index"), len(c.get("ids") or []), c.get("status", "–"), _num(c.get("steps"))]
        for c in report.get("chunks") or []
    ]
    tables = []
    if rows:
        tables.append(("Gate decisions", ["step", "chunk", "decision", "violations", "scores"], rows))
    if chunks:
        tables.append(("Chunks", ["chunk", "sequences", "status", "steps"], chunks))
    if not img and not tables:
        return []
    n_acc = sum(d.get("decision") == "accepted" for d in decisions)
    return [
        Section(
            "Erasure trajectory",
            f"Erasure with `{config.get('method', '?')}` (selector `{config.get('selector', '?')}`). Top: the forget "
            "set's extraction rate and mean MA after each optimizer step. Bottom: the gated utility scores as a "
            "change from before erasure, with the gate's tolerances dashed. After every gated block of steps the "
            "gate either accepts (✓) or rejects (✗): a rejected block is rolled back bit-for-bit, the learning rate "
            f"is reduced and the block retried. {n_acc} of {len(decisions)} gate checks were accepted"
            + (
                f", {n_band} of them outside the original's bounds but between it and the reference model "
                "(gate.reference; the violations column gives the original's bounds they broke)."
                if (n_band := sum(d.get("anchor") == "reference band" for d in decisions))
                else "."
            ),
            img,
            tables,
        )
    ]


def _per_sequence(report: dict, plots_dir: Path) -> list[Section]:
    """Each erased sequence's MA, extraction probability and exact extraction before → after, and whether and
    when it was forgotten."""
    seqs = report.get("sequences") or []
    img = plots.plot_before_after(report, plots_dir / "before_after.png")
    if not seqs:
        return []
    keys = ("memorization_accuracy", "extraction_probability", "exact_extraction")
    table = [
        [s["id"], s.get("role", "–")]
        + [f"{_num((s.get('before') or {}).get(k))} → {_num((s.get('after') or {}).get(k))}" for k in keys]
        + ["yes" if s.get("forgotten") else "NO", _num(s.get("forgotten_step"))]
        for s in seqs
    ]
    n = sum(bool(s.get("forgotten")) for s in seqs)
    return [
        Section(
            "Per-sequence before and after",
            f"{n} of {len(seqs)} sequences asked to be erased were forgotten: not exactly extractable, with MA and "
            "extraction probability at most the controls' (their 0.9-quantile on the current model by default; "
            "docs/erasure.md). "
            "Red dots are before erasure, blue after.",
            img,
            [
                (
                    "Sequences",
                    ["id", "role", "MA", "extraction prob.", "exact extraction", "forgotten", "at step"],
                    table,
                )
            ],
        )
    ]


def _gate_and_heldout(report: dict) -> list[Section]:
    """The gated scores and the same scores on text the gate never read, side by side: a gate that protects only
    its own rows shows as a held-out change it never saw."""
    utility, heldout = report.get("utility") or {}, report.get("heldout") or {}
    before = {**(utility.get("before") or {}), **(heldout.get("before") or {})}
    after = {**(utility.get("after") or {}), **(heldout.get("after") or {})}
    if not before or not after:
        return []
    directions = {**((report.get("gate") or {}).get("directions") or {}), **(utility.get("directions") or {})}
    source = heldout.get("source") or "none"
    return [
        Section(
            "What the gate saw, and what it did not",
            "Every gated score before and after erasure, and the `heldout_*` rows: the same benchmarks on text no "
            f"loss and no gate read (source: {source}). If held-out text moved more than the gated text, the gate "
            "protected only its own rows.",
            tables=[
                (
                    "Gated and held-out scores",
                    ["benchmark/score", "before", "after", "change"],
                    utility_rows(before, after, directions),
                )
            ],
        )
    ]


def _collateral(report: dict) -> list[Section]:
    """Per group: never-trained controls and not-erased trained probes, MA and loss before and after."""
    collateral = report.get("collateral") or {}
    rows = []
    for kind, label in (("controls", "controls"), ("not_erased", "not erased")):
        for group, c in sorted((collateral.get(kind) or {}).items()):
            rows.append(
                [
                    f"{label} {group}",
                    _num(c.get("count")),
                    f"{_num(c.get('memorization_accuracy_before'))} → {_num(c.get('memorization_accuracy_after'))}",
                    f"{_num(c.get('loss_before'))} → {_num(c.get('loss_after'))}",
                    f"{_num(c.get('extraction_rate_before'))} → {_num(c.get('extraction_rate_after'))}",
                ]
            )
    if not rows:
        return []
    damage = (report.get("summary") or {}).get("format_damage") or []
    return [
        Section(
            "Collateral: what erasure did to text it was not asked to erase",
            "Never-trained controls and trained probes that were not erased, per group (format). A group of controls "
            "that keeps less than `min_controls_ma_kept` of its MA makes the verdict name it"
            + (": " + "; ".join(damage) if damage else "; none did here."),
            tables=[("Collateral", ["probes", "n", "mean MA", "mean loss", "extraction rate"], rows)],
        )
    ]
