"""``ErasureLog``: what one erasure run did, filled by the Eraser as it goes.

    python -c "from obliviate.erasure.log import ErasureLog; help(ErasureLog)"

The report (:func:`~obliviate.erasure.result.build_report`) is a function of this record alone, so
it can be built, tested and re-built without an Eraser, a model or a gate object. The part an
interrupted run must carry over (steps, chunks, forgotten steps, the step counter, timings) is
:meth:`ErasureLog.checkpoint` / :meth:`ErasureLog.resume`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

Rows = list[dict] | None


@dataclass
class ScoredSets:
    """:func:`~obliviate.metrics.score_probes` rows of each probe set on the model before and after erasure."""

    forget_before: list[dict] = field(default_factory=list)
    forget_after: list[dict] = field(default_factory=list)
    controls_before: Rows = None
    controls_after: Rows = None
    controls_reference: Rows = None  # the controls on ``reference_model`` (the model the fine-tuning started from)
    collateral_before: Rows = None
    collateral_after: Rows = None


@dataclass
class ErasureLog:
    """Everything an erasure run records; :func:`~obliviate.erasure.result.build_report` reads only this.

    Args:
        config: the run's :class:`~obliviate.erasure.EraseConfig` as a dict (``to_dict()``).
        steps: one record per optimizer step taken, rolled-back ones included (``rolled_back: true``).
        chunks: one record per chunk (status, kept/attempted steps, rejections, selection sizes).
        forgotten_steps: per forget id, the step from which the criterion held (None: not forgotten).
        global_step: optimizer steps taken so far (every attempt counts).
        touched: names of the parameters any selection touched.
        selections: how many weight selections were made.
        timings: seconds spent scoring, updating and selecting (``total_s`` / ``gate_s`` once finished).
        prior: ``total_s`` / ``gate_s`` spent before a resume.
        groups: probe id -> group (forget, control and collateral probes).
        scores: the scored sets before/after.
        final_forgotten: per forget id, the criterion on the erased model (controls re-scored there).
        utility: ``{"before", "after", "directions"}``: the gate's and extra utility scores, each score's
            direction (``"lower"`` / ``"higher"``; from the benchmarks, never guessed from a name).
        heldout: ``{"before", "after"}``: the gate's text scores on text no one read.
        heldout_source: ``"--heldout"``, ``"retain audit split"`` or None (no held-out scores).
        gate: :meth:`~obliviate.benchmarks.UtilityGate.summary` at the end (None: ungated).
        thresholds: the forgetting criterion's record (``to_dict()``).
        retain_split: how the retain text was split (``RetainSplit.to_dict()``), None without retain text.
        retain_contrast: the selector's lambda (0 for selectors without one).
        resumed_from: the chunk a resumed run started from (None: not resumed).
        prefix_cache: whether the frozen-prefix cache served the run and what it did (``prefix_cache.py``).
    """

    config: dict[str, Any] = field(default_factory=dict)
    steps: list[dict] = field(default_factory=list)
    chunks: list[dict] = field(default_factory=list)
    forgotten_steps: dict[str, int | None] = field(default_factory=dict)
    global_step: int = 0
    touched: set[str] = field(default_factory=set)
    selections: int = 0
    timings: dict[str, float] = field(default_factory=lambda: {"scoring_s": 0.0, "update_s": 0.0, "selection_s": 0.0})
    prior: dict[str, float] = field(default_factory=lambda: {"total_s": 0.0, "gate_s": 0.0})
    groups: dict[str, str | None] = field(default_factory=dict)
    scores: ScoredSets = field(default_factory=ScoredSets)
    final_forgotten: dict[str, bool] = field(default_factory=dict)
    utility: dict[str, dict] = field(default_factory=lambda: {"before": {}, "after": {}, "directions": {}})
    heldout: dict[str, dict] = field(default_factory=lambda: {"before": {}, "after": {}})
    heldout_source: str | None = None
    gate: dict[str, Any] | None = None
    thresholds: dict[str, Any] = field(default_factory=dict)
    retain_split: dict[str, Any] | None = None
    retain_contrast: float = 0.0
    resumed_from: int | None = None
    prefix_cache: dict[str, Any] = field(default_factory=dict)

    def add_time(self, key: str, seconds: float) -> None:
        self.timings[key] = self.timings.get(key, 0.0) + seconds

    def checkpoint(self) -> dict[str, Any]:
        """What a resumed run needs of the log (JSON-ready; see erasure/state.py)."""
        return {
            "global_step": self.global_step,
            "steps": self.steps,
            "chunks": self.chunks,
            "forgotten_steps": self.forgotten_steps,
        }

    def resume(self, payload: dict[str, Any], touched: set[str]) -> None:
        """Continue from a checkpoint's payload: its records, step counter and the time already spent."""
        self.steps, self.chunks = payload["steps"], payload["chunks"]
        self.forgotten_steps, self.global_step = payload["forgotten_steps"], payload["global_step"]
        self.touched = set(touched)
        for k, v in payload["timings"].items():
            (self.prior if k in self.prior else self.timings)[k] += v
