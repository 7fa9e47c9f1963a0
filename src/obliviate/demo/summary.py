"""What the demo leaves at the end: ``OUT/demo.json`` and the before/after tables it prints.

    obliviate demo --quick --out /tmp/demo && python -m json.tool /tmp/demo/demo.json

The printed summary ends with the erasure's verdict in words, on the last line.
"""

from __future__ import annotations

from pathlib import Path


def summary_record(
    out: Path,
    settings,
    toy: Path,
    origin: str,
    track: Path,
    flagged_path: Path,
    flagged: list[dict],
    erased: Path,
    report: dict,
    html: Path,
    utility_before: dict,
    utility_after: dict,
    seconds: dict,
) -> dict:
    """The run's summary, as written to ``OUT/demo.json`` and returned by ``run_demo``."""
    return {
        "out": str(out),
        "toy": str(toy),
        "toy_origin": origin,
        "recipe": settings.recipe,
        "quick": settings.is_quick,
        "tracked_model": str(track / "model"),
        "flagged": str(flagged_path),
        "erased_model": str(Path(erased).resolve()),
        "flagged_ids": [r["id"] for r in flagged],
        "timings": seconds,
        "erasure": report.get("summary"),
        "report": str(html),
        "utility_before": utility_before,
        "utility_after": utility_after,
    }


def summary_text(
    out: Path,
    meta: dict[str, dict],
    before: list[dict],
    after: list[dict],
    utility_before: dict,
    utility_after: dict,
    report: dict,
    seconds: dict,
) -> str:
    """The before/after tables printed at the end of the demo (``meta``: probe rows by id, for repetitions)."""
    from obliviate.report import group_table, utility_rows
    from obliviate.report.tables import format_table

    groups = group_table(before, after, meta)
    text = "\n" + "=" * 78 + "\nobliviate demo: before -> after erasure\n\n"
    text += format_table(
        [[g, n, f"{eb} -> {ea}", f"{mb} -> {ma}"] for g, n, eb, ea, mb, ma in groups],
        ["group", "probes", "extracted", "mean MA"],
    )
    text += "\n\n" + format_table(utility_rows(utility_before, utility_after), ["utility", "before", "after", "change"])
    s = report.get("summary") or {}
    if s:
        text += (
            f"\n\nerased {s.get('forgotten')}/{s.get('sequences')} flagged sequences in {s.get('steps')} steps; "
            f"gate: {len(report.get('gate_decisions') or [])} checks, {s.get('gate_rejections')} rejected"
        )
    collateral = report.get("collateral") or {}
    rows = []
    for key, label in (("controls", "controls"), ("not_erased", "unflagged")):
        for g, c in (collateral.get(key) or {}).items():
            rows.append(
                [
                    f"{label} {g}",
                    c["count"],
                    f"{c['memorization_accuracy_before']:.3f} -> {c['memorization_accuracy_after']:.3f}",
                    f"{c['loss_before']:.3f} -> {c['loss_after']:.3f}",
                ]
            )
    if rows:
        text += "\n\n" + format_table(rows, ["collateral (never erased)", "n", "mean MA", "mean loss"])
    text += "\n\n" + format_table([[k, f"{v:.1f}"] for k, v in seconds.items()], ["stage", "seconds"])
    text += f"\n\nreport: {out / 'report.html'} (and report.md, plots/)\n"
    if s:
        from obliviate.erasure.result import last_line

        text += last_line(report) + "\n"  # the verdict, in words, on the last line
    return text
