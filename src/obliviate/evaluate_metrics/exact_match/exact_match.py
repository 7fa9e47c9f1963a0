"""Exact match between generated and reference strings, as an offline ``evaluate`` module.

    HF_EVALUATE_OFFLINE=1 python -c "import evaluate, obliviate.evaluate_metrics as m; \
print(evaluate.load(m.path('exact_match')).compute(predictions=['Red.'], references=['red.'], ignore_case=True))"

Loads by path with ``evaluate.load(path)``, so it works with no network (hub metric scripts do not).
"""

import re
import string

import datasets
import evaluate

_DESCRIPTION = """Share of predictions equal to their reference after optional normalization
(surrounding whitespace is always stripped)."""

_KWARGS_DESCRIPTION = """
Args:
    predictions: list of generated strings.
    references: list of reference strings, one per prediction.
    ignore_case: compare lowercased strings (default False).
    ignore_punctuation: drop ASCII punctuation before comparing (default False).
    collapse_whitespace: turn runs of whitespace into one space (default True).
Returns:
    exact_match: float in [0, 1].
Example:
    >>> metric = evaluate.load("path/to/exact_match")
    >>> metric.compute(predictions=["a b", "c"], references=["a  b", "d"])
    {'exact_match': 0.5}
"""

_PUNCTUATION = re.compile(f"[{re.escape(string.punctuation)}]")


def normalize(text: str, ignore_case: bool, ignore_punctuation: bool, collapse_whitespace: bool) -> str:
    if ignore_case:
        text = text.lower()
    if ignore_punctuation:
        text = _PUNCTUATION.sub("", text)
    if collapse_whitespace:
        text = " ".join(text.split())
    return text.strip()


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class ExactMatch(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Value("string")}
            ),
        )

    def _compute(self, predictions, references, ignore_case=False, ignore_punctuation=False, collapse_whitespace=True):
        if not predictions:
            return {"exact_match": float("nan")}
        hits = sum(
            normalize(p, ignore_case, ignore_punctuation, collapse_whitespace)
            == normalize(r, ignore_case, ignore_punctuation, collapse_whitespace)
            for p, r in zip(predictions, references)
        )
        return {"exact_match": hits / len(predictions)}
