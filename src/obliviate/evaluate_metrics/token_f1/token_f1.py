"""Token-overlap F1 between generated and reference strings (SQuAD-style), as an offline ``evaluate`` module.

    HF_EVALUATE_OFFLINE=1 python -c "import evaluate, obliviate.evaluate_metrics as m; \
print(evaluate.load(m.path('token_f1')).compute(predictions=['the red flag'], references=['red']))"

Both strings are lowercased, stripped of punctuation and of the articles a/an/the, and split on
whitespace; F1 is the harmonic mean of the precision and recall of the shared tokens (counted
with multiplicity). Two empty strings score 1, one empty string scores 0.
"""

import re
import string
from collections import Counter

import datasets
import evaluate

_DESCRIPTION = "Mean token-overlap F1 of predictions against references (SQuAD-style normalization)."

_KWARGS_DESCRIPTION = """
Args:
    predictions: list of generated strings.
    references: list of reference strings, one per prediction.
    normalize: lowercase and drop punctuation and articles first (default True).
Returns:
    token_f1: mean F1 in [0, 1].
Example:
    >>> metric = evaluate.load("path/to/token_f1")
    >>> metric.compute(predictions=["red flag"], references=["red"])
    {'token_f1': 0.6666666666666666}
"""

_PUNCTUATION = re.compile(f"[{re.escape(string.punctuation)}]")
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def tokens(text: str, normalize: bool = True) -> list[str]:
    if normalize:
        text = _ARTICLES.sub(" ", _PUNCTUATION.sub("", text.lower()))
    return text.split()


def f1(prediction: list[str], reference: list[str]) -> float:
    if not prediction or not reference:
        return float(prediction == reference)
    shared = sum((Counter(prediction) & Counter(reference)).values())
    if shared == 0:
        return 0.0
    precision, recall = shared / len(prediction), shared / len(reference)
    return 2 * precision * recall / (precision + recall)


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class TokenF1(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Value("string")}
            ),
        )

    def _compute(self, predictions, references, normalize=True):
        if not predictions:
            return {"token_f1": float("nan")}
        scores = [f1(tokens(p, normalize), tokens(r, normalize)) for p, r in zip(predictions, references)]
        return {"token_f1": sum(scores) / len(scores)}
