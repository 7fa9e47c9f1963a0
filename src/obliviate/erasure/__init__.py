"""Erasing memorized sequences: EMSO (entropy maximization + contrastive weight selection) and baselines.

    obliviate erase --model runs/toy/base --forget runs/toy/probes.jsonl --retain runs/toy/retain.jsonl \\
        --config recipes/erase-emso.yaml --out runs/toy/erased

See docs/erasure.md (EMSO here is a reconstruction from the paper's abstract; every choice is a field
of :class:`EraseConfig`).
"""

from obliviate.erasure.config import EraseConfig, EraseConfigError
from obliviate.erasure.criterion import ForgettingCriterion, build_criterion
from obliviate.erasure.eraser import Eraser
from obliviate.erasure.losses import LOSSES
from obliviate.erasure.result import ErasureResult, format_summary
from obliviate.erasure.run import load_forget, run_erase
from obliviate.erasure.selectors import SELECTORS

__all__ = [
    "LOSSES",
    "SELECTORS",
    "EraseConfig",
    "EraseConfigError",
    "Eraser",
    "ErasureResult",
    "ForgettingCriterion",
    "build_criterion",
    "format_summary",
    "load_forget",
    "run_erase",
]
