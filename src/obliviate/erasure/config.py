"""``EraseConfig``: every choice of the erasure loop, loadable from a YAML recipe.

    python -c "from obliviate.erasure import EraseConfig; print(EraseConfig())"

EMSO's full text is not available to us; DESIGN §5 reconstructs it from the abstract, and every
choice that reconstruction had to make is a field here (docs/erasure.md lists them).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from obliviate.erasure.method_args import (  # noqa: F401 - re-exported: losses and selectors import them here
    METHOD_ALIASES,
    SELECTOR_ALIASES,
    component_args,
    resolve_args,
)

GRANULARITIES = ("element", "row", "tensor")
TARGETS = ("full", "lora")
ENTROPY_VARIANTS = ("entropy", "uniform_ce")
THRESHOLD_SOURCES = ("auto", "controls", "absolute")
CRITERIA = ("per_sequence", "set_mean")
OPTIMIZERS = ("adam", "sgd")
# The fields that must be integers >= 1 (checked in this order).
_COUNT_FIELDS = ("max_steps", "chunk_size", "batch_size", "retain_batch_size", "extraction_samples", "score_every")
_COUNT_FIELDS += ("score_batch_size", "min_group_controls", "el_stride")


class EraseConfigError(ValueError):
    """An EraseConfig field out of range; the message names the field and the valid values."""


def _one_of(name: str, value: Any, valid: tuple[str, ...]) -> None:
    if value not in valid:
        raise EraseConfigError(f"{name} must be one of {', '.join(valid)}; got {value!r}.")


@dataclass
class EraseConfig:
    """Configuration of :class:`~obliviate.erasure.Eraser` (the ``erase`` recipe's keys)."""

    method: str = field(
        default="emso",
        metadata={
            "help": "loss: emso (entropy maximization), ga (gradient ascent), graddiff (GA + retain NLL), npo, clipped_ga "
            "(GA only on the tokens still predicted: obliviate's extension)."
        },
    )
    method_args: dict = field(
        default_factory=dict,
        metadata={
            "help": "the method's own settings, checked against its loss class's config_class (emso: entropy_variant; "
            "graddiff, unlikelihood: retain_weight, retain_objective; npo: npo_beta; npo_rt: all three; clipped_ga: "
            "clip_probability; ga: none). "
            "After validation: every field of that class, defaults filled in."
        },
    )
    entropy_variant: str | None = field(
        default=None,
        metadata={
            "help": "alias of method_args.entropy_variant (emso: uniform_ce or entropy); null = the method's default."
        },
    )
    selector: str = field(
        default="contrastive",
        metadata={
            "help": "weight selection: contrastive (s = -g_loss*g_nll on the forget set only: EMSO as its abstract states "
            "it), contrastive_retain (obliviate's extension: minus retain_contrast x the retain-NLL gradient, "
            "needs --retain), magnitude (|g_loss|), random, all."
        },
    )
    select_fraction: float = field(
        default=0.01,
        metadata={"help": "fraction of candidate weights updated (by element count, whatever the granularity)."},
    )
    granularity: str = field(
        default="element",
        metadata={"help": "unit of selection: element, row (dim 0 of the stored tensor; score summed) or tensor."},
    )
    selector_args: dict = field(
        default_factory=dict,
        metadata={
            "help": "the selector's own settings, checked against its class's config_class (contrastive_retain: "
            "retain_contrast; the others: none). The paper-faithful `contrastive` selector is lambda = 0."
        },
    )
    retain_contrast: float | None = field(
        default=None,
        metadata={"help": "alias of selector_args.retain_contrast (contrastive_retain's lambda, default 1.0)."},
    )
    select_scope: str = field(
        default="global",
        metadata={
            "help": "global (rank all candidate weights together) or per_tensor (select_fraction of each tensor)."
        },
    )
    target_modules: Any = field(
        default=None,
        metadata={"help": "only parameters whose name matches: a regex, or a list of regexes (re.search); null = all."},
    )
    reference_model: str | None = field(
        default=None,
        metadata={
            "help": "the model the fine-tuning started from (name, path or .gguf), for ga_to_reference (its likelihood "
            "of each forget token) and gate.reference (its scores of the gate's text): measured once before the "
            "first step, and the model freed."
        },
    )
    reselect_every: int | None = field(
        default=None,
        metadata={
            "help": "recompute the selection every N optimizer steps (at a gate-block boundary); null = once per chunk."
        },
    )
    learning_rate: float = field(default=3e-4, metadata={"help": "optimizer learning rate at the start of each chunk."})
    optimizer: str = field(default="adam", metadata={"help": "adam (state only for selected entries) or sgd."})
    adam_beta1: float = field(default=0.9, metadata={"help": "Adam beta1."})
    adam_beta2: float = field(default=0.999, metadata={"help": "Adam beta2."})
    adam_epsilon: float = field(default=1e-8, metadata={"help": "Adam epsilon."})
    weight_decay: float = field(default=0.0, metadata={"help": "decoupled weight decay, on selected entries only."})
    lr_recovery: float = field(
        default=1.0,
        metadata={
            "help": "after a gate-accepted block, lr *= this (capped at learning_rate): undoes earlier backoffs; 1 = never."
        },
    )
    max_grad_norm: float | None = field(
        default=None, metadata={"help": "clip the selected entries' gradient to this L2 norm; null = no clipping."}
    )
    max_steps: int = field(default=200, metadata={"help": "most kept optimizer steps per chunk."})
    chunk_size: int = field(default=32, metadata={"help": "forget sequences erased together (each chunk gated)."})
    batch_size: int = field(default=32, metadata={"help": "sequences per forward/backward micro-batch."})
    retain_weight: float | None = field(
        default=None, metadata={"help": "alias of method_args.retain_weight (graddiff, npo_rt; default 1.0)."}
    )
    retain_batch_size: int = field(
        default=16,
        metadata={
            "help": "retain texts drawn per step for whatever reads them: graddiff's and npo_rt's retain term, the "
            "contrastive_retain selector (so it is not one method's setting)."
        },
    )
    npo_beta: float | None = field(
        default=None, metadata={"help": "alias of method_args.npo_beta (npo, npo_rt; default 0.1)."}
    )
    forget_reduction: str | None = field(
        default=None,
        metadata={
            "help": "token (mean over all suffix tokens of the batch) or sequence (mean over sequences of each suffix's "
            "mean); null = the loss's own: token for ga/graddiff (Jang et al., open-unlearning), sequence for "
            "npo/npo_rt (Zhang et al.) and emso (measured; docs/erasure.md, Losses)."
        },
    )
    clip_probability: float | None = field(
        default=None, metadata={"help": "alias of method_args.clip_probability (clipped_ga; default 0.1)."}
    )
    target: str = field(
        default="full", metadata={"help": "where to write: full (the weights) or lora (a new adapter)."}
    )
    lora: dict = field(
        default_factory=lambda: {"r": 8, "lora_alpha": 16, "lora_dropout": 0.0},
        metadata={
            "help": "target lora: peft.LoraConfig fields (task_type is CAUSAL_LM); target_modules null = PEFT's default."
        },
    )
    gate: Any = field(
        default="default",
        metadata={
            "help": "the UtilityGate section {every, backoff, max_retries, benchmarks}; 'default' = retain perplexity "
            "+2% when --retain is given (none otherwise); null = no gate."
        },
    )
    utility: list | None = field(
        default=None,
        metadata={"help": "extra benchmark entries measured before/after for the report only (not gated)."},
    )
    thresholds: str = field(
        default="auto",
        metadata={
            "help": "forgetting thresholds: controls (mean MA / extraction probability of control probes), absolute "
            "(the two fields below), auto (controls when given, else absolute)."
        },
    )
    max_memorization_accuracy: float = field(
        default=0.5, metadata={"help": "absolute threshold: forgotten needs MA below this (used without controls)."}
    )
    max_extraction_probability: float = field(
        default=0.01,
        metadata={
            "help": "absolute threshold: forgotten needs extraction_probability below this (used without controls)."
        },
    )
    extraction_probability_floor: float = field(
        default=1e-3,
        metadata={
            "help": "an extraction probability at or below this counts as not extractable whatever the controls' mean "
            "(1e-16 and 1e-19 both mean never found)."
        },
    )
    control_quantile: float | None = field(
        default=0.9,
        metadata={
            "help": "thresholds: controls: a sequence is forgotten when its MA and extraction probability are at most this "
            "quantile of its group's never-trained controls on the current model (0.9: it scores no higher than 90% "
            "of text of its format the model never saw, a 10%-level test); null = the controls' mean."
        },
    )
    min_controls_ma_kept: float = field(
        default=0.75,
        metadata={
            "help": "collateral bound: the never-trained controls of every group must keep this share of their MA; "
            "the report's verdict says FORMAT DAMAGED otherwise."
        },
    )
    criterion: str = field(
        default="per_sequence",
        metadata={
            "help": "per_sequence (each sequence vs the current controls of its group) or set_mean (Jang et al. 2022: "
            "the set's mean full-sequence MA and mean EL_n below thresholds; needs el_n)."
        },
    )
    min_group_controls: int = field(
        default=10,
        metadata={
            "help": "a probe group needs this many controls to be judged against them; fewer: absolute thresholds."
        },
    )
    el_n: int | None = field(
        default=None,
        metadata={"help": "criterion set_mean: the n of EL_n (Jang et al. use 10 on 200-token sequences)."},
    )
    el_stride: int = field(default=1, metadata={"help": "criterion set_mean: stride over EL_n's prefix lengths."})
    max_extraction_likelihood: float = field(
        default=0.05,
        metadata={
            "help": "criterion set_mean, absolute threshold: the set's mean EL_n must be below this (without controls)."
        },
    )
    gate_fraction: float = field(
        default=0.5,
        metadata={
            "help": "share of the (deduplicated) retain texts only the gate reads, never a loss or the selector; the "
            "rest is what graddiff / contrastive_retain may use (all of it goes to the gate when they use none)."
        },
    )
    audit_fraction: float = field(
        default=0.25,
        metadata={
            "help": "without --heldout: share of the retain texts neither the gate nor any loss reads, scored before/after "
            "for the report (held-out text the gate never saw)."
        },
    )
    extraction_samples: int = field(default=100, metadata={"help": "n of extraction_probability (attacker's samples)."})
    score_every: int = field(default=1, metadata={"help": "check the forgetting criterion every N optimizer steps."})
    score_batch_size: int = field(default=32, metadata={"help": "sequences per scoring pass."})
    prefix_cache_mb: float = field(
        default=512,
        metadata={"help": "MB of cached hidden states below the lowest block the erasure may write (0: off)."},
    )
    seed: int = field(default=0, metadata={"help": "seed of every random draw (random selector, retain batches)."})
    dtype: str = field(default="float32", metadata={"help": "dtype the model is loaded in by run_erase/CLI."})
    plots: bool = field(default=True, metadata={"help": "write PNG plots next to erasure_report.json."})

    def __post_init__(self):
        # Checks run in this order so that the first error a recipe meets is the same as before the split.
        self._check_choices()
        self._check_counts()
        self._check_ranges()
        self._check_modules()
        self._check_gate()

    def _check_choices(self):
        """The named choices (method, selector, ...) and the components' own settings."""
        # The registries are the one list of methods and selectors (a new loss is one file); imported here
        # because the loss and selector modules import torch and this module is read before anything heavy.
        from obliviate.erasure.losses import LOSSES
        from obliviate.erasure.selectors import SELECTORS

        _one_of("method", self.method, tuple(LOSSES.names()))
        _one_of("selector", self.selector, tuple(SELECTORS.names()))
        # Each loss and selector owns its settings (config_class); the flat keys are aliases of them.
        self.method_args = resolve_args(
            self, LOSSES.get(self.method), "method_args", METHOD_ALIASES, f"method {self.method}"
        )
        self.selector_args = resolve_args(
            self, SELECTORS.get(self.selector), "selector_args", SELECTOR_ALIASES, f"selector {self.selector}"
        )
        _one_of("granularity", self.granularity, GRANULARITIES)
        _one_of("select_scope", self.select_scope, ("global", "per_tensor"))
        _one_of("target", self.target, TARGETS)
        _one_of("thresholds", self.thresholds, THRESHOLD_SOURCES)
        _one_of("criterion", self.criterion, CRITERIA)
        if self.criterion == "set_mean" and self.el_n is None:
            raise EraseConfigError(
                "criterion: set_mean judges the set's mean EL_n, so it needs el_n (e.g. el_n: 10, "
                "as Jang et al.; a small n like 3 for short probes)."
            )
        if self.el_n is not None and (not isinstance(self.el_n, int) or self.el_n < 1):
            raise EraseConfigError(f"el_n must be an integer >= 1 or null; got {self.el_n!r}.")

    def _check_counts(self):
        """The data split fractions, the optimizer, select_fraction and the integer counts."""
        gate, audit = self.gate_fraction, self.audit_fraction
        if not 0 < gate < 1 or not 0 <= audit < 1 or gate + audit > 1:
            raise EraseConfigError(
                f"gate_fraction must be in (0, 1) and audit_fraction in [0, 1) with a sum <= 1; got {gate} and {audit}."
            )
        _one_of("optimizer", self.optimizer, OPTIMIZERS)
        if self.forget_reduction is not None:
            _one_of("forget_reduction", self.forget_reduction, ("token", "sequence"))
        if not 0 < self.select_fraction <= 1:
            raise EraseConfigError(f"select_fraction must be in (0, 1]; got {self.select_fraction}.")
        for name in _COUNT_FIELDS:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise EraseConfigError(f"{name} must be an integer >= 1; got {value!r}.")
        if self.reselect_every is not None and (not isinstance(self.reselect_every, int) or self.reselect_every < 1):
            raise EraseConfigError(f"reselect_every must be an integer >= 1 or null; got {self.reselect_every!r}.")

    def _check_ranges(self):
        """The optimizer's numbers and the forgetting thresholds."""
        if not self.learning_rate > 0:
            raise EraseConfigError(f"learning_rate must be > 0; got {self.learning_rate}.")
        if not self.lr_recovery >= 1:
            raise EraseConfigError(f"lr_recovery must be >= 1 (1 = keep a backed-off lr); got {self.lr_recovery}.")
        if self.max_grad_norm is not None and not self.max_grad_norm > 0:
            raise EraseConfigError(f"max_grad_norm must be > 0 or null; got {self.max_grad_norm}.")
        if self.weight_decay < 0:
            raise EraseConfigError(f"weight_decay must be >= 0; got {self.weight_decay}.")
        if not self.prefix_cache_mb >= 0:
            raise EraseConfigError(f"prefix_cache_mb must be >= 0 (0 turns the cache off); got {self.prefix_cache_mb}.")
        if not (0 <= self.adam_beta1 < 1 and 0 <= self.adam_beta2 < 1):
            raise EraseConfigError("adam_beta1 and adam_beta2 must be in [0, 1).")
        limits = (self.max_memorization_accuracy, self.max_extraction_probability, self.max_extraction_likelihood)
        if not all(0 <= v <= 1 for v in (*limits, self.extraction_probability_floor)):
            raise EraseConfigError(
                "max_memorization_accuracy, max_extraction_probability, max_extraction_likelihood "
                "and extraction_probability_floor must be in [0, 1]."
            )
        if self.control_quantile is not None and not (
            isinstance(self.control_quantile, (int, float)) and 0 < self.control_quantile <= 1
        ):
            raise EraseConfigError(
                f"control_quantile must be in (0, 1] or null (the mean); got {self.control_quantile!r}."
            )

    def _check_modules(self):
        """target_modules (normalized to a list of valid regexes) and the lora section."""
        if isinstance(self.target_modules, str):
            self.target_modules = [self.target_modules]
        if self.target_modules is not None and (
            not isinstance(self.target_modules, (list, tuple))
            or not all(isinstance(m, str) for m in self.target_modules)
        ):
            raise EraseConfigError(
                f"target_modules must be a regex, a list of regexes or null; got {self.target_modules!r}."
            )
        if self.target_modules is not None:
            import re

            for pattern in self.target_modules:
                try:
                    re.compile(pattern)
                except re.error as e:
                    raise EraseConfigError(f"target_modules: {pattern!r} is not a valid regex ({e}).") from None
            self.target_modules = list(self.target_modules)
        if not isinstance(self.lora, dict):
            raise EraseConfigError(f"lora must be a mapping of peft.LoraConfig fields; got {self.lora!r}.")
        if self.target == "lora":
            self.lora_config()  # unknown LoraConfig keys fail here, before any model is loaded

    def _check_gate(self):
        """The gate section (its keys checked now, not mid-run) and the utility list."""
        if isinstance(self.gate, str) and self.gate != "default":
            raise EraseConfigError(f"gate must be a mapping, 'default' or null; got {self.gate!r}.")
        if self.gate is not None and not isinstance(self.gate, (str, dict)):
            raise EraseConfigError(f"gate must be a mapping, 'default' or null; got {type(self.gate).__name__}.")
        if isinstance(self.gate, dict):
            from obliviate.benchmarks.gate import GateConfig
            from obliviate.config import from_dict

            gate = from_dict(GateConfig, self.gate, "the gate section")  # key and schedule errors now, not mid-run
            if gate.reference and not self.reference_model:
                raise EraseConfigError(
                    "gate.reference: true needs reference_model: the model the fine-tuning started from (a name "
                    "or path), whose scores of the gate's text are the gate's second anchor."
                )
        if self.utility is not None and not isinstance(self.utility, list):
            raise EraseConfigError("utility must be a list of benchmark entries or null.")

    def lora_config(self):
        """The ``peft.LoraConfig`` of ``target: lora`` (task type CAUSAL_LM)."""
        from peft import LoraConfig

        from obliviate.config import check_keys

        fields = {f.name for f in dataclasses.fields(LoraConfig) if f.init} - {"task_type"}
        check_keys(self.lora, fields, "the lora section")
        return LoraConfig(task_type="CAUSAL_LM", **self.lora)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
