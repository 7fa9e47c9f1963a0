"""Set-level statistics over scored probes: extraction rate and mean MA, membership ROC, tail statistics.

python -c "from obliviate.metrics.sets import roc_auc; print(roc_auc([0.9, 0.8], [0.1, 0.85]))"
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence

import numpy as np

from obliviate.metrics.scorer import MIA_SCORES

TAIL_METRICS = ("prefix_match_length", "extraction_probability")
FPR_BUDGETS = {"10%": 0.1, "1%": 0.01, "0.1%": 0.001}
"""Operating points of ``summarize_scores``: 10% (Mireshghallah et al. 2022), 1% and 0.1% (Carlini et al. 2022)."""


SET_STATISTICS = {"extraction_rate": "exact_extraction", "mean_memorization_accuracy": "memorization_accuracy"}
"""Set-level statistic -> the per-sequence metric it averages."""


def set_mean(scores: Sequence[Mapping] | Mapping[str, Sequence], metric: str) -> float:
    """Mean of ``metric`` over a set: score rows (dicts) or columns (``{metric: list / array / tensor}``); NaN if empty.

    The one place a set's share or mean is taken, in float64 whatever the input's dtype.
    """
    values = scores[metric] if isinstance(scores, Mapping) else [r[metric] for r in scores]
    if hasattr(values, "detach"):  # a torch tensor (the eraser's criterion scores)
        values = values.detach().cpu().double().numpy()
    values = np.asarray(values, dtype=np.float64)
    return float(values.mean()) if values.size else float("nan")


def set_statistics(scores: Sequence[Mapping] | Mapping[str, Sequence]) -> dict[str, float]:
    """``extraction_rate`` (share of the set greedy decoding reproduces exactly, Carlini et al. 2021) and
    ``mean_memorization_accuracy`` (mean share of suffix tokens predicted, Tirumala et al. 2022) of a set.

    Args:
        scores: :func:`~obliviate.metrics.score_probes` rows, or columns of ``exact_extraction`` and
            ``memorization_accuracy`` values.
    """
    return {name: set_mean(scores, metric) for name, metric in SET_STATISTICS.items()}


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
    """True-positive rate at the last ROC point whose false-positive rate is strictly below ``max_fpr``.

    The convention of LiRA (Carlini et al. 2022) and mimir (Duan et al. 2024): ``tpr[fpr < max_fpr][-1]``.
    With n controls and ``max_fpr * n`` an integer k, k false positives are *not* allowed (1 of 100
    controls at 1% FPR is over budget), so the measured FPR is always below the budget. ROC points
    are one per distinct threshold, so a member tied with a control is never split from it.
    """
    if not 0 < max_fpr <= 1:
        raise ValueError(f"max_fpr must be in (0, 1], got {max_fpr}")
    if len(member_scores) == 0 or len(control_scores) == 0:
        return float("nan")
    fpr, tpr = roc_curve(member_scores, control_scores)
    # fpr is non-decreasing and starts at 0 < max_fpr, so the selection is never empty.
    return float(tpr[fpr < max_fpr][-1])


def control_threshold(control_scores, max_fpr: float) -> float:
    """The score above which at most ``max_fpr`` of the held-out controls fall (members: score > threshold).

    Mireshghallah et al. (2022) set a membership threshold on held-out (never-trained) data so that
    its false-positive rate is the budget, then report the recall of training members above it.
    With the controls sorted high to low, the threshold is the (floor(max_fpr * n) + 1)-th score:
    floor(max_fpr * n) controls lie strictly above it at most (fewer when it is tied).
    """
    if not 0 < max_fpr <= 1:
        raise ValueError(f"max_fpr must be in (0, 1], got {max_fpr}")
    ordered = np.sort(np.asarray(control_scores, float))[::-1]
    allowed = int(np.floor(max_fpr * len(ordered) + 1e-9))
    return float(ordered[allowed]) if allowed < len(ordered) else -np.inf


def recall_at_fpr(member_scores, control_scores, max_fpr: float) -> float:
    """Recall of members at the threshold :func:`control_threshold` sets on held-out controls (Mireshghallah 2022).

    Unlike :func:`tpr_at_fpr` (the ROC's strictly-below point), the budget is met with equality when
    ``max_fpr * n`` is an integer: 10 false positives of 100 controls are allowed at 10% FPR.
    """
    if len(member_scores) == 0 or len(control_scores) == 0:
        return float("nan")
    threshold = control_threshold(control_scores, max_fpr)
    return float(np.mean(np.asarray(member_scores, float) > threshold))


def _by_group(member_scores, member_groups, control_scores, control_groups):
    """``{group: (member scores, control scores)}``; a member's group must have controls to compare with."""
    members: dict = {}
    controls: dict = {}
    for score, group in zip(member_scores, member_groups, strict=True):
        members.setdefault(group, []).append(score)
    for score, group in zip(control_scores, control_groups, strict=True):
        controls.setdefault(group, []).append(score)
    missing = sorted(set(members) - set(controls), key=str)
    if missing:
        raise ValueError(f"no controls of group(s) {missing}: a per-group threshold needs controls of every group.")
    return {g: (members[g], controls[g]) for g in members}


def grouped_recall_at_fpr(member_scores, member_groups, control_scores, control_groups, max_fpr: float) -> float:
    """Recall when each member is compared with the :func:`control_threshold` of its own group's controls.

    A pooled threshold mixes formats: if one group's texts are easier for the model (lower loss) and the
    trained set holds more of the other, LOSS is biased before any training. A threshold per group keeps
    every group's false-positive rate within ``max_fpr`` (so the pooled rate too) and compares like with like.
    """
    if len(member_scores) == 0:
        return float("nan")
    pairs = _by_group(member_scores, member_groups, control_scores, control_groups)
    return sum(recall_at_fpr(m, c, max_fpr) * len(m) for m, c in pairs.values()) / len(member_scores)


def grouped_roc_auc(member_scores, member_groups, control_scores, control_groups) -> float:
    """Probability a member outscores a control *of its own group* (ties 1/2): within-group pairs only.

    The per-group AUCs weighted by their number of pairs; 0.5 for a score blind to membership, whatever
    the groups' mix.
    """
    if len(member_scores) == 0:
        return float("nan")
    pairs = _by_group(member_scores, member_groups, control_scores, control_groups)
    weights = {g: len(m) * len(c) for g, (m, c) in pairs.items()}
    return sum(roc_auc(m, c) * weights[g] for g, (m, c) in pairs.items()) / sum(weights.values())


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
    role (``canary/extraction_rate`` …), ``count/<role>``, ``auc/<score>``, ``tpr@10%fpr/<score>``,
    ``tpr@1%fpr/<score>``, ``tpr@0.1%fpr/<score>`` (ROC points, :func:`tpr_at_fpr`),
    ``recall@10%fpr/<score>`` (threshold on the controls, :func:`recall_at_fpr`; members+canaries vs
    controls throughout) and ``tail/<metric>/<stat>``.
    """
    summary: dict[str, float] = {}
    counts = Counter(r["role"] for r in rows)
    for role, n in sorted(counts.items()):
        summary[f"count/{role}"] = n
    trained = [r for r in rows if r["role"] in member_roles]
    groups = {"": trained, **{f"{role}/": [r for r in rows if r["role"] == role] for role in sorted(counts)}}
    for prefix, group in groups.items():
        if group:
            summary.update({f"{prefix}{name}": value for name, value in set_statistics(group).items()})
    controls = [r for r in rows if r["role"] == "control"]
    for name in MIA_SCORES:
        pos = [s for r in trained if (s := mia_score(r, name)) is not None]
        neg = [s for r in controls if (s := mia_score(r, name)) is not None]
        if pos and neg:
            summary[f"auc/{name}"] = roc_auc(pos, neg)
            for label, budget in FPR_BUDGETS.items():
                summary[f"tpr@{label}fpr/{name}"] = tpr_at_fpr(pos, neg, budget)
            summary[f"recall@10%fpr/{name}"] = recall_at_fpr(pos, neg, 0.1)
    for metric in TAIL_METRICS:
        for stat, value in tail_statistics([r[metric] for r in trained]).items():
            summary[f"tail/{metric}/{stat}"] = value
    return summary
