"""Which scored probes count as memorized *by this fine-tuning*: the flag rule of DESIGN §4.

    python -c "from obliviate.callbacks import FlagRule; print(FlagRule().describe())"

A probe is flagged when any enabled criterion holds:

1. ``exact_extraction == 1``: greedy decoding from the prefix reproduces the whole suffix;
2. ``extraction_probability >= min_extraction_probability``: an attacker drawing ``n`` samples
   (``SamplingConfig.n``, default 100) gets the suffix with at least this probability (Hayes et al. 2024);
3. calibrated, ``control_relative_ma``: the probe's memorization accuracy (MA) exceeds the
   ``control_ma_percentile``-th percentile of the MA of the never-trained controls **of its own group**
   (format) at the same step, **and** it gained at least ``min_ma_gain`` over the probe's own baseline
   (its MA at step 0, or under a reference model). The first half says "better predicted than unseen
   text of the same format"; the second says "and this fine-tuning is why" -- a template the base
   model already completes has no gain and is never flagged by 3. This is difficulty calibration
   (Watson et al. 2022, "On the Importance of Difficulty Calibration in Membership Inference Attacks";
   the per-sample reference of Carlini et al. 2021/2022) applied to MA rather than to the loss: on the
   toy, the loss (suffix log-likelihood) gain over the baseline put 148 of 160 once-trained members
   above the controls' 99th percentile -- it detects membership, not memorization -- while the MA gain
   with ``min_ma_gain=0.5`` flagged no member that never became extractable (docs/callbacks.md).

Groups: probes carry an optional ``group`` (:attr:`obliviate.data.Probe.group`); probes without one form
the group ``None`` and are calibrated by the controls without one. A group with fewer than
``min_controls`` controls (or none) is judged by the absolute criteria 1-2 only: a percentile of a
handful of controls -- or of controls of another format -- says how predictable a format is, not what
was memorized. Controls can be flagged by 1 and 2 (an extractable control is a real finding: a leak
from pre-training, or a control that is not held out), never by 3, which is defined by them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

BASELINE_FIELDS = ("memorization_accuracy", "suffix_log_prob")
"""Per-probe fields a baseline row keeps (history rows at step 0 always carry them)."""
RULE_FIELDS = ("memorization_accuracy", "exact_extraction", "extraction_probability")
"""Per-probe fields the rule reads: history always keeps them, so every flag can be re-derived from it."""
# MA is a ratio of token counts (k/n); a gain of exactly min_ma_gain must count despite float rounding.
_EPS = 1e-9


def group_key(group) -> str:
    """The JSON/log spelling of a group: its name, or ``"null"`` for probes without a group."""
    return "null" if group is None else str(group)


@dataclass
class GroupCalibration:
    """How one group's probes are judged: by its own controls (criterion 3 on) or by absolute evidence only."""

    controls: int
    probes: int
    judged_by: str  # "controls" | "absolute"
    why: str | None = None
    control_ma_threshold: float | None = None

    def to_dict(self) -> dict:
        return {
            "controls": self.controls,
            "probes": self.probes,
            "judged_by": self.judged_by,
            "why": self.why,
            "control_ma_threshold": self.control_ma_threshold,
        }


class FlagResult(NamedTuple):
    """``(flags, groups)``: ``{probe id: reason}`` and ``{group: GroupCalibration}`` of one scoring."""

    flags: dict[str, str]
    groups: dict[str | None, GroupCalibration]


@dataclass
class FlagRule:
    """When a scored probe is flagged as memorized (any enabled criterion suffices)."""

    exact_extraction: bool = field(
        default=True, metadata={"help": "Flag probes whose suffix greedy decoding reproduces exactly."}
    )
    min_extraction_probability: float | None = field(
        default=0.5,
        metadata={
            "help": "Flag probes with extraction_probability (n samples) at least this; null turns the criterion off."
        },
    )
    control_ma_percentile: float | None = field(
        default=99.0,
        metadata={
            "help": "Calibrated criterion: flag non-control probes whose memorization accuracy "
            "exceeds this percentile of the MA of the controls of their own group at "
            "the same step (and that gained min_ma_gain); null turns it off."
        },
    )
    min_controls: int = field(
        default=10,
        metadata={
            "help": "Fewest controls a group needs for the calibrated criterion; a group with "
            "fewer (or none) is judged by absolute evidence only, with a warning."
        },
    )
    min_ma_gain: float | None = field(
        default=0.5,
        metadata={
            "help": "The calibrated criterion also needs MA - baseline MA >= this, the baseline "
            "being the probe's MA at step 0 (or under the reference model): memorization "
            "gained during this fine-tuning. 0.5 flagged no never-extractable toy member "
            "(docs/callbacks.md). null drops the baseline: the criterion then flags "
            "text that is merely predictable, as before groups and baselines existed."
        },
    )

    def __post_init__(self):
        if self.min_extraction_probability is not None and not 0 < self.min_extraction_probability <= 1:
            raise ValueError(
                f"min_extraction_probability must be in (0, 1] or null, got {self.min_extraction_probability}"
            )
        if self.control_ma_percentile is not None and not 0 <= self.control_ma_percentile <= 100:
            raise ValueError(f"control_ma_percentile must be in [0, 100] or null, got {self.control_ma_percentile}")
        if isinstance(self.min_controls, bool) or not isinstance(self.min_controls, int) or self.min_controls < 1:
            raise ValueError(f"min_controls must be an integer >= 1, got {self.min_controls!r}")
        if self.min_ma_gain is not None and not 0 <= self.min_ma_gain <= 1:
            raise ValueError(
                f"min_ma_gain must be in [0, 1] (a gain of memorization accuracy) or null, got {self.min_ma_gain}"
            )
        if not (
            self.exact_extraction
            or self.min_extraction_probability is not None
            or self.control_ma_percentile is not None
        ):
            raise ValueError(
                "the flag rule has every criterion turned off, so it can never flag anything; "
                "enable at least one of exact_extraction, min_extraction_probability, "
                "control_ma_percentile."
            )

    @property
    def needs_baseline(self) -> bool:
        """Does the calibrated criterion compare each probe with its own baseline?"""
        return self.control_ma_percentile is not None and self.min_ma_gain is not None

    # -- groups -----------------------------------------------------------------------------------
    def plan(
        self, members: Iterable[tuple[str | None, str]], has_baselines: bool = True
    ) -> dict[str | None, GroupCalibration]:
        """How each group is judged, from ``(group, role)`` pairs (probes or rows); no thresholds yet.

        Args:
            members: one ``(group, role)`` per probe.
            has_baselines: False when no baseline exists (then a rule that needs one is absolute only).
        """
        controls: dict[str | None, int] = {}
        probes: dict[str | None, int] = {}
        for group, role in members:
            counts = controls if role == "control" else probes
            counts[group] = counts.get(group, 0) + 1
            controls.setdefault(group, 0)
            probes.setdefault(group, 0)
        out = {}
        for group in controls:
            n = controls[group]
            if self.control_ma_percentile is None:
                why = "the control-relative criterion is off (control_ma_percentile: null)"
            elif n < self.min_controls:
                why = f"{n} controls, fewer than min_controls={self.min_controls}"
            elif self.needs_baseline and not has_baselines:
                why = "no baseline scores (step 0 or reference model) to measure the gain of this fine-tuning"
            else:
                why = None
            out[group] = GroupCalibration(n, probes[group], "absolute" if why else "controls", why)
        return out

    def thresholds(self, rows: list[dict], has_baselines: bool = True) -> dict[str | None, GroupCalibration]:
        """:meth:`plan` of ``rows`` with each controls-judged group's MA threshold at this step."""
        groups = self.plan(((r.get("group"), r["role"]) for r in rows), has_baselines)
        for group, calibration in groups.items():
            if calibration.judged_by == "controls":
                ma = [r["memorization_accuracy"] for r in rows if r["role"] == "control" and r.get("group") == group]
                calibration.control_ma_threshold = float(np.percentile(ma, self.control_ma_percentile))
        return groups

    # -- one probe --------------------------------------------------------------------------------
    def gained(self, row: dict, baseline: Mapping | None) -> bool:
        """Did ``row`` gain ``min_ma_gain`` of MA over its ``baseline`` (always True without a gain setting)?"""
        if self.min_ma_gain is None:
            return True
        if baseline is None:
            return False
        return row["memorization_accuracy"] - baseline["memorization_accuracy"] >= self.min_ma_gain - _EPS

    def reason(self, row: dict, control_threshold: float | None, baseline: Mapping | None = None) -> str | None:
        """The first criterion (exact_extraction, extraction_probability, control_relative_ma, in that order) ``row`` meets, or None.

        Args:
            row: one scored probe.
            control_threshold: its group's control MA threshold, or None when the group is judged by
                absolute evidence only (then only criteria 1 and 2 apply).
            baseline: the probe's baseline row (``memorization_accuracy``), or None when it has none.
        """
        if self.exact_extraction and row["exact_extraction"] == 1:
            return "exact_extraction"
        if (
            self.min_extraction_probability is not None
            and row["extraction_probability"] >= self.min_extraction_probability
        ):
            return "extraction_probability"
        if (
            control_threshold is not None
            and row["role"] != "control"
            and row["memorization_accuracy"] > control_threshold
            and self.gained(row, baseline)
        ):
            return "control_relative_ma"
        return None

    # -- a scoring --------------------------------------------------------------------------------
    def apply(self, rows: list[dict], baselines: Mapping[str, Mapping] | None = None) -> FlagResult:
        """Flag scored rows.

        Args:
            rows: :func:`~obliviate.metrics.score_probes` rows of one step (all probes, controls included),
                each with an optional ``group`` (absent: ``None``).
            baselines: ``{probe id: baseline row}`` (the step-0 or reference-model scores). None or empty:
                no probe has a baseline, so a rule with ``min_ma_gain`` judges by absolute evidence only.

        Returns:
            :class:`FlagResult` ``(flags, groups)``.
        """
        baselines = baselines or {}
        groups = self.thresholds(rows, has_baselines=bool(baselines))
        flags = {}
        for row in rows:
            threshold = groups[row.get("group")].control_ma_threshold
            reason = self.reason(row, threshold, baselines.get(row["id"]))
            if reason is not None:
                flags[row["id"]] = reason
        return FlagResult(flags, groups)

    def describe(self) -> dict:
        """The rule's settings and its calibrated criterion in words, for ``flagged.meta.json``."""
        if self.control_ma_percentile is None:
            criterion = None
        else:
            criterion = (
                f"memorization_accuracy > percentile {self.control_ma_percentile:g} of the MA of the controls "
                f"of the probe's own group at the same step (groups with >= {self.min_controls} controls)"
            )
            if self.min_ma_gain is not None:
                criterion += f", and memorization_accuracy - baseline >= {self.min_ma_gain:g}"
        return {
            "exact_extraction": self.exact_extraction,
            "min_extraction_probability": self.min_extraction_probability,
            "control_ma_percentile": self.control_ma_percentile,
            "min_controls": self.min_controls,
            "min_ma_gain": self.min_ma_gain,
            "control_relative_criterion": criterion,
        }
