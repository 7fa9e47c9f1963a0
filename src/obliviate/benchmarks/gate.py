"""``UtilityGate``: accept an erasure step only while utility stays within tolerance; else roll back exactly.

    python -c "from obliviate.benchmarks import UtilityGate; help(UtilityGate)"

The erasure loop (DESIGN §5-6) uses it as::

    gate.measure_baseline(model)                      # before any erasure
    gate.snapshot(trainable_params, optimizer)        # exact copy of what the next steps can change
    ... gate.every optimizer steps ...
    decision = gate.check(model, step, chunk)
    if not decision.accepted:
        gate.restore()                                # bitwise: weights, optimizer state, param_groups
        for group in optimizer.param_groups: group["lr"] *= gate.backoff   # after restore, which resets lr
        ... retry, at most gate.max_retries times ...

A tolerance is relative to the baseline: ``max_relative_increase`` / ``max_absolute_increase`` for
lower-is-better scores (perplexity), ``max_absolute_drop`` / ``max_relative_drop`` for
higher-is-better ones (accuracy in [0, 1], so one point is 0.01). A gated benchmark with no
tolerance gets perplexity-style +2% relative or accuracy-style -0.01 absolute on its primary score.

Bounds can be two-sided: a model that moves far from where it was is not "still working" because
one score improved (an erasure that lowers the gate's perplexity by 60% has changed the model as
surely as one that raises it). ``max_relative_decrease`` / ``max_absolute_decrease`` bound how far
a lower-is-better score may *fall*, ``max_relative_rise`` / ``max_absolute_rise`` how far a
higher-is-better one may rise. An entry may give one bound per side.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from obliviate.benchmarks.base import BenchmarkError, UtilityBenchmark
from obliviate.benchmarks.registry import get_benchmark
from obliviate.benchmarks.suite import UtilitySuite, check_entries
from obliviate.config import check_keys, from_dict

logger = logging.getLogger(__name__)

TOLERANCE_KEYS = {"max_relative_increase": "lower", "max_absolute_increase": "lower",
                  "max_absolute_drop": "higher", "max_relative_drop": "higher",
                  "max_relative_decrease": "lower", "max_absolute_decrease": "lower",
                  "max_relative_rise": "higher", "max_absolute_rise": "higher"}
"""Tolerance kind -> the direction of the score it applies to."""
UPPER_BOUNDS = {"max_relative_increase", "max_absolute_increase", "max_relative_rise", "max_absolute_rise"}
"""Kinds that bound a score from above (the rest bound it from below)."""
WORSENING = {"max_relative_increase", "max_absolute_increase", "max_absolute_drop", "max_relative_drop"}
"""Kinds that bound the bad direction (the others bound the improving direction: drift)."""
DEFAULT_TOLERANCE = {"lower": ("max_relative_increase", 0.02), "higher": ("max_absolute_drop", 0.01)}
DEFAULT_ENTRY = "default"
"""In a gate section's ``benchmarks:``, the default gate's entries (see :func:`default_gate_entries`)."""


class GateError(BenchmarkError):
    """A gate used out of order (check before baseline, restore before snapshot) or misconfigured."""


@dataclass
class Tolerance:
    """How far one score of one benchmark may move from its baseline."""

    benchmark: str
    kind: str | None = None
    value: float | None = None
    score: str | None = None

    def __post_init__(self):
        if self.kind is not None and self.kind not in TOLERANCE_KEYS:
            raise GateError(f"unknown tolerance {self.kind!r}; use one of {', '.join(TOLERANCE_KEYS)}.")
        if (self.kind is None) != (self.value is None):
            raise GateError(f"tolerance of {self.benchmark!r} needs both a kind and a value, e.g. "
                            "Tolerance('retain', 'max_relative_increase', 0.02).")
        if self.value is not None and not (isinstance(self.value, (int, float)) and self.value >= 0):
            raise GateError(f"tolerance {self.kind} of {self.benchmark!r} must be a number >= 0, got {self.value!r}.")

    def limit(self, baseline: float) -> float:
        """The worst value still accepted."""
        relative = self.kind.startswith("max_relative")
        slack = abs(baseline) * self.value if relative else self.value
        return baseline + (slack if self.kind in UPPER_BOUNDS else -slack)

    def violation(self, baseline: float, value: float) -> str | None:
        """None when ``value`` is within tolerance of ``baseline``, else a message saying by how much not."""
        name = f"{self.benchmark}/{self.score}"
        limit = self.limit(baseline)
        if math.isnan(value):
            return f"{name} is NaN (baseline {baseline:.6g})"
        # A hair of slack so that an unchanged score is never rejected by rounding.
        eps = 1e-9 * max(1.0, abs(baseline))
        if self.kind in UPPER_BOUNDS and value > limit + eps:
            return f"{name} {value:.6g} > {limit:.6g} (baseline {baseline:.6g}, {self.kind} {self.value})"
        if self.kind not in UPPER_BOUNDS and value < limit - eps:
            return f"{name} {value:.6g} < {limit:.6g} (baseline {baseline:.6g}, {self.kind} {self.value})"
        return None


@dataclass
class GateDecision:
    """The outcome of one :meth:`UtilityGate.check`."""

    accepted: bool
    step: int
    chunk: int | None
    scores: dict[str, dict[str, float]]
    violations: list[str]
    wall_s: float

    @property
    def decision(self) -> str:
        return "accepted" if self.accepted else "rejected"

    def to_dict(self) -> dict[str, Any]:
        return {"decision": self.decision, "step": self.step, "chunk": self.chunk, "scores": self.scores,
                "violations": list(self.violations), "wall_s": self.wall_s}


@dataclass
class GateConfig:
    """The recipe's ``gate:`` section (``gate: null`` means no gate)."""

    every: int = field(default=1, metadata={"help": "optimizer steps between checks (one snapshot covers them)."})
    backoff: float = field(default=0.5, metadata={"help": "learning-rate factor after a rejected step, in (0, 1)."})
    max_retries: int = field(default=3, metadata={"help": "retries of a rejected step before giving up on the chunk."})
    benchmarks: list = field(default_factory=list, metadata={
        "help": "entries {name, data, score?, max_relative_increase | max_absolute_increase | max_absolute_drop | "
                "max_relative_drop, ...benchmark options}."})

    def __post_init__(self):
        check_schedule(self.every, self.backoff, self.max_retries)
        # "default" stands for the default gate's entries on the gate-only retain split (erasure/inputs.py).
        entries = [e for e in self.benchmarks if e != DEFAULT_ENTRY] if isinstance(self.benchmarks, list) \
            else self.benchmarks
        if isinstance(self.benchmarks, list) and DEFAULT_ENTRY in self.benchmarks and not entries:
            return
        checked = check_entries(entries, "the gate section (use `gate: null` for no gate)")
        if isinstance(self.benchmarks, list) and DEFAULT_ENTRY in self.benchmarks:
            checked = [DEFAULT_ENTRY, *checked]
        self.benchmarks = checked


def check_schedule(every: int, backoff: float, max_retries: int) -> None:
    if not isinstance(every, int) or every < 1:
        raise GateError(f"gate.every must be an integer >= 1, got {every!r}")
    if not 0 < backoff < 1:
        raise GateError(f"gate.backoff must be in (0, 1), got {backoff!r}")
    if not isinstance(max_retries, int) or max_retries < 0:
        raise GateError(f"gate.max_retries must be an integer >= 0, got {max_retries!r}")


def _clone_tree(value):
    """Deep copy of an optimizer state dict in which every tensor is cloned (detached, same device/dtype)."""
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, dict):
        return {k: _clone_tree(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_clone_tree(v) for v in value)
    return value


@dataclass
class _Snapshot:
    params: list[tuple[torch.nn.Parameter, torch.Tensor]]
    optimizer: torch.optim.Optimizer | None
    optimizer_state: dict | None
    lrs: list[Any]


class UtilityGate:
    """Baseline utility, checks after erasure steps, and exact rollback of rejected steps.

    Args:
        suite: the benchmarks measured (non-gated ones, like ``memorization``, only in the baseline).
        tolerances: one :class:`Tolerance` (or dict of its fields) per gated score; gated benchmarks
            without one get the default for their primary score's direction.
        every: optimizer steps between checks.
        backoff: learning-rate factor applied by the caller after a rejection.
        max_retries: retries of a rejected step before the caller gives up on the chunk.
    """

    def __init__(self, suite: UtilitySuite, tolerances: Iterable[Tolerance | dict] = (), every: int = 1,
                 backoff: float = 0.5, max_retries: int = 3):
        check_schedule(every, backoff, max_retries)
        self.suite, self.every, self.backoff, self.max_retries = suite, every, backoff, max_retries
        self.tolerances = [t if isinstance(t, Tolerance) else Tolerance(**t) for t in tolerances]
        for t in self.tolerances:
            bench = suite[t.benchmark] if t.benchmark in suite.labels else None
            if bench is None:
                raise GateError(f"tolerance for {t.benchmark!r}, which is not in the suite ({', '.join(suite.labels)}).")
            if not bench.gated:
                raise GateError(f"{t.benchmark!r} ({bench.name}) is reported, not gated: remove its tolerance.")
        named = {t.benchmark for t in self.tolerances}
        self.tolerances += [Tolerance(b.label) for b in suite if b.gated and b.label not in named]
        if not self.tolerances:
            raise GateError("the gate has no gated benchmark (memorization is reported only); add e.g. perplexity.")
        for t in self.tolerances:
            self._resolve(t, suite[t.benchmark], strict=False)
        self.baseline: dict[str, dict[str, float]] | None = None
        self.decisions: list[dict[str, Any]] = []
        self.total_seconds = 0.0
        self.rollback_seconds = 0.0
        self._snapshot: _Snapshot | None = None

    @classmethod
    def from_config(cls, section: dict | GateConfig | None, tokenizer) -> UtilityGate | None:
        """The gate of a recipe's ``gate:`` section, benchmarks tokenized with ``tokenizer``; None for ``gate: null``."""
        if section is None:
            return None
        config = section if isinstance(section, GateConfig) else from_dict(GateConfig, section, "the gate section")
        benchmarks, tolerances = [], []
        if DEFAULT_ENTRY in config.benchmarks:
            raise GateError("gate benchmarks: 'default' stands for the default gate on the gate-only split of the "
                            "retain text; only the eraser can expand it. Give the entries themselves here "
                            "(benchmarks.default_gate_entries(data)).")
        for i, entry in enumerate(config.benchmarks):
            where = f"gate.benchmarks[{i}]"
            klass = get_benchmark(entry["name"])
            fields = {f for f in klass.config_class.__dataclass_fields__}
            check_keys(entry, fields | set(TOLERANCE_KEYS) | {"name", "score"}, f"{where} ({entry['name']})")
            kinds = [k for k in TOLERANCE_KEYS if k in entry]
            if sum(k in WORSENING for k in kinds) > 1 or sum(k not in WORSENING for k in kinds) > 1:
                raise GateError(f"{where}: give at most one tolerance per side (one worsening bound, one drift bound) "
                                f"per entry, got {', '.join(kinds)} (add a second entry with its own `label:` to gate "
                                "another score).")
            if (kinds or "score" in entry) and not klass.gated:
                raise GateError(f"{where}: {entry['name']} is reported, not gated: remove its tolerance.")
            options = {k: v for k, v in entry.items() if k not in TOLERANCE_KEYS and k != "score"}
            bench = UtilityBenchmark.from_entry(options, tokenizer, where=f"({where})")
            benchmarks.append(bench)
            for kind in kinds or ([None] if "score" in entry else []):
                tolerances.append(Tolerance(bench.label, kind, entry[kind] if kind else None, entry.get("score")))
        return cls(UtilitySuite(benchmarks), tolerances, config.every, config.backoff, config.max_retries)

    def _resolve(self, t: Tolerance, bench: UtilityBenchmark, strict: bool) -> None:
        """Fill in the default score and kind; check the kind fits the score's direction (once known)."""
        t.score = t.score or bench.primary_score
        direction = bench.direction(t.score) if t.score else None
        if t.score is None or direction is None:
            if strict:
                raise GateError(f"cannot tell which score of {t.benchmark!r} to gate or its direction; name it with "
                                f"`score:` (its scores: {', '.join((self.baseline or {}).get(t.benchmark, {}))}).")
            return
        if t.kind is None:
            t.kind, t.value = DEFAULT_TOLERANCE[direction]
        if TOLERANCE_KEYS[t.kind] != direction:
            fits = [k for k, d in TOLERANCE_KEYS.items() if d == direction]
            raise GateError(f"{t.benchmark}/{t.score} is {direction}-is-better, so {t.kind} does not apply; use "
                            f"{' or '.join(fits)}.")

    @property
    def gated_labels(self) -> list[str]:
        return list(dict.fromkeys(t.benchmark for t in self.tolerances))

    def measure_baseline(self, model) -> dict[str, dict[str, float]]:
        """Run the whole suite on the model before erasure; stored as ``gate.baseline`` and returned."""
        start = time.perf_counter()
        baseline = self.suite.run(model)
        self.total_seconds += time.perf_counter() - start
        self.baseline = baseline
        for t in self.tolerances:
            self._resolve(t, self.suite[t.benchmark], strict=True)
            if t.score not in baseline[t.benchmark]:
                raise GateError(f"benchmark {t.benchmark!r} has no score {t.score!r}; its scores: "
                                f"{', '.join(baseline[t.benchmark])}.")
        logger.info("gate baseline: %s", _format_scores(baseline))
        return baseline

    def check(self, model, step: int, chunk: int | None = None) -> GateDecision:
        """Re-run the gated benchmarks and accept the step when every gated score is within tolerance.

        Args:
            model: the model after the step(s) since the last snapshot.
            step: the erasure step (for the log and the report).
            chunk: the forget-set chunk being erased, if any.

        Returns:
            The :class:`GateDecision`, also appended (as a dict) to ``gate.decisions`` and logged at INFO.
        """
        if self.baseline is None:
            raise GateError("gate.check() before gate.measure_baseline(model): measure the model before erasing.")
        start = time.perf_counter()
        scores = self.suite.run(model, labels=self.gated_labels)
        wall = time.perf_counter() - start
        self.total_seconds += wall
        violations = [v for t in self.tolerances
                      if (v := t.violation(self.baseline[t.benchmark][t.score], scores[t.benchmark][t.score]))]
        decision = GateDecision(not violations, step, chunk, scores, violations, wall)
        self.decisions.append(decision.to_dict())
        logger.info("gate step %s%s: %s (%.2fs) %s%s", step, "" if chunk is None else f" chunk {chunk}",
                    decision.decision, wall, _format_scores(scores),
                    f" violations: {'; '.join(violations)}" if violations else "")
        return decision

    def snapshot(self, params: Iterable[torch.nn.Parameter], optimizer: torch.optim.Optimizer | None = None) -> None:
        """Copy exactly ``params`` (their data) and ``optimizer``'s whole state dict, tensors cloned.

        Args:
            params: the parameters the next steps may change (e.g. the selected ones); copied once each.
            optimizer: the optimizer whose state (moments, step counts, param_groups incl. lr) to keep.
        """
        start = time.perf_counter()
        seen, saved = set(), []
        with torch.no_grad():
            for p in params:
                if id(p) not in seen:
                    seen.add(id(p))
                    saved.append((p, p.detach().clone()))
        state = _clone_tree(optimizer.state_dict()) if optimizer is not None else None
        lrs = [_clone_tree(g["lr"]) for g in optimizer.param_groups] if optimizer is not None else []
        self._snapshot = _Snapshot(saved, optimizer, state, lrs)
        self.rollback_seconds += time.perf_counter() - start

    def restore(self) -> None:
        """Put back the last snapshot bitwise: parameter data, optimizer state and param_groups (lr included).

        The snapshot is kept, so a retry that fails again can be restored again. Apply the learning-rate
        backoff after this call (restoring resets ``lr`` to the snapshot's).
        """
        if self._snapshot is None:
            raise GateError("gate.restore() before gate.snapshot(params, optimizer): nothing to restore.")
        start = time.perf_counter()
        snap = self._snapshot
        with torch.no_grad():
            for p, saved in snap.params:
                p.data.copy_(saved)
        if snap.optimizer is not None:
            # load_state_dict keeps the tensors it is given (same dtype/device), so give it fresh clones:
            # the next step updates them in place and the snapshot must survive for another retry.
            snap.optimizer.load_state_dict(_clone_tree(snap.optimizer_state))
            for group, lr in zip(snap.optimizer.param_groups, snap.lrs):
                group["lr"] = _clone_tree(lr)
        self.rollback_seconds += time.perf_counter() - start

    def clear_snapshot(self) -> None:
        """Free the snapshot's memory (after the last accepted step)."""
        self._snapshot = None

    @property
    def snapshot_params(self) -> int:
        """Number of elements held by the current snapshot's parameter copies."""
        return sum(t.numel() for _, t in self._snapshot.params) if self._snapshot else 0

    def summary(self) -> dict[str, Any]:
        """JSON-ready record for reports: tolerances, baseline, decisions and time spent."""
        return {"every": self.every, "backoff": self.backoff, "max_retries": self.max_retries,
                "tolerances": [asdict(t) for t in self.tolerances], "baseline": self.baseline,
                "decisions": self.decisions, "total_seconds": self.total_seconds,
                "rollback_seconds": self.rollback_seconds,
                "accepted": sum(d["decision"] == "accepted" for d in self.decisions),
                "rejected": sum(d["decision"] == "rejected" for d in self.decisions)}


DEFAULT_PERPLEXITY_INCREASE = 0.02
DEFAULT_PERPLEXITY_DECREASE = 0.10
DEFAULT_KL_TOLERANCE = 0.05
"""The default gate's bounds (chosen by measurement: docs/erasure.md, docs/perf/erasure.md)."""


def default_gate_entries(data, label: str = "gate") -> list[dict]:
    """The default gate's benchmark entries on ``data`` (text no loss optimizes):

    - ``perplexity`` (label ``<label>_ppl``), two-sided: at most +2%, at most -10%;
    - ``kl_to_original`` (label ``<label>_kl``): mean per-token KL(original || current) at most 0.05 nats/token.

    Args:
        data: ``{"text"}`` JSONL path or a list of ``{"text"}`` rows.
        label: prefix of the entries' labels.
    """
    return [{"name": "perplexity", "data": data, "label": f"{label}_ppl",
             "max_relative_increase": DEFAULT_PERPLEXITY_INCREASE, "max_relative_decrease": DEFAULT_PERPLEXITY_DECREASE},
            {"name": "kl_to_original", "data": data, "label": f"{label}_kl",
             "max_absolute_increase": DEFAULT_KL_TOLERANCE}]


def default_retain_gate(retain_path: str, tokenizer, max_relative_increase: float = DEFAULT_PERPLEXITY_INCREASE,
                        **kwargs) -> UtilityGate:
    """The default gate (:func:`default_gate_entries`) on ``retain_path``, read as gate-only text.

    The eraser gives it only the gate's split of the retain text (erasure/inputs.py), never rows a loss trains on.

    Args:
        retain_path: ``{"text"}`` JSONL (or list of rows) the gate reads.
        tokenizer: the model's tokenizer.
        max_relative_increase: allowed relative rise of its perplexity (0.02 = +2%).
        kwargs: ``every``, ``backoff``, ``max_retries``.
    """
    entries = default_gate_entries(retain_path if isinstance(retain_path, list) else str(retain_path))
    entries[0]["max_relative_increase"] = max_relative_increase
    return UtilityGate.from_config({**kwargs, "benchmarks": entries}, tokenizer)


def _format_scores(results: dict[str, dict[str, float]]) -> str:
    return ", ".join(f"{label}/{name}={value:.6g}" for label, scores in results.items() for name, value in scores.items())
