"""Set-level statistics (ROC AUC, TPR at low FPR, tail statistics, summaries) against hand-worked cases.

python -m pytest -q tests/test_sets.py
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy import stats

from obliviate.metrics.sets import (
    control_threshold,
    gini,
    grouped_recall_at_fpr,
    grouped_roc_auc,
    recall_at_fpr,
    roc_auc,
    summarize_scores,
    tail_statistics,
    tpr_at_fpr,
)


def pairwise_auc(pos, neg) -> float:
    """Mann-Whitney by brute force: P(member > control) + P(tie) / 2."""
    pairs = list(itertools.product(pos, neg))
    return sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in pairs) / len(pairs)


def test_auc_hand_cases():
    assert roc_auc([3, 4], [1, 2]) == 1.0
    assert roc_auc([1, 2], [3, 4]) == 0.0
    assert roc_auc([1, 1], [1, 1]) == 0.5
    # 0.9 and 0.8 beat both controls, 0.4 beats only 0.3: 5 of 6 pairs.
    assert roc_auc([0.9, 0.8, 0.4], [0.5, 0.3]) == pytest.approx(5 / 6)
    # A tie between a member and a control counts one half: (1 + 0.5 + 1 + 1) / 4.
    assert roc_auc([2.0, 1.0], [1.0, 0.0]) == pytest.approx(3.5 / 4)
    assert np.isnan(roc_auc([], [1.0]))


def test_auc_equals_mann_whitney_with_ties():
    rng = np.random.default_rng(0)
    pos = rng.integers(0, 6, 40).astype(float)  # few distinct values: many ties
    neg = rng.integers(0, 4, 30).astype(float)
    assert roc_auc(pos, neg) == pytest.approx(pairwise_auc(pos, neg))


def lira_tpr(pos, neg, budget) -> float:
    """The LiRA / mimir rule by brute force: best TPR over thresholds whose FPR is strictly below the budget."""
    best = 0.0
    for threshold in sorted(set(pos) | set(neg)) + [np.inf]:
        fpr = np.mean(np.asarray(neg) >= threshold)
        if fpr < budget:
            best = max(best, float(np.mean(np.asarray(pos) >= threshold)))
    return best


def test_tpr_at_fpr_hand_cases():
    members, controls = [5, 4, 3, 2], [4.5, 1, 0, -1]
    # Above 4.5 no control fires and one member of four does.
    assert tpr_at_fpr(members, controls, 0.01) == 0.25
    # FPR must stay strictly below the budget: one control of four (0.25) is over a 0.25 budget ...
    assert tpr_at_fpr(members, controls, 0.25) == 0.25
    # ... and within a 0.26 one, which lets the threshold drop to 2: every member.
    assert tpr_at_fpr(members, controls, 0.26) == 1.0
    assert tpr_at_fpr(members, controls, 0.2) == 0.25
    # A member tied with the top control cannot be separated from it below FPR 0.5.
    assert tpr_at_fpr([3, 1], [3, 0], 0.49) == 0.0
    assert tpr_at_fpr([3, 1], [3, 0], 0.5) == 0.0
    # At threshold 1 both members fire and only the control at 3 does (FPR 0.5 < 0.51).
    assert tpr_at_fpr([3, 1], [3, 0], 0.51) == 1.0
    with pytest.raises(ValueError, match="max_fpr"):
        tpr_at_fpr([1], [0], 0.0)


def test_tpr_at_1pct_with_100_tied_controls():
    # 100 controls: one at 10, one at 9, the rest at 0; members: 20 at 9.5, 30 tied with the control at 9, 50 at 0.
    controls = [10.0, 9.0] + [0.0] * 98
    members = [9.5] * 20 + [9.0] * 30 + [0.0] * 50
    # At 1% FPR one false positive of 100 is already over budget (1/100 is not < 0.01): nothing but FPR 0,
    # where no member outscores the control at 10.
    assert tpr_at_fpr(members, controls, 0.01) == 0.0 == lira_tpr(members, controls, 0.01)
    # At 2% one false positive is allowed (threshold 9.5, 20 members); the tie at 9 brings a second one.
    assert tpr_at_fpr(members, controls, 0.02) == 0.2 == lira_tpr(members, controls, 0.02)
    assert tpr_at_fpr(members, controls, 0.021) == 0.5 == lira_tpr(members, controls, 0.021)
    rng = np.random.default_rng(3)
    pos, neg = rng.integers(0, 30, 80).astype(float), rng.integers(0, 20, 100).astype(float)
    for budget in (0.01, 0.02, 0.1, 0.3):
        assert tpr_at_fpr(pos, neg, budget) == pytest.approx(lira_tpr(pos, neg, budget))


def test_grouped_threshold_compares_each_member_with_its_own_group():
    # Group "a" texts score high, "b" low; members are mostly "b". A pooled 10% cut on the 20 controls is
    # the 3rd highest (a's 107): no "b" member clears it. Per group: a's cut is its 2nd highest (108 of
    # 100..109), b's is 8 (of 0..9): members a:109 and b:9, b:8.5 clear theirs, b:8 ties and does not.
    controls = list(range(100, 110)) + list(range(10))
    control_groups = ["a"] * 10 + ["b"] * 10
    members = [109, 50, 9, 8.5, 8, 1]
    member_groups = ["a", "a", "b", "b", "b", "b"]
    assert recall_at_fpr(members, controls, 0.1) == pytest.approx(1 / 6)
    assert grouped_recall_at_fpr(members, member_groups, controls, control_groups, 0.1) == pytest.approx(3 / 6)
    # AUC over within-group pairs only, against the pairs counted one by one.
    pairs = [(m, c) for m, gm in zip(members, member_groups) for c, gc in zip(controls, control_groups) if gm == gc]
    by_hand = np.mean([1.0 if m > c else 0.5 if m == c else 0.0 for m, c in pairs])
    assert grouped_roc_auc(members, member_groups, controls, control_groups) == pytest.approx(by_hand)
    assert roc_auc(members, controls) != pytest.approx(by_hand)  # the pooled AUC counts cross-group pairs
    # A score blind to membership is 0.5 per group whatever the mix (pooled it is not).
    blind_members, blind_groups = [105, 5, 5, 5], ["a", "b", "b", "b"]
    assert grouped_roc_auc(blind_members, blind_groups, [105, 5], ["a", "b"]) == pytest.approx(0.5)
    assert roc_auc(blind_members, [105, 5]) != pytest.approx(0.5)
    with pytest.raises(ValueError, match="no controls of group"):
        grouped_recall_at_fpr([1.0], ["c"], controls, control_groups, 0.1)


def test_recall_at_10pct_fpr_threshold_on_controls():
    # 100 controls scored 0..99: at most 10 may lie above the threshold, so it is the 11th highest (89).
    controls = list(range(100))
    assert control_threshold(controls, 0.1) == 89.0
    members = [95, 90, 89.5, 89, 50]
    # Recall counts members strictly above 89: 95, 90, 89.5 (the one tied with the threshold is not).
    assert recall_at_fpr(members, controls, 0.1) == pytest.approx(3 / 5)
    # The budget is met with equality here (10 of 100 controls fire), unlike the ROC's strictly-below point.
    assert np.mean(np.asarray(controls) > control_threshold(controls, 0.1)) == 0.1
    # The ROC point needs FPR < 10%: at most 9 controls at or above the threshold, so it is 91 and only 95 passes.
    assert tpr_at_fpr(members, controls, 0.1) == pytest.approx(1 / 5)
    # Ties among controls: the threshold sits on the tie and none of the tied controls count.
    assert control_threshold([5, 5, 5, 1], 0.5) == 5.0
    assert recall_at_fpr([6, 5], [5, 5, 5, 1], 0.5) == 0.5
    # A budget of everything lets every member through.
    assert recall_at_fpr([0.0], [1.0], 1.0) == 1.0


def test_tail_statistics_one_sequence_holds_everything():
    values = [0.0] * 99 + [100.0]
    tail = tail_statistics(values)
    assert tail["max"] == 100.0
    assert tail["mean"] == 1.0
    # Linear interpolation between the 99th (0) and 100th (100) order statistics at rank 98.01.
    assert tail["p99"] == pytest.approx(1.0)
    assert tail["p95"] == 0.0
    assert tail["gini"] == pytest.approx(0.99)  # (n - 1) / n when one of n holds everything
    assert tail["top1pct_share"] == 1.0
    assert tail["skewness"] == pytest.approx(stats.skew(values))


def test_tail_statistics_even_and_spread_cases():
    even = tail_statistics([2.0] * 10)
    assert even["gini"] == 0.0 and even["skewness"] == 0.0 and even["top1pct_share"] == pytest.approx(0.1)
    # Gini of 1, 2, 3, 4: sum |x_i - x_j| over ordered pairs / (2 n^2 mean) = 20 / 80.
    assert gini([4, 1, 3, 2]) == pytest.approx(0.25)
    rng = np.random.default_rng(1)
    x = rng.exponential(size=500)
    tail = tail_statistics(x)
    assert tail["skewness"] == pytest.approx(stats.skew(x))
    assert tail["p95"] == pytest.approx(np.percentile(x, 95))
    assert tail["top1pct_share"] == pytest.approx(np.sort(x)[-5:].sum() / x.sum())
    assert tail_statistics([]) == {}


def _row(pid, role, exact, ma, loss, min_k, pml, ep):
    return {
        "id": pid,
        "role": role,
        "exact_extraction": exact,
        "memorization_accuracy": ma,
        "loss": loss,
        "min_k": min_k,
        "min_k_plus_plus": min_k,
        "zlib_ratio": -loss,
        "prefix_match_length": pml,
        "extraction_probability": ep,
    }


def test_summarize_scores_hand_case():
    rows = [
        _row("m0", "member", 1, 1.0, 0.1, -0.2, 8, 0.9),
        _row("m1", "member", 0, 0.5, 1.0, -2.0, 2, 0.1),
        _row("c0", "canary", 1, 1.0, 0.2, -0.3, 8, 0.8),
        _row("k0", "control", 0, 0.25, 2.0, -3.0, 0, 0.0),
        _row("k1", "control", 0, 0.5, 0.9, -1.0, 1, 0.0),
    ]
    s = summarize_scores(rows)
    assert s["count/member"] == 2 and s["count/canary"] == 1 and s["count/control"] == 2
    assert s["extraction_rate"] == pytest.approx(2 / 3)
    assert s["mean_memorization_accuracy"] == pytest.approx(2.5 / 3)
    assert s["canary/extraction_rate"] == 1.0 and s["control/extraction_rate"] == 0.0
    # neg_loss: members/canaries -0.1, -1.0, -0.2 vs controls -2.0, -0.9: 5 of 6 pairs.
    assert s["auc/neg_loss"] == pytest.approx(5 / 6)
    assert s["auc/min_k"] == pytest.approx(pairwise_auc([-0.2, -2.0, -0.3], [-3.0, -1.0]))
    assert "auc/reference_ratio" not in s  # no reference model was used
    # Two controls: 10% and 1% both allow none; the members above the top control (-0.9) are -0.1 and -0.2.
    for key in ("tpr@10%fpr/neg_loss", "tpr@1%fpr/neg_loss", "tpr@0.1%fpr/neg_loss", "recall@10%fpr/neg_loss"):
        assert s[key] == pytest.approx(2 / 3), key
    assert s["tail/prefix_match_length/max"] == 8
    assert s["tail/prefix_match_length/mean"] == pytest.approx(6.0)
    assert s["tail/extraction_probability/mean"] == pytest.approx(0.6)
