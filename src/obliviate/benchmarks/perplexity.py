"""``perplexity``: token-weighted perplexity of ``{"text"}`` JSONL rows (retain or held-out text).

    obliviate bench --model runs/toy/base --config recipes/utility.yaml --out runs/toy/utility

perplexity = exp(total NLL / total predicted tokens) over the whole file: every token after each
row's first is predicted from the tokens before it, so long rows weigh more than short ones (a mean
of per-row perplexities would let one short row dominate). Log-likelihoods come from
:func:`obliviate.metrics.score_sequences`, the same pass every other score uses.

``completion_only: true`` reads ``{"prompt", "completion"}`` rows and scores only the completion's
tokens given the prompt (what SFT on prompt/completion data trains): the prompt's own tokens, often
a fixed template, would otherwise dominate the mean.
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
    truncate: bool = field(
        default=False, metadata={"help": "keep the first context-length tokens of longer rows instead of raising."}
    )
    completion_only: bool = field(
        default=False,
        metadata={
            "help": "rows are {prompt, completion}: score the completion's tokens given the prompt, not the prompt's."
        },
    )
    prompt_key: str = field(default="prompt", metadata={"help": "completion_only: the prompt field."})
    completion_key: str = field(default="completion", metadata={"help": "completion_only: the completion field."})

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

    @property
    def _keys(self) -> tuple[str, ...]:
        c = self.config
        return (c.prompt_key, c.completion_key) if c.completion_only else (c.text_key,)

    def load(self) -> None:
        rows = read_rows(self.config.data, self._keys, self.name or "perplexity")
        keep = fixed_sample(len(rows), self.config.max_samples, self.config.seed)
        self.rows = [rows[i] for i in keep]
        for where, row in self.rows:
            for key in self._keys:
                if not isinstance(row[key], str):
                    raise BenchmarkError(f"{where}: {key!r} must be a string, got {type(row[key]).__name__}.")

    def _encode(self, tokenizer, row: dict) -> tuple[list[int], int]:
        """The row's token ids and how many leading ones are context (1, or the prompt's length)."""
        if not self.config.completion_only:
            return encode(tokenizer, row[self.config.text_key]), 1
        prompt, completion = row[self.config.prompt_key], row[self.config.completion_key]
        head, full = encode(tokenizer, prompt), encode(tokenizer, prompt + completion)
        if full[: len(head)] == head and len(full) > len(head):
            return full, len(head)
        # The boundary merged into one token: tokenize the two parts apart (as SFT on prompt/completion does).
        return head + encode(tokenizer, completion, special=False), len(head)

    def tokenize(self, tokenizer) -> None:
        ensure_pad_token(tokenizer)
        self.pad_token_id = tokenizer.pad_token_id
        encoded = [(where, *self._encode(tokenizer, row)) for where, row in self.rows]
        # A row with nothing after its context predicts nothing: it adds zero tokens to the token-weighted
        # mean, so leave it out.
        self.encoded = [(where, ids, head) for where, ids, head in encoded if 1 <= head < len(ids)]
        if not self.encoded:
            raise BenchmarkError(
                f"{self.name} data {self.config.data}: no row has a token to predict (every row is "
                "one token, or an empty completion)."
            )
        self._fitted: dict[int | None, tuple[list[list[int]], list[list[int]]]] = {}

    def _inputs(self, max_length: int | None) -> tuple[list[list[int]], list[list[int]]]:
        """First token (or the prompt) as the prefix and the rest as the scored suffix, fitted to the context once."""
        if max_length not in self._fitted:
            prefixes, suffixes = [], []
            for where, ids, head in self.encoded:
                if max_length is not None and len(ids) > max_length:
                    if not self.config.truncate or head >= max_length:
                        raise BenchmarkError(
                            f"{where}: the text is {len(ids)} tokens, longer than the model's "
                            f"context of {max_length}. Split it, or set `truncate: true`."
                        )
                    ids = ids[:max_length]
                prefixes.append(ids[:head])
                suffixes.append(ids[head:])
            self._fitted[max_length] = (prefixes, suffixes)
        return self._fitted[max_length]

    def compute(self, model, tokenizer) -> dict[str, float]:
        prefixes, suffixes = self._inputs(context_length(model))
        scores = score_sequences(
            model, prefixes, suffixes, self.pad_token_id, batch_size=self.config.batch_size, moments=False
        )
        total_log_prob = scores["suffix_log_prob"].double().sum().item()
        tokens = int(scores["suffix_length"].sum().item())
        self.last_token_count = tokens
        loss = -total_log_prob / tokens
        # A ruined model can reach a loss past exp's float range; that is an infinite perplexity, not an error.
        perplexity = math.exp(loss) if loss < 700 else math.inf
        return {"perplexity": perplexity, "loss": loss}
