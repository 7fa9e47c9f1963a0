"""``memorization``: the forget set's own memorization scores, reported beside utility (never gated).

    obliviate bench --model runs/toy/base --config recipes/utility.yaml --out runs/toy/utility

``data`` is a probes JSONL or a ``flagged.jsonl`` (read with
:func:`~obliviate.data.flagged.read_flagged`, which checks the token ids against the tokenizer), a
:class:`~obliviate.data.ProbeSet`, or a list of probe rows. Scores are the flat keys of
:func:`~obliviate.metrics.sets.summarize_scores` over :func:`~obliviate.metrics.score_probes` rows
(``extraction_rate``, ``canary/extraction_rate``, ``auc/min_k``, ...): lower means more forgotten.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from obliviate.benchmarks.base import BenchmarkConfig, BenchmarkError, UtilityBenchmark
from obliviate.benchmarks.registry import register_benchmark
from obliviate.data import ProbeSet, load_probes
from obliviate.data.flagged import read_flagged
from obliviate.metrics import SamplingConfig, score_probes
from obliviate.metrics.sets import summarize_scores


@dataclass
class MemorizationConfig(BenchmarkConfig):
    """Options of the ``memorization`` benchmark."""

    roles: list | None = field(default=None, metadata={"help": "keep only probes of these roles (default: all)."})
    min_k: float = field(default=0.2, metadata={"help": "fraction of tokens for Min-K% and Min-K%++."})
    samples: int = field(default=100, metadata={"help": "n of extraction_probability (attacker's samples)."})
    truncate: bool = field(default=False, metadata={"help": "left-truncate prefixes that overflow the context."})


@register_benchmark("memorization")
class Memorization(UtilityBenchmark):
    """Set-level memorization of the forget set (``summarize_scores`` keys); reported, not gated."""

    config_class = MemorizationConfig
    primary = "extraction_rate"
    gated = False
    config: MemorizationConfig

    def load(self) -> None:
        data = self.config.data
        if data is None:
            raise BenchmarkError("memorization needs `data:`: a probes JSONL or flagged.jsonl (the forget set).")
        if isinstance(data, str) and not Path(data).is_file():
            raise FileNotFoundError(
                f"memorization data file {data} does not exist (relative paths start at {Path.cwd()})."
            )

    def direction(self, score: str) -> str | None:
        return None if score.startswith("count/") else "lower"

    def tokenize(self, tokenizer) -> None:
        data = self.config.data
        if isinstance(data, ProbeSet):
            probes = data
        elif isinstance(data, str):
            probes = read_flagged(data, tokenizer)
        else:
            probes = load_probes(list(data), tokenizer)
        if self.config.roles is not None:
            probes = probes.by_role(*self.config.roles)
        if not len(probes):
            raise BenchmarkError(
                f"memorization data {data if isinstance(data, str) else ''} has no probes "
                f"with roles {self.config.roles}."
            )
        self.probes = probes

    def compute(self, model, tokenizer) -> dict[str, float]:
        rows = score_probes(
            model,
            tokenizer,
            self.probes,
            batch_size=self.config.batch_size,
            min_k=self.config.min_k,
            sampling=SamplingConfig(n=self.config.samples),
            truncate=self.config.truncate,
        )
        self.last_rows = rows
        return {k: float(v) for k, v in summarize_scores(rows).items()}
