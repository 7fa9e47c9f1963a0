"""Set-level statistics (ROC AUC, TPR at low FPR, tail statistics, summaries) against hand-worked cases.

    python -m pytest -q tests/test_sets.py
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy import stats

from obliviate.metrics.sets import gini, roc_auc, summarize_scores, tail_statistics, tpr_at_fpr


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


def test_tpr_at_fpr_hand_cases():
    members, controls = [5, 4, 3, 2], [4.5, 1, 0, -1]
    # Above 4.5 no control fires and one member of four does.
    assert tpr_at_fpr(members, controls, 0.01) == 0.25
    # Allowing one control of four (FPR 0.25) lets the threshold drop to 2: every member.
    assert tpr_at_fpr(members, controls, 0.25) == 1.0
    assert tpr_at_fpr(members, controls, 0.2) == 0.25
    # A member tied with the top control cannot be separated from it at FPR 0.
    assert tpr_at_fpr([3, 1], [3, 0], 0.0) == 0.0
    assert tpr_at_fpr([3, 1], [3, 0], 0.49) == 0.0
    # At threshold 1 both members fire and only the control at 3 does.
    assert tpr_at_fpr([3, 1], [3, 0], 0.5) == 1.0


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
    return {"id": pid, "role": role, "exact_extraction": exact, "memorization_accuracy": ma, "loss": loss,
            "min_k": min_k, "min_k_plus_plus": min_k, "zlib_ratio": -loss, "prefix_match_length": pml,
            "extraction_probability": ep}


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
    assert s["tail/prefix_match_length/max"] == 8
    assert s["tail/prefix_match_length/mean"] == pytest.approx(6.0)
    assert s["tail/extraction_probability/mean"] == pytest.approx(0.6)
