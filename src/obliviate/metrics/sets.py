"""Set-level statistics over scored probes: extraction rate, membership ROC, tail statistics.

    python -c "from obliviate.metrics.sets import roc_auc; print(roc_auc([0.9, 0.8], [0.1, 0.85]))"
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from obliviate.metrics.scorer import MIA_SCORES

TAIL_METRICS = ("prefix_match_length", "extraction_probability")


def roc_curve(member_scores, control_scores) -> tuple[np.ndarray, np.ndarray]:
    """False- and true-positive rates at every threshold, members as positives (higher score = member)."""
    pos, neg = np.asarray(member_scores, float), np.asarray(control_scores, float)
    scores = np.concatenate([pos, neg])
    labels = np.concatenate([np.ones(len(pos)), np.zeros(len(neg))])
    order = np.argsort(-scores, kind="mergesort")
    scores, labels = scores[order], labels[order]
    # One point per distinct threshold so ties are not split arbitrarily.
    last_of_tie = np.r_[np.nonzero(np.diff(scores))[0], len(scores) - 1]
    tps = np.cumsum(labels)[last_of_tie]
    fps = (last_of_tie + 1) - tps
    tpr = np.r_[0.0, tps / max(len(pos), 1)]
    fpr = np.r_[0.0, fps / max(len(neg), 1)]
    return fpr, tpr


def roc_auc(member_scores, control_scores) -> float:
    """Area under the ROC curve (probability a random member outscores a random control, ties count 1/2)."""
    if len(member_scores) == 0 or len(control_scores) == 0:
        return float("nan")
    fpr, tpr = roc_curve(member_scores, control_scores)
    return float(np.trapezoid(tpr, fpr))


def tpr_at_fpr(member_scores, control_scores, max_fpr: float) -> float:
    """Highest true-positive rate at a threshold whose false-positive rate is at most ``max_fpr``."""
    if len(member_scores) == 0 or len(control_scores) == 0:
        return float("nan")
    fpr, tpr = roc_curve(member_scores, control_scores)
    return float(tpr[fpr <= max_fpr].max())


def gini(values) -> float:
    """Gini coefficient of non-negative values (0 = evenly spread, 1 = all in one sequence)."""
    x = np.sort(np.asarray(values, float))
    if len(x) == 0 or x.sum() == 0:
        return 0.0
    n = len(x)
    return float((2 * np.arange(1, n + 1) - n - 1) @ x / (n * x.sum()))


def tail_statistics(values) -> dict[str, float]:
    """Max, p99, p95, mean, skewness, Gini and the top 1%'s share of the total (Li et al. 2025)."""
    x = np.asarray(values, float)
    if len(x) == 0:
        return {}
    std = x.std()
    top = max(1, int(np.ceil(0.01 * len(x))))
    total = x.sum()
    return {
        "max": float(x.max()),
        "p99": float(np.percentile(x, 99)),
        "p95": float(np.percentile(x, 95)),
        "mean": float(x.mean()),
        "skewness": float(((x - x.mean()) ** 3).mean() / std**3) if std > 0 else 0.0,
        "gini": gini(x) if (x >= 0).all() else float("nan"),
        "top1pct_share": float(np.sort(x)[-top:].sum() / total) if total > 0 else 0.0,
    }


def mia_score(row: dict, name: str) -> float | None:
    if name == "neg_loss":
        return -row["loss"]
    return row.get(name)


def summarize_scores(rows: list[dict], member_roles: tuple[str, ...] = ("member", "canary")) -> dict[str, float]:
    """Flat set-level summary of :func:`~obliviate.metrics.score_probes` rows.

    Keys: ``extraction_rate`` and ``mean_memorization_accuracy`` (over members and canaries), the same per
    role (``canary/extraction_rate`` …), ``count/<role>``, ``auc/<score>``, ``tpr@1%fpr/<score>``,
    ``tpr@0.1%fpr/<score>`` (members+canaries vs controls) and ``tail/<metric>/<stat>``.
    """
    summary: dict[str, float] = {}
    counts = Counter(r["role"] for r in rows)
    for role, n in sorted(counts.items()):
        summary[f"count/{role}"] = n
    trained = [r for r in rows if r["role"] in member_roles]
    groups = {"": trained, **{f"{role}/": [r for r in rows if r["role"] == role] for role in sorted(counts)}}
    for prefix, group in groups.items():
        if group:
            summary[f"{prefix}extraction_rate"] = float(np.mean([r["exact_extraction"] for r in group]))
            summary[f"{prefix}mean_memorization_accuracy"] = float(np.mean([r["memorization_accuracy"] for r in group]))
    controls = [r for r in rows if r["role"] == "control"]
    for name in MIA_SCORES:
        pos = [s for r in trained if (s := mia_score(r, name)) is not None]
        neg = [s for r in controls if (s := mia_score(r, name)) is not None]
        if pos and neg:
            summary[f"auc/{name}"] = roc_auc(pos, neg)
            summary[f"tpr@1%fpr/{name}"] = tpr_at_fpr(pos, neg, 0.01)
            summary[f"tpr@0.1%fpr/{name}"] = tpr_at_fpr(pos, neg, 0.001)
    for metric in TAIL_METRICS:
        for stat, value in tail_statistics([r[metric] for r in trained]).items():
            summary[f"tail/{metric}/{stat}"] = value
    return summary
