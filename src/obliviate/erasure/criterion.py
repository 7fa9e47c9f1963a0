"""When is a sequence forgotten? (DESIGN §5; Jang et al. 2022)

    python -c "from obliviate.erasure.criterion import ForgettingCriterion; help(ForgettingCriterion)"

``per_sequence`` (default): a sequence is forgotten when it is not exactly extractable (greedy
decoding from the prefix does not reproduce the suffix), its memorization accuracy (MA) is at most
the threshold, and its extraction probability is at most the threshold or below
``extraction_probability_floor`` (default 1e-3: found by fewer than one attacker in a thousand).
The thresholds of a probe come from the never-trained controls **of its own group** (format),
**scored on the current model** each time the criterion is checked: "no more memorized than text of
its format the model never saw, as the model is now". With ``control_quantile`` q (default 0.9) a
threshold is the q-quantile of the controls' scores: the sequence is judged still memorized when it
scores above 90% of never-trained text of its format, a one-sided test at the 10% level, which is
what "indistinguishable from text it never saw" can mean with a few dozen controls. The mean
(``control_quantile: null``, the rule before) calls half of the never-trained texts themselves
"memorized". "At most" and the floor matter at chance level: MA is a count over a few tokens, so a
threshold often sits exactly on a value the sequence can reach (0 correct digits of 6 is MA 0, and
erasure can move the controls to 0 too); and two probabilities of 1e-16 and 1e-19 both mean "never
extracted". Thresholds measured before erasure would let an erasure that wipes the whole format (the
controls' MA falls too) count as forgetting. A group with fewer than ``min_group_controls``
controls (or any group with ``thresholds: absolute``) is judged by the absolute
``max_memorization_accuracy`` / ``max_extraction_probability``; the report and the log say which.

``set_mean`` (Jang et al. 2022, for comparison with the papers): the *set* is forgotten when its
mean MA over every position of the full sequence (prefix and suffix) and its mean EL_n
(:func:`obliviate.metrics.generation.extraction_likelihood` over the whole sequence) are below the
thresholds (controls' means on the current model, or the absolute ``max_memorization_accuracy`` /
``max_extraction_likelihood``); every sequence of the set then counts as forgotten together.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch

from obliviate.data.probes import ProbeSet
from obliviate.metrics import score_sequences
from obliviate.metrics.generation import extraction_likelihood

logger = logging.getLogger(__name__)


@dataclass
class GroupThresholds:
    """Thresholds of one probe group at one check (a score equal to the threshold passes it)."""

    group: str | None
    source: str
    memorization_accuracy: float
    extraction_probability: float | None = None
    extraction_likelihood: float | None = None
    controls: int = 0
    note: str | None = None


@dataclass
class ForgettingCriterion:
    """Per-group thresholds, re-measured on the current model by :meth:`check`.

    Args:
        kind: ``per_sequence`` or ``set_mean``.
        controls: never-trained probes (role control), any groups; None for absolute thresholds only.
        thresholds: ``auto`` | ``controls`` | ``absolute`` (EraseConfig.thresholds).
        absolute: ``{"memorization_accuracy", "extraction_probability", "extraction_likelihood"}`` fallbacks.
        min_group_controls: a group needs this many controls to be judged against them.
        control_quantile: a threshold is this quantile of the controls' scores; None = their mean.
        el_n: the n of EL_n (``set_mean`` only).
        el_stride: stride over prefix lengths of EL_n.
        score_kwargs: ``batch_size`` and ``sampling`` passed to the scorer.
    """

    kind: str
    controls: ProbeSet | None
    thresholds: str
    absolute: dict
    min_group_controls: int = 10
    el_n: int | None = None
    el_stride: int = 1
    extraction_probability_floor: float = 1e-3
    control_quantile: float | None = 0.9
    score_kwargs: dict = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)
    last: dict = field(default_factory=dict)

    def __post_init__(self):
        self.by_group: dict[str | None, ProbeSet] = {}
        if self.thresholds != "absolute" and self.controls is not None:
            for probe in self.controls:
                self.by_group.setdefault(probe.group, []).append(probe)
            self.by_group = {g: ProbeSet(ps) for g, ps in self.by_group.items()}
        self.warned: set = set()

    # ------------------------------------------------------------------ which thresholds a group gets
    def calibrated(self, group: str | None) -> bool:
        """Whether ``group`` has enough controls to be judged against them."""
        return len(self.by_group.get(group, ())) >= self.min_group_controls

    def _absolute(self, group, note: str | None) -> GroupThresholds:
        a = self.absolute
        return GroupThresholds(
            group,
            "absolute",
            a["memorization_accuracy"],
            a["extraction_probability"],
            a.get("extraction_likelihood"),
            len(self.by_group.get(group, ())),
            note,
        )

    def _note(self, group) -> str | None:
        if self.thresholds == "absolute":
            return None
        n = len(self.by_group.get(group, ()))
        note = (
            f"group {group!r} has {n} control(s), fewer than {self.min_group_controls}: its probes are judged "
            "by the absolute thresholds"
        )
        if group not in self.warned:
            self.warned.add(group)
            logger.warning("%s (max_memorization_accuracy / max_extraction_probability).", note)
        return note

    # ------------------------------------------------------------------ scoring on the current model
    def _score(self, model, pad_id: int, probes: ProbeSet, full: bool) -> dict[str, torch.Tensor]:
        # The criterion reads argmax and likelihood scores only: no Min-K%++ moments (most of a pass's reduction).
        kwargs = {"moments": False, **self.score_kwargs}
        if full:  # every position after the first: MA over the whole sequence (Jang et al.)
            ids = [p.input_ids for p in probes]
            return score_sequences(model, [x[:1] for x in ids], [x[1:] for x in ids], pad_id, **kwargs)
        return score_sequences(model, [p.prefix_ids for p in probes], [p.suffix_ids for p in probes], pad_id, **kwargs)

    def check(
        self, model, tokenizer, probes: ProbeSet, scores: dict[str, torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Score ``probes`` (unless ``scores`` holds their per-sequence scores) and the controls on ``model`` now.

        Returns:
            ``(forgotten, scores)``: a boolean ``(N,)`` tensor and the probes' scores; the thresholds used
            are in ``self.last`` (and appended to ``self.history``).
        """
        pad = tokenizer.pad_token_id
        groups = [p.group for p in probes]
        wanted = sorted({g for g in groups if self.calibrated(g)}, key=str)
        if self.kind == "set_mean":
            return self._check_set(model, tokenizer, probes, wanted)
        # One scoring pass over the probes and the controls of their groups (they are few).
        control_sets = [self.by_group[g] for g in wanted]
        together = ProbeSet([p for s in control_sets for p in s] + (list(probes) if scores is None else []))
        joint = self._score(model, pad, together, full=False) if len(together) else {}
        n_controls = sum(len(s) for s in control_sets)
        if scores is None:
            scores = {k: v[n_controls:] for k, v in joint.items()}
        thresholds, offset = {}, 0
        for g, s in zip(wanted, control_sets):
            part = slice(offset, offset + len(s))
            offset += len(s)
            thresholds[g] = GroupThresholds(
                g,
                "controls",
                self._summary(joint["memorization_accuracy"][part]),
                self._summary(joint["extraction_probability"][part]),
                None,
                len(s),
            )
        for g in set(groups) - set(wanted):
            thresholds[g] = self._absolute(g, self._note(g))
        ma = torch.tensor([thresholds[g].memorization_accuracy for g in groups])
        ep = torch.tensor([thresholds[g].extraction_probability for g in groups])
        ep = ep.clamp_min(self.extraction_probability_floor)
        forgotten = (
            (scores["exact_extraction"] == 0)
            & (scores["memorization_accuracy"] <= ma)
            & (scores["extraction_probability"] <= ep)
        )
        self._record(thresholds)
        return forgotten, scores

    def _summary(self, values: torch.Tensor) -> float:
        """The controls' threshold: their ``control_quantile`` (linear interpolation, numpy's default), or mean."""
        values = values.double()
        if self.control_quantile is None:
            return float(values.mean())
        return float(torch.quantile(values, self.control_quantile))

    def _el(self, model, tokenizer, probes: ProbeSet) -> float:
        rows = extraction_likelihood(
            model,
            tokenizer,
            probes,
            n=self.el_n,
            stride=self.el_stride,
            batch_size=self.score_kwargs.get("batch_size", 32),
        )
        values = [r["extraction_likelihood"] for r in rows if r["extraction_likelihood"] is not None]
        if not values:
            raise ValueError(
                f"criterion set_mean: every sequence is shorter than el_n + 1 = {self.el_n + 1} tokens, "
                "so EL_n is undefined; lower el_n."
            )
        return sum(values) / len(values)

    def _check_set(self, model, tokenizer, probes: ProbeSet, wanted: list):
        pad = tokenizer.pad_token_id
        scores = self._score(model, pad, probes, full=True)
        set_ma, set_el = float(scores["memorization_accuracy"].mean()), self._el(model, tokenizer, probes)
        # A set mixing formats is compared with the pooled controls of its groups (all calibrated), else absolute.
        groups = {p.group for p in probes}
        if groups <= set(wanted):
            controls = ProbeSet([p for g in sorted(groups, key=str) for p in self.by_group[g]])
            c = self._score(model, pad, controls, full=True)
            t = GroupThresholds(
                ",".join(map(str, sorted(groups, key=str))),
                "controls",
                float(c["memorization_accuracy"].mean()),
                None,
                self._el(model, tokenizer, controls),
                len(controls),
            )
        else:
            missing = sorted(groups - set(wanted), key=str)
            t = self._absolute(",".join(map(str, missing)), self._note(missing[0]))
        done = set_ma <= t.memorization_accuracy and set_el <= t.extraction_likelihood
        self._record(
            {t.group: t}, {"set_memorization_accuracy": set_ma, "set_extraction_likelihood": set_el, "forgotten": done}
        )
        return torch.full((len(probes),), done, dtype=torch.bool), scores

    def _record(self, thresholds: dict, extra: dict | None = None) -> None:
        self.last = {"groups": {str(g): vars(t) for g, t in thresholds.items()}, **(extra or {})}
        self.history.append(self.last)

    def to_dict(self) -> dict:
        """For ``erasure_report.json``: the rule, the first and the last thresholds per group."""
        return {
            "criterion": self.kind,
            "thresholds": self.thresholds,
            "min_group_controls": self.min_group_controls,
            "control_quantile": self.control_quantile,
            "extraction_probability_floor": self.extraction_probability_floor,
            "el_n": self.el_n,
            "absolute": dict(self.absolute),
            "control_groups": {str(g): len(s) for g, s in self.by_group.items()},
            "first": self.history[0] if self.history else None,
            "last": self.last or None,
            "notes": sorted({t["note"] for h in self.history for t in h["groups"].values() if t.get("note")}),
        }


def build_criterion(config, controls: ProbeSet | None) -> ForgettingCriterion:
    """The criterion of ``config`` (``criterion``, ``thresholds``, absolute fallbacks, EL settings).

    Raises:
        ValueError: ``thresholds: controls`` without control probes.
    """
    if config.thresholds == "controls" and not controls:
        raise ValueError(
            "thresholds: controls needs control probes: pass --controls FILE (rows with role "
            "'control'), or set thresholds: absolute."
        )
    from obliviate.metrics import SamplingConfig

    absolute = {
        "memorization_accuracy": config.max_memorization_accuracy,
        "extraction_probability": config.max_extraction_probability,
        "extraction_likelihood": config.max_extraction_likelihood,
    }
    return ForgettingCriterion(
        config.criterion,
        controls if controls else None,
        config.thresholds,
        absolute,
        config.min_group_controls,
        config.el_n,
        config.el_stride,
        config.extraction_probability_floor,
        config.control_quantile,
        {"batch_size": config.score_batch_size, "sampling": SamplingConfig(n=config.extraction_samples)},
    )
