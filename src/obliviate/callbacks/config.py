"""``TrackConfig``: the ``tracking:`` section of a track recipe (the callback's settings).

python -c "from obliviate.callbacks import TrackConfig; print(TrackConfig(every_n_steps=25))"
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from obliviate.callbacks.budget import MemorizationBudget
from obliviate.callbacks.flagging import FlagRule
from obliviate.metrics import METRIC_NAMES, SamplingConfig

HISTORY_METRICS = (*METRIC_NAMES, "suffix_log_prob", "suffix_length")


class TrackingError(ValueError):
    """The callback cannot track this run as configured; the message says what to change."""


@dataclass
class TrackConfig:
    """How :class:`~obliviate.callbacks.MemorizationCallback` scores, flags and budgets during SFT."""

    every_n_steps: int | None = field(
        default=100,
        metadata={
            "help": "Score the probes every this many optimizer steps (global_step); null "
            "for none. 208 probes every 100 steps cost ~3.4% of toy SFT time."
        },
    )
    every_epoch: bool = field(default=False, metadata={"help": "Also score at the end of every epoch."})
    score_on_start: bool = field(
        default=False,
        metadata={
            "help": "Also score, flag and log before the first step. The flag rule's baseline "
            "(step-0 scores) is taken at train begin whether or not this is set."
        },
    )
    batch_size: int = field(default=32, metadata={"help": "Probes per forward pass."})
    prefix_cache_mb: float = field(
        default=256,
        metadata={
            "help": "MB of cached probe hidden states below the lowest trainable block (frozen blocks run once "
            "per probe, not at every scoring); 0: off. Off by itself under FSDP/DeepSpeed."
        },
    )
    max_probes: int | None = field(
        default=512,
        metadata={
            "help": "run_track keeps at most this many probes: members are subsampled (seeded), "
            "canaries and controls always kept. null keeps all."
        },
    )
    metrics: list[str] | None = field(
        default=None, metadata={"help": "Per-probe metrics kept in history.jsonl; null keeps all of them."}
    )
    samples: int = field(default=100, metadata={"help": "n of extraction_probability: the attacker's samples."})
    temperature: float = field(default=1.0, metadata={"help": "Attacker's sampling temperature."})
    top_k: int | None = field(default=None, metadata={"help": "Attacker's top-k (null: none)."})
    top_p: float | None = field(default=None, metadata={"help": "Attacker's top-p (null: none)."})
    min_k: float = field(default=0.2, metadata={"help": "Fraction of tokens for Min-K% and Min-K%++."})
    include_eos: bool = field(
        default=False, metadata={"help": "Probes built from SFT rows keep the eos TRL appends to completions."}
    )
    prefix_tokens: int = field(default=32, metadata={"help": "Prefix length of probes built from text rows."})
    suffix_tokens: int = field(default=32, metadata={"help": "Suffix length of probes built from text rows."})
    reference_model: str | None = field(
        default=None,
        metadata={
            "help": "Model for reference_ratio and the flag rule's baseline (instead of the "
            "step-0 scores): a path, or 'base' for the model before SFT. Doubles "
            "the scoring cost."
        },
    )
    flag_rule: Any = field(default_factory=FlagRule, metadata={"help": "FlagRule fields (a mapping)."})
    budget: Any = field(
        default_factory=MemorizationBudget,
        metadata={"help": "MemorizationBudget fields (a mapping); empty: no limits."},
    )

    def __post_init__(self):
        # The one place these settings are checked: a recipe's tracking: section and
        # MemorizationCallback(every_n_steps=...) both come through here.
        from obliviate.config import section

        self.flag_rule = section(FlagRule, self.flag_rule, "flag_rule")
        self.budget = section(MemorizationBudget, self.budget, "budget")
        if self.every_n_steps is not None and (
            not isinstance(self.every_n_steps, int) or isinstance(self.every_n_steps, bool) or self.every_n_steps < 1
        ):
            raise TrackingError(
                f"every_n_steps must be a positive number of optimizer steps (or None/null to score "
                f"only per epoch and at the end), got {self.every_n_steps!r}."
            )
        if self.max_probes is not None and self.max_probes < 1:
            raise TrackingError(f"max_probes must be >= 1 or null, got {self.max_probes}")
        if not isinstance(self.batch_size, int) or isinstance(self.batch_size, bool) or self.batch_size < 1:
            raise TrackingError(f"batch_size must be a positive integer, got {self.batch_size!r}.")
        if self.metrics is not None:
            unknown = [m for m in self.metrics if m not in HISTORY_METRICS]
            if unknown:
                raise TrackingError(f"unknown metrics {unknown}; choose from {', '.join(HISTORY_METRICS)}.")
        if not (isinstance(self.prefix_cache_mb, (int, float)) and self.prefix_cache_mb >= 0):
            raise TrackingError(f"prefix_cache_mb must be >= 0 (0: off), got {self.prefix_cache_mb!r}.")
        if not 0 < self.min_k <= 1:
            raise TrackingError(f"min_k must be in (0, 1], got {self.min_k}")
        if self.prefix_tokens < 1 or self.suffix_tokens < 1:
            raise TrackingError("prefix_tokens and suffix_tokens must be >= 1")
        self.sampling  # noqa: B018 -- validates the sampling fields now, not at the first scoring

    @property
    def sampling(self) -> SamplingConfig:
        return SamplingConfig(n=self.samples, temperature=self.temperature, top_k=self.top_k, top_p=self.top_p)

    def to_dict(self) -> dict:
        return asdict(self)


UNSET = object()
"""A keyword of :class:`MemorizationCallback` left out (None is a value: ``every_n_steps=None``)."""


def track_config(config: TrackConfig | None, **keywords) -> TrackConfig:
    """``config``, or a :class:`TrackConfig` of the keywords given; both at once is an error, not a merge."""
    given = {k: v for k, v in keywords.items() if v is not UNSET}
    if config is not None:
        if given:
            raise TrackingError(
                f"{', '.join(given)} given both as keywords and in config=TrackConfig(...): set each "
                "setting in one place (dataclasses.replace(config, ...) changes a config)."
            )
        if not isinstance(config, TrackConfig):
            raise TrackingError(f"config must be a TrackConfig, got {type(config).__name__}.")
        return config
    sampling = given.pop("sampling", None)
    if sampling is not None:  # TrackConfig keeps the attacker's sampling as four recipe keys
        given.update(samples=sampling.n, temperature=sampling.temperature, top_k=sampling.top_k, top_p=sampling.top_p)
    return TrackConfig(**given)
