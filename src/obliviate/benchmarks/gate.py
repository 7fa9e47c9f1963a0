"""``UtilityGate``: accept a block of erasure steps only while utility stays within tolerance; else roll back.

    python -c "from obliviate.benchmarks import UtilityGate; help(UtilityGate.run_block)"

The erasure loop (DESIGN §5-6) hands the gate whole blocks::

    gate.measure_baseline(model)                       # before any erasure; tolerances resolved here
    block = gate.run_block(model, n, step, judge, lr, params, optimizer, after_restore=...)
    # snapshot -> n steps (judge every judge_every) -> check -> accept, or restore bitwise (weights,
    # optimizer state, param_groups) -> after_restore() -> lr *= backoff -> retry, at most max_retries times
    block.accepted, block.kept, block.lr, block.exhausted

``snapshot`` / ``check`` / ``restore`` stay public for callers with their own loop. Tolerances
(benchmarks/tolerances.py) are resolved into the gate's own copies: the caller's objects never change.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch

from obliviate.benchmarks.block import BlockAttempt, GateBlock, run_steps, set_lr, ungated_block  # noqa: F401
from obliviate.benchmarks.gate_config import DEFAULT_ENTRY, GateConfig, GateDecision
from obliviate.benchmarks.gate_reference import ReferenceBand
from obliviate.benchmarks.registry import get_benchmark
from obliviate.benchmarks.suite import UtilitySuite
from obliviate.benchmarks.tolerances import (  # noqa: F401 - re-exported: the gate's public names
    DEFAULT_KL_TOLERANCE,
    DEFAULT_PERPLEXITY_DECREASE,
    DEFAULT_PERPLEXITY_INCREASE,
    DEFAULT_TOLERANCE,
    TOLERANCE_KEYS,
    UPPER_BOUNDS,
    WORSENING,
    GateError,
    Tolerance,
    check_schedule,
    default_gate_entries,
)
from obliviate.config import check_keys, from_dict

logger = logging.getLogger(__name__)


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
            without one get the default for their primary score's direction. The gate keeps resolved
            copies (``gate.tolerances``); the objects passed are never changed.
        every: optimizer steps between checks.
        backoff: learning-rate factor applied after a rejection.
        max_retries: retries of a rejected block before the gate gives up on it.
        reference: also accept a model between the original and a reference model (call
            :meth:`measure_reference` before :meth:`measure_baseline`; benchmarks/gate_reference.py).
    """

    def __init__(
        self,
        suite: UtilitySuite,
        tolerances: Iterable[Tolerance | dict] = (),
        every: int = 1,
        backoff: float = 0.5,
        max_retries: int = 3,
        reference: bool = False,
    ):
        check_schedule(every, backoff, max_retries)
        self.suite, self.every, self.backoff, self.max_retries = suite, every, backoff, max_retries
        given = [t if isinstance(t, Tolerance) else Tolerance(**t) for t in tolerances]
        for t in given:
            bench = suite[t.benchmark] if t.benchmark in suite.labels else None
            if bench is None:
                raise GateError(
                    f"tolerance for {t.benchmark!r}, which is not in the suite ({', '.join(suite.labels)})."
                )
            if not bench.gated:
                raise GateError(f"{t.benchmark!r} ({bench.name}) is reported, not gated: remove its tolerance.")
        named = {t.benchmark for t in given}
        given += [Tolerance(b.label) for b in suite if b.gated and b.label not in named]
        if not given:
            raise GateError("the gate has no gated benchmark (memorization is reported only); add e.g. perplexity.")
        # Resolved as far as the benchmarks allow now; the rest (scores named only by a run) at the baseline.
        self.tolerances = [t.resolved(suite[t.benchmark], strict=False) for t in given]
        self.baseline: dict[str, dict[str, float]] | None = None
        self.decisions: list[dict[str, Any]] = []
        self.total_seconds = 0.0
        self.rollback_seconds = 0.0
        self._snapshot: _Snapshot | None = None
        self.band = ReferenceBand(suite, lambda: self.tolerances) if reference else None

    @classmethod
    def from_config(cls, section: dict | GateConfig | None, tokenizer) -> UtilityGate | None:
        """The gate of a recipe's ``gate:`` section, benchmarks tokenized with ``tokenizer``; None for ``gate: null``."""
        from obliviate.benchmarks.base import UtilityBenchmark

        if section is None:
            return None
        config = section if isinstance(section, GateConfig) else from_dict(GateConfig, section, "the gate section")
        benchmarks, tolerances = [], []
        if DEFAULT_ENTRY in config.benchmarks:
            raise GateError(
                "gate benchmarks: 'default' stands for the default gate on the gate-only split of the "
                "retain text; only the eraser can expand it. Give the entries themselves here "
                "(benchmarks.default_gate_entries(data))."
            )
        for i, entry in enumerate(config.benchmarks):
            where = f"gate.benchmarks[{i}]"
            klass = get_benchmark(entry["name"])
            fields = {f for f in klass.config_class.__dataclass_fields__}
            check_keys(entry, fields | set(TOLERANCE_KEYS) | {"name", "score"}, f"{where} ({entry['name']})")
            kinds = [k for k in TOLERANCE_KEYS if k in entry]
            if sum(k in WORSENING for k in kinds) > 1 or sum(k not in WORSENING for k in kinds) > 1:
                raise GateError(
                    f"{where}: give at most one tolerance per side (one worsening bound, one drift bound) "
                    f"per entry, got {', '.join(kinds)} (add a second entry with its own `label:` to gate "
                    "another score)."
                )
            if (kinds or "score" in entry) and not klass.gated:
                raise GateError(f"{where}: {entry['name']} is reported, not gated: remove its tolerance.")
            options = {k: v for k, v in entry.items() if k not in TOLERANCE_KEYS and k != "score"}
            bench = UtilityBenchmark.from_entry(options, tokenizer, where=f"({where})")
            benchmarks.append(bench)
            for kind in kinds or ([None] if "score" in entry else []):
                tolerances.append(Tolerance(bench.label, kind, entry[kind] if kind else None, entry.get("score")))
        suite = UtilitySuite(benchmarks)
        return cls(suite, tolerances, config.every, config.backoff, config.max_retries, config.reference)

    @property
    def gated_labels(self) -> list[str]:
        return list(dict.fromkeys(t.benchmark for t in self.tolerances))

    def measure_reference(self, reference) -> None:
        """Score the gated benchmarks on the reference model (``gate.reference``), before :meth:`measure_baseline`."""
        if self.band is None:
            raise GateError("measure_reference() on a gate without `reference: true`.")
        start = time.perf_counter()
        self.band.measure_reference(reference)
        self.total_seconds += time.perf_counter() - start

    def measure_baseline(self, model) -> dict[str, dict[str, float]]:
        """Run the whole suite on the model before erasure; stored as ``gate.baseline`` and returned.

        Every tolerance is resolved for good here (a score named only by the run, its direction).
        """
        start = time.perf_counter()
        baseline = self.suite.run(model)
        self.baseline = baseline
        self.tolerances = [
            t.resolved(self.suite[t.benchmark], strict=True, scores=baseline.get(t.benchmark, {}))
            for t in self.tolerances
        ]
        for t in self.tolerances:
            if t.score not in baseline[t.benchmark]:
                raise GateError(
                    f"benchmark {t.benchmark!r} has no score {t.score!r}; its scores: "
                    f"{', '.join(baseline[t.benchmark])}."
                )
        if self.band is not None:
            self.band.measure_original(model)
        self.total_seconds += time.perf_counter() - start
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
        violations = [
            v
            for t in self.tolerances
            if (v := t.violation(self.baseline[t.benchmark][t.score], scores[t.benchmark][t.score]))
        ]
        anchor, outside_original = "original", []
        if violations and self.band is not None:
            # Outside the original's bounds: still accepted when between the original and the reference.
            between, extra = self.band.violations(model, scores, self.baseline)
            scores = {**scores, **extra}
            anchor, outside_original = ("reference band", violations) if not between else (None, [])
            violations = [] if not between else violations + between
        wall = time.perf_counter() - start
        self.total_seconds += wall
        decision = GateDecision(not violations, step, chunk, scores, violations, wall, anchor, outside_original)
        self.decisions.append(decision.to_dict())
        logger.info(
            "gate step %s%s: %s%s (%.2fs) %s%s",
            step,
            "" if chunk is None else f" chunk {chunk}",
            decision.decision,
            " (between the original and the reference)" if anchor == "reference band" else "",
            wall,
            _format_scores(scores),
            f" violations: {'; '.join(violations)}" if violations else "",
        )
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

    def run_block(
        self,
        model,
        n_steps: int,
        step: Callable[[float], Any],
        judge: Callable[[Any], bool],
        lr: float,
        params: Iterable[torch.nn.Parameter],
        optimizer: torch.optim.Optimizer | None = None,
        *,
        judge_every: int = 1,
        after_restore: Callable[[], None] | None = None,
        position: Callable[[], int] | None = None,
        chunk: int | None = None,
        lr_ceiling: float | None = None,
        lr_recovery: float = 1.0,
    ) -> GateBlock:
        """Run one gated block: snapshot, steps, check; on rejection restore bitwise, back off the lr and retry.

        Args:
            model: the model the steps change and the check scores.
            n_steps: optimizer steps in the block (usually ``gate.every``).
            step: ``step(lr) -> record``: one optimizer step at learning rate ``lr``; its record is returned.
            judge: ``judge(record) -> done``: called after every ``judge_every``-th step and the last; True
                (e.g. the whole forget set is forgotten) ends the attempt early.
            lr: the learning rate to start with (``optimizer``'s param_groups hold it).
            params: what the steps may change (copied once by the snapshot).
            optimizer: its whole state is snapshot and restored; the gate sets its lr after a backoff.
            judge_every: steps between judgements.
            after_restore: called after each bitwise restore, before the retry: the caller puts back what it
                derives from the restored tensors (a scatter of selected copies into the weights, its flags).
            position: the step number a decision records (default: the steps of this attempt).
            chunk: recorded with each decision.
            lr_ceiling: with ``lr_recovery``, an lr backed off below it recovers by that factor (capped at the
                ceiling) when a block is accepted on its first attempt.
            lr_recovery: the recovery factor (1.0: a backed-off lr stays where it is).

        Returns:
            GateBlock: every attempt (records, decision, lr), the lr to continue with, and ``exhausted`` when
            all ``1 + max_retries`` attempts were rejected (weights and optimizer, its lr included, are then
            as they were before the block; ``lr`` is the last one tried).
        """
        # Longer than most functions only by its signature and Args: the loop itself is the dozen lines below.
        self.snapshot(params, optimizer)
        attempts: list[BlockAttempt] = []
        try:
            for attempt in range(1 + self.max_retries):
                records = run_steps(n_steps, step, judge, lr, judge_every)
                decision = self.check(model, position() if position is not None else len(records), chunk)
                attempts.append(BlockAttempt(records, decision, lr))
                if decision.accepted:
                    lr = self._recovered_lr(optimizer, lr, lr_ceiling, lr_recovery) if attempt == 0 else lr
                    return GateBlock(attempts, lr, exhausted=False)
                lr = self._reject(optimizer, lr, attempt, after_restore)
            return GateBlock(attempts, lr, exhausted=True)
        finally:
            self.clear_snapshot()

    def _recovered_lr(self, optimizer, lr: float, lr_ceiling: float | None, lr_recovery: float) -> float:
        """After a first-attempt acceptance: an lr backed off below ``lr_ceiling`` grows by ``lr_recovery`` (capped)."""
        if lr_ceiling is not None and lr < lr_ceiling:
            lr = min(lr_ceiling, lr * lr_recovery)
            set_lr(optimizer, lr)
        return lr

    def _reject(self, optimizer, lr: float, attempt: int, after_restore: Callable[[], None] | None) -> float:
        """Undo a rejected attempt bitwise; the lr of the next attempt (backed off unless this was the last)."""
        self.restore()  # resets the optimizer's lr to the snapshot's: the backoff comes after
        if after_restore is not None:
            after_restore()
        if attempt < self.max_retries:
            lr *= self.backoff
            set_lr(optimizer, lr)
        return lr

    def summary(self) -> dict[str, Any]:
        """JSON-ready record for reports: schedule, resolved tolerances (with directions), the direction of every
        baseline score, baseline, decisions and time spent."""
        return {
            "every": self.every,
            "backoff": self.backoff,
            "max_retries": self.max_retries,
            "tolerances": [t.to_dict() for t in self.tolerances],
            "baseline": self.baseline,
            "directions": self.suite.directions(self.baseline) if self.baseline is not None else {},
            "decisions": self.decisions,
            "total_seconds": self.total_seconds,
            "rollback_seconds": self.rollback_seconds,
            "reference": self.band.summary() if self.band is not None else None,
            "accepted": sum(d["decision"] == "accepted" for d in self.decisions),
            "rejected": sum(d["decision"] == "rejected" for d in self.decisions),
        }


def default_retain_gate(
    retain_path: str, tokenizer, max_relative_increase: float = DEFAULT_PERPLEXITY_INCREASE, **kwargs
) -> UtilityGate:
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
    return ", ".join(
        f"{label}/{name}={value:.6g}" for label, scores in results.items() for name, value in scores.items()
    )
