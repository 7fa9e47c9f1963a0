"""``perplexity``: token-weighted perplexity of ``{"text"}`` JSONL rows (retain or held-out text).

    obliviate bench --model runs/toy/base --config recipes/utility.yaml --out runs/toy/utility

perplexity = exp(total NLL / total predicted tokens) over the whole file: every token after each
row's first is predicted from the tokens before it, so long rows weigh more than short ones (a mean
of per-row perplexities would let one short row dominate). Log-likelihoods come from
:func:`obliviate.metrics.score_sequences`, the same pass every other score uses.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from obliviate.benchmarks.base import (
    BenchmarkConfig,
    BenchmarkError,
    UtilityBenchmark,
    encode,
    fixed_sample,
    read_rows,
)
from obliviate.benchmarks.registry import register_benchmark
from obliviate.data.probes import ensure_pad_token
from obliviate.metrics import context_length, score_sequences


@dataclass
class PerplexityConfig(BenchmarkConfig):
    """Options of the ``perplexity`` benchmark."""

    text_key: str = field(default="text", metadata={"help": "the field holding each row's text."})
    max_samples: int | None = field(default=None, metadata={"help": "score a fixed random sample of this many rows."})
    seed: int = field(default=0, metadata={"help": "seed of the max_samples sample (the same rows every run)."})
    truncate: bool = field(default=False, metadata={"help": "keep the first context-length tokens of longer rows "
                                                            "instead of raising."})

    def __post_init__(self):
        super().__post_init__()
        if self.max_samples is not None and self.max_samples < 1:
            raise ValueError(f"max_samples must be >= 1 or null, got {self.max_samples}")


@register_benchmark("perplexity")
class Perplexity(UtilityBenchmark):
    """Token-weighted perplexity; scores ``perplexity`` and ``loss`` (mean NLL per token, nats), both lower-better."""

    config_class = PerplexityConfig
    directions = {"perplexity": "lower", "loss": "lower"}
    primary = "perplexity"
    config: PerplexityConfig

    def load(self) -> None:
        rows = read_rows(self.config.data, (self.config.text_key,), "perplexity")
        keep = fixed_sample(len(rows), self.config.max_samples, self.config.seed)
        self.rows = [rows[i] for i in keep]
        for where, row in self.rows:
            if not isinstance(row[self.config.text_key], str):
                raise BenchmarkError(f"{where}: {self.config.text_key!r} must be a string, got "
                                     f"{type(row[self.config.text_key]).__name__}.")

    def tokenize(self, tokenizer) -> None:
        ensure_pad_token(tokenizer)
        self.pad_token_id = tokenizer.pad_token_id
        encoded = [(where, encode(tokenizer, row[self.config.text_key])) for where, row in self.rows]
        # A one-token row predicts nothing: it adds zero tokens to the token-weighted mean, so leave it out.
        self.encoded = [(where, ids) for where, ids in encoded if len(ids) >= 2]
        if not self.encoded:
            raise BenchmarkError(f"perplexity data {self.config.data}: no row has two or more tokens, so there is "
                                 "nothing to predict.")
        self._fitted: dict[int | None, tuple[list[list[int]], list[list[int]]]] = {}

    def _inputs(self, max_length: int | None) -> tuple[list[list[int]], list[list[int]]]:
        """First token as the prefix and the rest as the scored suffix, fitted to the context once."""
        if max_length not in self._fitted:
            prefixes, suffixes = [], []
            for where, ids in self.encoded:
                if max_length is not None and len(ids) > max_length:
                    if not self.config.truncate:
                        raise BenchmarkError(f"{where}: the text is {len(ids)} tokens, longer than the model's "
                                             f"context of {max_length}. Split it, or set `truncate: true`.")
                    ids = ids[:max_length]
                prefixes.append(ids[:1])
                suffixes.append(ids[1:])
            self._fitted[max_length] = (prefixes, suffixes)
        return self._fitted[max_length]

    def compute(self, model, tokenizer) -> dict[str, float]:
        prefixes, suffixes = self._inputs(context_length(model))
        scores = score_sequences(model, prefixes, suffixes, self.pad_token_id, batch_size=self.config.batch_size)
        total_log_prob = scores["suffix_log_prob"].double().sum().item()
        tokens = int(scores["suffix_length"].sum().item())
        self.last_token_count = tokens
        loss = -total_log_prob / tokens
        # A ruined model can reach a loss past exp's float range; that is an infinite perplexity, not an error.
        perplexity = math.exp(loss) if loss < 700 else math.inf
        return {"perplexity": perplexity, "loss": loss}
