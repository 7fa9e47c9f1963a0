"""``ErasureResult``: the erased model, ``erasure_report.json`` (contract 5) and how they are saved.

    python -c "from obliviate.erasure.result import ErasureResult; help(ErasureResult.save)"

Saving never overwrites: the output directory must not exist; everything is written under a
sibling temporary name (``<out>.tmp-<pid>``) and renamed into place only when complete.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from obliviate.erasure.log import ErasureLog
from obliviate.metrics.sets import set_mean, set_statistics
from obliviate.tables import format_table

REPORT_NAME = "erasure_report.json"


def _metrics(row: dict) -> dict:
    return {k: v for k, v in row.items() if k not in ("id", "role")}


def control_summary(rows: list[dict] | None) -> dict | None:
    if not rows:
        return None
    return {
        "count": len(rows),
        "mean_memorization_accuracy": set_mean(rows, "memorization_accuracy"),
        "mean_extraction_probability": set_mean(rows, "extraction_probability"),
        "extraction_rate": set_statistics(rows)["extraction_rate"],
    }


def group_change(
    before: list[dict] | None,
    after: list[dict] | None,
    groups: dict[str, str | None],
    reference: list[dict] | None = None,
) -> dict | None:
    """Per group: count, mean MA and mean suffix loss before/after, and after/before MA ratio (collateral);
    with ``reference`` rows (the same probes on the reference model) also their mean MA there."""
    if not before:
        return None
    after_by_id = {r["id"]: r for r in after}
    reference_by_id = {r["id"]: r for r in reference or []}
    out = {}
    for g in sorted({groups.get(r["id"]) for r in before}, key=str):
        b = [r for r in before if groups.get(r["id"]) == g]
        a = [after_by_id[r["id"]] for r in b]
        sb, sa = set_statistics(b), set_statistics(a)
        ma_b, ma_a = sb["mean_memorization_accuracy"], sa["mean_memorization_accuracy"]
        out[str(g)] = {
            "count": len(b),
            "memorization_accuracy_before": ma_b,
            "memorization_accuracy_after": ma_a,
            "memorization_accuracy_kept": ma_a / ma_b if ma_b > 0 else None,
            "loss_before": set_mean(b, "loss"),
            "loss_after": set_mean(a, "loss"),
            "extraction_rate_before": sb["extraction_rate"],
            "extraction_rate_after": sa["extraction_rate"],
        }
        if reference_by_id:
            out[str(g)]["memorization_accuracy_reference"] = set_mean(
                [reference_by_id[r["id"]] for r in b], "memorization_accuracy"
            )
    return out


def _sequences(log: ErasureLog) -> list[dict]:
    """One record per forget sequence: its chunk, metrics before/after, whether and from which step it is forgotten.

    ``forgotten`` is the criterion on the erased model with the controls re-scored there (``log.final_forgotten``).
    """
    chunk_of = {i: c["index"] for c in log.chunks for i in c["ids"]}
    after_by_id = {r["id"]: r for r in log.scores.forget_after}
    out = []
    for row in log.scores.forget_before:
        forgotten = bool(log.final_forgotten[row["id"]])
        out.append(
            {
                "id": row["id"],
                "role": row["role"],
                "group": log.groups.get(row["id"]),
                "chunk": chunk_of.get(row["id"]),
                "before": _metrics(row),
                "after": _metrics(after_by_id[row["id"]]),
                "forgotten_step": log.forgotten_steps.get(row["id"]) if forgotten else None,
                "forgotten": forgotten,
            }
        )
    return out


def _summary(log: ErasureLog, sequences: list[dict], controls_change: dict | None) -> dict:
    chunks, config, n_forgotten = log.chunks, log.config, sum(s["forgotten"] for s in sequences)
    return {
        "sequences": len(sequences),
        "forgotten": n_forgotten,
        "forgotten_rate": n_forgotten / len(sequences),
        "extraction_rate_before": set_statistics(log.scores.forget_before)["extraction_rate"],
        "extraction_rate_after": set_statistics(log.scores.forget_after)["extraction_rate"],
        "chunks": len(chunks),
        **{f"chunks_{s}": sum(c["status"] == s for c in chunks) for s in ("erased", "max_steps", "gate_exhausted")},
        "steps": sum(c["steps"] for c in chunks),
        "attempted_steps": sum(c["attempted_steps"] for c in chunks),
        "gate_rejections": sum(c["rejections"] for c in chunks),
        "optimizer_state_bytes": max((c["optimizer_state_bytes"] for c in chunks), default=0),
        "selected_weights": max((c["selected"] for c in chunks), default=0),
        "candidate_weights": max((c["candidates"] for c in chunks), default=0),
        "touched_tensors": len(log.touched),
        "target": config["target"],
        "retain_contrast": log.retain_contrast,
        "selector": config["selector"],
        "not_erased": not_erased_reason(chunks),
        **_controls_verdicts(controls_change or {}, config["min_controls_ma_kept"]),
    }


def _controls_verdicts(controls_change: dict, floor: float) -> dict[str, list[str]]:
    """``format_damage``: groups under ``floor`` of :func:`_floor_base`; ``format_reverted``: groups under
    ``floor`` of their MA before but not of the reference model's level (said beside the verdict)."""
    damage, reverted = [], []
    for g, c in controls_change.items():
        if c["memorization_accuracy_kept"] is None:
            continue
        before, after = c["memorization_accuracy_before"], c["memorization_accuracy_after"]
        if after < floor * _floor_base(c) - 1e-12:
            damage.append(
                f"controls of group {g!r} kept {100 * c['memorization_accuracy_kept']:.0f}% of their MA "
                f"({before:.3f} -> {after:.3f}; at least {100 * floor:.0f}% of {_floor_base(c):.3f} required"
                f"{_reference_note(c)})"
            )
        elif after < floor * before - 1e-12:
            reverted.append(
                f"controls of group {g!r} fell back toward the reference model ({before:.3f} -> {after:.3f}, it "
                f"gives them {c['memorization_accuracy_reference']:.3f}): what the fine-tuning taught their "
                "format, partly reverted"
            )
    return {"format_damage": damage, "format_reverted": reverted}


def _floor_base(change: dict) -> float:
    """The MA a group's controls must keep ``min_controls_ma_kept`` of: before, or the reference model's if lower.

    Controls score above the reference model (the one the fine-tuning started from) only by what the fine-tuning
    taught about their format; when the forget set was all or most of that fine-tuning, a model retrained without
    it would give them about the reference's MA. Falling back toward that level is the fine-tuning's own lesson
    reverted, not damage; falling below it, or below the floor of it, is.
    """
    before, ref = change["memorization_accuracy_before"], change.get("memorization_accuracy_reference")
    return before if ref is None else min(before, ref)


def _reference_note(change: dict) -> str:
    """Where the reference model puts the group: damage below it, or the fine-tuning's own lesson reverted."""
    ref = change.get("memorization_accuracy_reference")
    if ref is None:
        return ""
    where = "below" if change["memorization_accuracy_after"] < ref else "back toward"
    return f"; the reference model gives them {ref:.3f}: {where} where the fine-tuning found them"


def build_report(log: ErasureLog) -> dict:
    """The ``erasure_report.json`` mapping of a finished run, from its :class:`~obliviate.erasure.log.ErasureLog`."""
    sequences = _sequences(log)
    scores = log.scores
    controls_change = group_change(scores.controls_before, scores.controls_after, log.groups, scores.controls_reference)
    gate = dict(log.gate) if log.gate is not None else None
    return {
        "config": log.config,
        "summary": _summary(log, sequences, controls_change),
        "sequences": sequences,
        "steps": log.steps,
        "chunks": log.chunks,
        "gate_decisions": list(gate.pop("decisions")) if gate else [],
        # The gate as it ran: schedule, tolerances as resolved (kind, value, score, direction), each baseline
        # score's direction, time spent. Reports and plots read bounds and units from here, never from names.
        "gate": gate,
        "utility": log.utility,
        "controls": {
            "before": control_summary(scores.controls_before),
            "after": control_summary(scores.controls_after),
            "reference": control_summary(scores.controls_reference),  # on reference_model; None without one
        },
        # Collateral damage per group: never-trained controls, and trained probes that were not erased.
        "collateral": {
            "controls": controls_change,
            "not_erased": group_change(scores.collateral_before, scores.collateral_after, log.groups),
        },
        # The gate's text scores on held-out text it never read (--heldout, else the audit split of --retain).
        "heldout": {
            "before": log.heldout["before"],
            "after": log.heldout["after"],
            "source": log.heldout_source if log.heldout["before"] else None,
        },
        "retain_split": log.retain_split,
        "thresholds": log.thresholds,
        "timings": dict(log.timings),
        "prefix_cache": log.prefix_cache,
        "resumed_from_chunk": log.resumed_from,
    }


def not_erased_reason(chunks: list[dict]) -> str | None:
    """In words, why some chunk was not fully erased (None when every chunk was)."""
    exhausted = [c["index"] for c in chunks if c["status"] == "gate_exhausted"]
    capped = [c["index"] for c in chunks if c["status"] == "max_steps"]
    parts = []
    if exhausted:
        parts.append(
            f"chunk(s) {', '.join(map(str, exhausted))} could not be erased within the utility gate: every "
            "retry of the last block broke a gated score (see gate_decisions for which)"
        )
    if capped:
        parts.append(f"chunk(s) {', '.join(map(str, capped))} reached max_steps before every sequence was forgotten")
    return "; ".join(parts) or None


def format_summary(report: dict) -> str:
    """Terminal text: chunk table, totals, utility before/after."""
    rows = [
        [
            c["index"],
            len(c["ids"]),
            c["status"],
            c["steps"],
            c["rejections"],
            sum(1 for s in report["sequences"] if s["chunk"] == c["index"] and s["forgotten"]),
        ]
        for c in report["chunks"]
    ]
    text = format_table(rows, ["chunk", "sequences", "status", "steps", "rejections", "forgotten"])
    s, t = report["summary"], report["timings"]
    text += (
        f"\n\nforgotten {s['forgotten']}/{s['sequences']} ({100 * s['forgotten_rate']:.1f}%); extraction rate "
        f"{s['extraction_rate_before']:.3f} -> {s['extraction_rate_after']:.3f}; {s['steps']} steps "
        f"({s['gate_rejections']} rejected by the gate); {s['selected_weights']}/{s['candidate_weights']} "
        f"weights selected; optimizer state {s['optimizer_state_bytes']} bytes"
    )
    text += (
        f"\ntime {t['total_s']:.1f}s (gate {t['gate_s']:.1f}s, scoring {t['scoring_s']:.1f}s, "
        f"update {t['update_s']:.1f}s, selection {t['selection_s']:.1f}s)"
    )
    before, after = report["utility"]["before"], report["utility"]["after"]
    held = report.get("heldout") or {}
    before = {**before, **(held.get("before") or {})}
    after = {**after, **(held.get("after") or {})}
    util = [
        [f"{b}/{k}", v, after.get(b, {}).get(k, float("nan"))]
        for b, scores in before.items()
        for k, v in scores.items()
    ]
    if util:
        text += "\n\n" + format_table(util, ["utility (heldout_*: text the gate never saw)", "before", "after"])
    controls = (report.get("collateral") or {}).get("controls")
    if controls:
        # The reference model's MA (ga_to_reference) says where the fine-tuning found the controls.
        reference = any("memorization_accuracy_reference" in c for c in controls.values())
        keys = ["count", *(["memorization_accuracy_reference"] if reference else [])]
        keys += ["memorization_accuracy_before", "memorization_accuracy_after", "loss_before", "loss_after"]
        rows = [[g, *(c.get(k, float("nan")) for k in keys)] for g, c in controls.items()]
        header = ["controls' group", "n", *(["MA reference"] if reference else [])]
        text += "\n\n" + format_table(rows, header + ["MA before", "MA after", "loss before", "loss after"])
    return text


def last_line(report: dict) -> str:
    """One sentence: everything erased, or what was not and why."""
    s = report["summary"]
    damage = s.get("format_damage") or []
    if s["forgotten"] == s["sequences"] and not damage:
        reverted = s.get("format_reverted") or []
        return f"erased all {s['sequences']} sequences within the utility gate{'; ' if reverted else ''}" + (
            "; ".join(reverted) + "."
        )
    if s["forgotten"] == s["sequences"]:
        return (
            f"FORMAT DAMAGED: all {s['sequences']} sequences are forgotten, but so is text of their format the "
            f"model never saw: {'; '.join(damage)}."
        )
    reason = s.get("not_erased") or "the final check on the erased model found some still memorized"
    extra = f"; also {'; '.join(damage)}" if damage else ""
    return (
        f"NOT ERASED: {s['sequences'] - s['forgotten']} of {s['sequences']} sequences are still memorized: "
        f"{reason}{extra}."
    )


def check_new_dir(out: str | os.PathLike) -> Path:
    """``out`` as a Path, raising when it exists (nothing is ever overwritten)."""
    out = Path(out)
    if out.exists():
        raise FileExistsError(
            f"{out} already exists; erasure writes a new directory and never overwrites. "
            "Choose another --out, or remove it first."
        )
    return out


class ErasureResult:
    """The erased model (``.model``: changed in place, or a ``PeftModel`` for ``target: lora``) and ``.report``."""

    def __init__(self, model, tokenizer, report: dict, config):
        self.model, self.tokenizer, self.report, self.config = model, tokenizer, report, config

    def save(self, out_dir: str | os.PathLike) -> Path:
        """Write the model (safetensors) or adapter, the tokenizer, ``erasure_report.json`` and plots.

        Args:
            out_dir: a directory that must not exist yet.

        Returns:
            The directory written.

        Raises:
            FileExistsError: ``out_dir`` exists.
        """
        out = check_new_dir(out_dir)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f"{out.name}.tmp-{os.getpid()}")
        if tmp.exists():
            shutil.rmtree(tmp)  # our own pid's leftover: nobody else writes this name
        try:
            tmp.mkdir()
            self.model.save_pretrained(tmp, safe_serialization=True)
            self.tokenizer.save_pretrained(tmp)
            (tmp / REPORT_NAME).write_text(json.dumps(self.report, indent=1))
            if getattr(self.config, "plots", True):
                from obliviate.erasure.plots import write_plots

                write_plots(self.report, tmp / "plots")
            check_new_dir(out)
            tmp.rename(out)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return out
