"""Per-sequence memorization and membership scores, shared by callbacks, erasure and benchmarks."""

from obliviate.metrics.scorer import (
    METRIC_NAMES,
    MIA_SCORES,
    context_length,
    score_probes,
    score_sequences,
    zlib_length,
)
from obliviate.metrics.teacher_forced import SamplingConfig

__all__ = [
    "METRIC_NAMES", "MIA_SCORES", "SamplingConfig", "context_length", "score_probes", "score_sequences",
    "zlib_length",
]
