"""The files ``MemorizationCallback`` writes under ``OUTPUT_DIR/memorization/`` and how they survive a resume.

``history.jsonl`` (per-probe scores per step), ``summaries.jsonl`` (set-level metrics per step),
``flagged.jsonl`` (one row per flag, never rewritten) and ``flagged.meta.json`` (thresholds, groups,
baseline). :class:`MemorizationFiles` is the callback's base class: only the main process calls its
methods, which read the callback's settings and state (``dir``, ``probes``, ``tokenizer``, ``metrics``,
``flag_rule``, ``budget``, ``sampling``, ``groups``, ``baselines``, ``flagged``, ``_model()``).
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path

from obliviate.callbacks.config import TrackingError
from obliviate.callbacks.flagging import BASELINE_FIELDS, RULE_FIELDS, FlagResult, group_key
from obliviate.data.flagged import append_flagged, flagged_row, write_meta
from obliviate.data.probes import read_jsonl

# The callback's own logger, not this module's: its resume and flag messages are the callback's, and users
# filter them under that name (docs/callbacks.md).
logger = logging.getLogger("obliviate.callbacks.memorization")


def _rewrite_jsonl(path: Path, rows: list[dict]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    tmp.replace(path)


class MemorizationFiles:
    """History, summaries, flags and meta of a :class:`~obliviate.callbacks.MemorizationCallback` run."""

    # -- paths ------------------------------------------------------------------------------------
    @property
    def history_path(self) -> Path:
        return self.dir / "history.jsonl"

    @property
    def flagged_path(self) -> Path:
        return self.dir / "flagged.jsonl"

    @property
    def meta_path(self) -> Path:
        return self.dir / "flagged.meta.json"

    @property
    def summaries_path(self) -> Path:
        return self.dir / "summaries.jsonl"

    def _check_writable(self) -> None:
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=self.dir, prefix=".write-test-"):
                pass
        except OSError as e:
            raise TrackingError(
                f"cannot write the memorization files to {self.dir}: {e}. Give an output_dir you can write to."
            ) from None

    # -- writing ----------------------------------------------------------------------------------
    def _prepare_files(self, step: int) -> dict[str, int | None]:
        """Start fresh files, or after a resume cut history back to ``step`` and read the flags made so far.

        ``flagged.jsonl`` exists from the start, empty until a flag is made: no file would mean no run.
        """
        self.dir.mkdir(parents=True, exist_ok=True)
        if step == 0:
            old = [p for p in (self.history_path, self.flagged_path, self.summaries_path) if p.exists()]
            if old:
                logger.warning("starting a new run: replacing %s", ", ".join(str(p) for p in old))
                for p in old:
                    p.unlink()
            self.flagged_path.touch()
            return {}
        # Rows past the checkpoint describe weights the resumed run replaces and will score again.
        for path in (self.history_path, self.summaries_path):
            if path.exists():
                rows = read_jsonl(path)
                kept = [r for r in rows if r["step"] <= step]
                if len(kept) < len(rows):
                    logger.info("resuming at step %d: dropped %d rows of %s past it", step, len(rows) - len(kept), path)
                    _rewrite_jsonl(path, kept)
        # Flags are findings about weights that existed: kept, never written twice.
        self.flagged_path.touch()
        return {r["id"]: r.get("step") for r in read_jsonl(self.flagged_path)}

    def _history_baselines(self) -> list[dict]:
        rows = [r for r in read_jsonl(self.history_path) if r["step"] == 0] if self.history_path.exists() else []
        missing = [p.id for p in self.probes if p.id not in {r["id"] for r in rows}]
        if missing:
            logger.warning(
                "resuming without step-0 scores for %d probes (%s) in %s: those probes are judged by "
                "absolute evidence only (no baseline to measure what this fine-tuning added).",
                len(missing),
                ", ".join(missing[:5]),
                self.history_path,
            )
        return rows

    def _write_meta(self) -> None:
        model = self._model()
        thresholds = {**self.flag_rule.describe(), "sampling": vars(self.sampling), "min_k": self.min_k}
        groups = {group_key(g): c.to_dict() for g, c in self.groups.items()}
        baseline = {
            "source": self.baseline_source if self.flag_rule.needs_baseline else None,
            "probes": len(self.baselines),
        }
        write_meta(
            self.meta_path,
            getattr(model, "name_or_path", None) or None,
            self.tokenizer,
            thresholds,
            budget=self.budget.describe(),
            probes=len(self.probes),
            every_n_steps=self.every_n_steps,
            flagged=len(self.flagged),
            groups=groups,
            baseline=baseline,
        )

    def _write_history(self, rows: list[dict], step: int, epoch: float) -> None:
        # The rule's own inputs are always kept, so every flag can be re-derived from history; step-0 rows also
        # keep the baseline fields a resumed run reads back.
        fields = [*self.metrics, *(k for k in RULE_FIELDS if k not in self.metrics)]
        if step == 0:
            fields += [k for k in BASELINE_FIELDS if k not in fields]
        with open(self.history_path, "a") as f:
            for row in rows:
                kept = {k: row[k] for k in fields if k in row}
                f.write(
                    json.dumps(
                        {
                            "step": step,
                            "epoch": epoch,
                            "id": row["id"],
                            "role": row["role"],
                            "group": row.get("group"),
                            **kept,
                        }
                    )
                    + "\n"
                )

    def _write(
        self, rows: list[dict], summary: dict, new: dict[str, str], result: FlagResult, step: int, epoch: float
    ) -> None:
        self._write_history(rows, step, epoch)
        with open(self.summaries_path, "a") as f:
            f.write(json.dumps({"step": step, "epoch": epoch, **summary}) + "\n")
        if new:
            by_id = {r["id"]: r for r in rows}
            out = []
            for pid, reason in new.items():
                metrics = {k: v for k, v in by_id[pid].items() if k not in ("id", "role", "group")}
                metrics[f"extraction_probability@{self.sampling.n}"] = metrics.pop("extraction_probability")
                threshold = result.groups[by_id[pid].get("group")].control_ma_threshold
                if threshold is not None:
                    metrics["control_ma_threshold"] = threshold
                baseline = self.baselines.get(pid)
                if baseline is not None:
                    metrics["baseline_memorization_accuracy"] = baseline["memorization_accuracy"]
                    metrics["memorization_accuracy_gain"] = (
                        metrics["memorization_accuracy"] - baseline["memorization_accuracy"]
                    )
                out.append(flagged_row(self.probes[pid], step, reason, metrics, self.tokenizer))
            append_flagged(self.flagged_path, out)
            logger.info("step %d: flagged %d new probes (%s)", step, len(new), ", ".join(list(new)[:5]))
        self._write_meta()
