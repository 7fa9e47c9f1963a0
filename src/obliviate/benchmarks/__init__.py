"""Utility benchmarks, the suite that runs them, and the gate that keeps erasure from breaking the model.

    obliviate bench --model runs/toy/base --config recipes/utility.yaml --out runs/toy/utility

Built in (``BENCHMARKS``): ``perplexity``, ``multiple_choice``, ``evaluate_metric``, ``lm_eval``
(needs ``obliviate[lm-eval]``) and ``memorization`` (reported, not gated). See docs/benchmarks.md.
"""

from obliviate.benchmarks import (  # noqa: F401
    evaluate_metric,
    kl,  # registers kl_to_original
    lm_eval,
    memorization,
    multiple_choice,
    perplexity,
)
from obliviate.benchmarks.base import BenchmarkConfig, BenchmarkError, UtilityBenchmark
from obliviate.benchmarks.gate import (
    GateConfig,
    GateDecision,
    GateError,
    Tolerance,
    UtilityGate,
    default_gate_entries,
    default_retain_gate,
)
from obliviate.benchmarks.registry import BENCHMARKS, UnknownBenchmarkError, get_benchmark, register_benchmark
from obliviate.benchmarks.suite import BenchConfig, UtilitySuite

__all__ = [
    "BENCHMARKS",
    "BenchConfig",
    "BenchmarkConfig",
    "BenchmarkError",
    "GateConfig",
    "GateDecision",
    "GateError",
    "Tolerance",
    "UnknownBenchmarkError",
    "UtilityBenchmark",
    "UtilityGate",
    "UtilitySuite",
    "default_gate_entries",
    "default_retain_gate",
    "get_benchmark",
    "register_benchmark",
]
