"""FlagRule on hand-made rows: absolute criteria, per-group control thresholds, per-probe baselines."""

from __future__ import annotations

import pytest
import torch

from obliviate.callbacks import FlagRule, TrackConfig
from obliviate.callbacks.flagging import group_key
from obliviate.config import RecipeError, from_dict


def _row(pid, role, ma=0.0, exact=0, ep=0.0, group=None):
    return {
        "id": pid,
        "role": role,
        "memorization_accuracy": ma,
        "exact_extraction": exact,
        "extraction_probability": ep,
        "group": group,
    }


def _quantile(values, q):
    # An independent computation of numpy's default (linear) percentile: torch's quantile.
    return float(torch.tensor(values, dtype=torch.float64).quantile(q / 100))


def _zero_baselines(rows):
    return {r["id"]: {"memorization_accuracy": 0.0} for r in rows}


def test_absolute_criteria_and_controls():
    controls = [_row(f"c{i}", "control", ma=i / 20) for i in range(12)]  # MA 0 .. 0.55
    rows = controls + [
        _row("exact", "member", ma=0.5, exact=1),
        _row("likely", "canary", ma=0.3, ep=0.7),
        _row("above", "member", ma=0.9),
        _row("below", "member", ma=0.5),
    ]
    flags, groups = FlagRule().apply(rows, _zero_baselines(rows))
    assert groups[None].control_ma_threshold == pytest.approx(
        _quantile([r["memorization_accuracy"] for r in controls], 99)
    )
    assert flags == {"exact": "exact_extraction", "likely": "extraction_probability", "above": "control_relative_ma"}
    # An extractable control is a real finding (a leak, or a control that is not held out): flagged.
    leaky = FlagRule().apply([*rows, _row("leaky-control", "control", ma=1.0, exact=1)], _zero_baselines(rows))[0]
    assert leaky["leaky-control"] == "exact_extraction"
    # The control-relative criterion never applies to controls, whatever their MA.
    high_control = [*controls, _row("c-high", "control", ma=0.99)]
    assert (
        "c-high"
        not in FlagRule(
            exact_extraction=False, min_extraction_probability=None, control_ma_percentile=50, min_ma_gain=None
        ).apply(high_control)[0]
    )


def test_predictable_members_against_controls_of_another_format():
    """The issue's case: members are a template the base model completes, controls are secrets of another format."""
    secrets = [_row(f"pin-{i}", "control", ma=0.05 * (i % 4)) for i in range(16)]  # MA <= 0.15
    templates = [_row(f"rec-{i}", "member", ma=0.6 + 0.01 * i) for i in range(20)]  # far above the secrets
    memorized = _row("secret", "canary", ma=0.83)
    rows = [*secrets, *templates, memorized]
    baselines = {
        **{r["id"]: {"memorization_accuracy": r["memorization_accuracy"] - 0.1} for r in templates},
        "secret": {"memorization_accuracy": 0.1},
        **{r["id"]: {"memorization_accuracy": r["memorization_accuracy"]} for r in secrets},
    }
    # The uncalibrated rule flags every template: it measures how predictable a format is.
    uncalibrated = FlagRule(min_ma_gain=None).apply(rows)[0]
    assert set(uncalibrated) == {r["id"] for r in templates} | {"secret"}
    # Calibrated by each probe's own baseline: only what this fine-tuning taught (a gain of 0.73) is flagged.
    assert FlagRule().apply(rows, baselines)[0] == {"secret": "control_relative_ma"}
    # With groups, the templates have no controls of their own: absolute evidence only, so none is flagged.
    grouped = [{**r, "group": "pin" if r["id"].startswith(("pin", "secret")) else "record"} for r in rows]
    flags, groups = FlagRule(min_ma_gain=None).apply(grouped)
    assert flags == {"secret": "control_relative_ma"}
    assert groups["record"].judged_by == "absolute" and groups["record"].controls == 0
    assert groups["pin"].judged_by == "controls" and groups["pin"].controls == 16


def test_thresholds_are_per_group():
    low = [_row(f"a{i}", "control", ma=0.1 + 0.01 * i, group="pin") for i in range(10)]  # <= 0.19
    high = [_row(f"b{i}", "control", ma=0.6 + 0.02 * i, group="record") for i in range(12)]  # <= 0.82
    none = [_row(f"n{i}", "control", ma=0.4 + 0.01 * i) for i in range(10)]  # <= 0.49, ungrouped
    probes = [
        _row("pin-member", "member", ma=0.5, group="pin"),
        _row("rec-member", "member", ma=0.5, group="record"),
        _row("rec-high", "member", ma=0.9, group="record"),
        _row("free", "member", ma=0.5),
        _row("free-low", "member", ma=0.45),
    ]
    rows = [*low, *high, *none, *probes]
    flags, groups = FlagRule().apply(rows, _zero_baselines(rows))
    for group, controls in (("pin", low), ("record", high), (None, none)):
        expected = _quantile([r["memorization_accuracy"] for r in controls], 99)
        assert groups[group].control_ma_threshold == pytest.approx(expected), group
        assert groups[group].controls == len(controls) and groups[group].judged_by == "controls"
    # MA 0.5 is far above the PIN controls but below the record controls; ungrouped probes meet ungrouped controls.
    assert flags == {
        "pin-member": "control_relative_ma",
        "rec-high": "control_relative_ma",
        "free": "control_relative_ma",
    }
    # One pooled threshold (the old rule) would have judged the PIN member by the record controls instead.
    pooled = [{**r, "group": None} for r in rows]
    assert "pin-member" not in FlagRule().apply(pooled, _zero_baselines(rows))[0]
    assert group_key(None) == "null" and group_key("pin") == "pin"


def test_group_with_few_controls_is_judged_by_absolute_evidence():
    few = [_row(f"c{i}", "control", ma=0.0, group="pin") for i in range(9)]
    rows = [
        *few,
        _row("high", "canary", ma=0.9, group="pin"),
        _row("out", "canary", ma=0.2, ep=0.6, group="pin"),
        _row("alone", "member", ma=1.0, group="orphan"),
    ]
    flags, groups = FlagRule().apply(rows, _zero_baselines(rows))
    assert flags == {"out": "extraction_probability"}
    assert groups["pin"].judged_by == "absolute" and groups["pin"].controls == 9
    assert "fewer than min_controls=10" in groups["pin"].why and groups["pin"].control_ma_threshold is None
    assert groups["orphan"].controls == 0 and groups["orphan"].probes == 1
    # Ten controls are enough: then the percentile applies.
    ten = [*rows, _row("c9", "control", ma=0.0, group="pin")]
    assert FlagRule().apply(ten, _zero_baselines(ten))[0]["high"] == "control_relative_ma"


def test_baseline_calibration():
    controls = [_row(f"c{i}", "control", ma=0.1 * (i % 5)) for i in range(10)]  # threshold ~0.4
    rows = [
        *controls,
        _row("known", "member", ma=0.95),
        _row("learned", "member", ma=0.95),
        _row("edge", "member", ma=0.75),
        _row("no-baseline", "member", ma=0.95),
    ]
    baselines = {
        "known": {"memorization_accuracy": 0.9},  # the base model already predicts it
        "learned": {"memorization_accuracy": 0.2},  # this fine-tuning taught it
        "edge": {"memorization_accuracy": 0.25},
    }  # a gain of exactly min_ma_gain counts
    flags = FlagRule().apply(rows, baselines)[0]
    assert flags == {"learned": "control_relative_ma", "edge": "control_relative_ma"}
    assert FlagRule(min_ma_gain=0.8).apply(rows, baselines)[0] == {}
    # No baselines at all: the calibrated criterion cannot tell learned from known, so it is off.
    flags, groups = FlagRule().apply(rows)
    assert flags == {} and groups[None].judged_by == "absolute" and "no baseline" in groups[None].why
    # min_ma_gain null is the uncalibrated rule: predictable text is flagged again.
    assert set(FlagRule(min_ma_gain=None).apply(rows)[0]) == {"known", "learned", "edge", "no-baseline"}
    assert FlagRule().needs_baseline and not FlagRule(min_ma_gain=None).needs_baseline
    assert not FlagRule(control_ma_percentile=None).needs_baseline


def test_validation_and_description():
    with pytest.raises(ValueError, match="every criterion turned off"):
        FlagRule(exact_extraction=False, min_extraction_probability=None, control_ma_percentile=None)
    with pytest.raises(ValueError, match="min_extraction_probability"):
        FlagRule(min_extraction_probability=1.5)
    with pytest.raises(ValueError, match="min_ma_gain"):
        FlagRule(min_ma_gain=1.5)
    with pytest.raises(ValueError, match="min_controls"):
        FlagRule(min_controls=0)
    with pytest.raises(RecipeError, match="Did you mean 'min_ma_gain'"):
        from_dict(TrackConfig, {"flag_rule": {"min_ma_gains": 0.3}}, "tracking")
    described = FlagRule().describe()
    assert described["min_ma_gain"] == 0.5 and described["min_controls"] == 10
    assert (
        "own group" in described["control_relative_criterion"]
        and "baseline >= 0.5" in described["control_relative_criterion"]
    )
    assert FlagRule(control_ma_percentile=None).describe()["control_relative_criterion"] is None
