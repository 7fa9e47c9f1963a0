"""Per-sequence memorization and membership scores, shared by callbacks, erasure and benchmarks."""

from obliviate.metrics.density import DensityConfig, embed_texts, probe_density
from obliviate.metrics.exposure import ExposureConfig, SecretFormat, canary_exposure, exposures, parse_format
from obliviate.metrics.generation import extraction_likelihood, greedy_continuations, greedy_suffix
from obliviate.metrics.mia import gradnorm_scores, score_gradnorm, score_recall
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
    "METRIC_NAMES",
    "MIA_SCORES",
    "SamplingConfig",
    "context_length",
    "score_probes",
    "score_sequences",
    "zlib_length",
    # slower scores: exposure, generation, density, GradNorm, ReCaLL
    "gradnorm_scores",
    "score_gradnorm",
    "score_recall",
    "DensityConfig",
    "ExposureConfig",
    "SecretFormat",
    "canary_exposure",
    "embed_texts",
    "exposures",
    "extraction_likelihood",
    "greedy_continuations",
    "greedy_suffix",
    "parse_format",
    "probe_density",
]
