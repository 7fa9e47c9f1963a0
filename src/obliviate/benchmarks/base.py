"""The :class:`UtilityBenchmark` interface every benchmark implements, and its data helpers.

    python -c "from obliviate.benchmarks.base import UtilityBenchmark; help(UtilityBenchmark)"

A benchmark reads and validates its data when it is built (so a bad file fails before any model
is loaded), tokenizes once per tokenizer and keeps the result (the gate re-runs it after every
erasure step), and returns named float scores, each with a direction: ``lower`` or ``higher``
is better.
"""

from __future__ import annotations

import json
import os
import random
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch

from obliviate.config import from_dict

DIRECTIONS = ("lower", "higher")


class BenchmarkError(ValueError):
    """Bad benchmark input: the message names the file, line or key and what to do."""


@dataclass
class BenchmarkConfig:
    """Options every benchmark accepts; each benchmark extends this with its own fields."""

    data: Any = field(
        default=None, metadata={"help": "JSONL path (relative to the working directory) or a list of row dicts."}
    )
    label: str | None = field(
        default=None, metadata={"help": "name of this entry in results (default: the benchmark name)."}
    )
    batch_size: int = field(default=16, metadata={"help": "sequences per forward pass."})

    def __post_init__(self):
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if isinstance(self.data, os.PathLike):
            self.data = str(self.data)


def read_rows(source: str | os.PathLike | list[dict], required: tuple[str, ...], what: str) -> list[tuple[str, dict]]:
    """Rows of a JSONL file (or a list of dicts) as ``(where, row)`` pairs, ``where`` = ``file:line``.

    Raises:
        FileNotFoundError: the file does not exist.
        BenchmarkError: invalid JSON, a row that is not an object or lacks a ``required`` key, or no rows.
    """
    if source is None:
        raise BenchmarkError(f"{what} needs `data:` (a JSONL file with {', '.join(required)} rows).")
    if isinstance(source, (list, tuple)):
        pairs = [(f"row {n}", row) for n, row in enumerate(source, 1)]
        label = "the rows given"
    else:
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(
                f"{what} data file {path} does not exist (relative paths start at "
                f"{Path.cwd()}). For the toy model, `obliviate toy --out runs/toy` writes them."
            )
        pairs, label = [], str(path)
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    pairs.append((f"{path}:{n}", json.loads(line)))
                except json.JSONDecodeError as e:
                    raise BenchmarkError(f"{path}:{n}: not valid JSON ({e.msg}).") from None
    for where, row in pairs:
        if not isinstance(row, dict):
            raise BenchmarkError(
                f"{where}: expected a JSON object with {', '.join(required)}, got {type(row).__name__}."
            )
        missing = [k for k in required if k not in row]
        if missing:
            raise BenchmarkError(
                f"{where}: missing {', '.join(map(repr, missing))}; {what} rows need {', '.join(required)}."
            )
    if not pairs:
        raise BenchmarkError(f"{label} has no rows: {what} needs at least one {{{', '.join(required)}}} row.")
    return pairs


def fixed_sample(n: int, max_samples: int | None, seed: int) -> list[int]:
    """Indices of a deterministic sample of ``max_samples`` out of ``n`` (all of them, in order, when None)."""
    if max_samples is None or max_samples >= n:
        return list(range(n))
    return sorted(random.Random(seed).sample(range(n), max_samples))


def encode(tokenizer, text: str, special: bool = True) -> list[int]:
    return list(tokenizer(text, add_special_tokens=special)["input_ids"])


class UtilityBenchmark(ABC):
    """A utility benchmark: named float scores of a model, each lower- or higher-is-better.

    Subclasses set ``config_class``, ``directions`` (score -> ``"lower"``/``"higher"``), ``primary`` (the
    score a gate tolerance applies to by default) and ``gated``, and implement :meth:`load` (read and
    validate data), :meth:`tokenize` (cached per tokenizer) and :meth:`compute`.

    Args:
        config: the benchmark's config dataclass (or pass its fields as keyword arguments).
        tokenizer: when given, data is tokenized now, so the first :meth:`run` costs no tokenization.
    """

    name: ClassVar[str] = ""
    config_class: ClassVar[type[BenchmarkConfig]] = BenchmarkConfig
    directions: ClassVar[dict[str, str]] = {}
    primary: ClassVar[str | None] = None
    gated: ClassVar[bool] = True

    def __init__(self, config: BenchmarkConfig | None = None, tokenizer=None, **kwargs):
        if config is None:
            config = self.config_class(**kwargs)
        elif kwargs:
            raise TypeError("pass either a config or keyword fields, not both")
        self.config = config
        self.tokenize_calls = 0
        self.last_seconds = 0.0
        self._tokenizer = None  # the tokenizer run() uses when given none
        self._cached_for = None  # the tokenizer whose encoding the cache holds
        self.load()
        if tokenizer is not None:
            self.prepare(tokenizer)

    @classmethod
    def from_entry(cls, entry: dict[str, Any], tokenizer=None, where: str = "") -> UtilityBenchmark:
        """Build from a recipe entry ``{name, data, ...}``; unknown keys raise naming the nearest valid one."""
        from obliviate.benchmarks.registry import get_benchmark

        entry = dict(entry)
        name = entry.pop("name", None)
        if name is None:
            raise BenchmarkError(f"benchmark entry {where}{entry} has no `name:`; add one, e.g. name: perplexity.")
        klass = get_benchmark(name) if cls is UtilityBenchmark else cls
        config = from_dict(klass.config_class, entry, f"benchmark {name!r}{' ' + where if where else ''}")
        return klass(config, tokenizer)

    @property
    def label(self) -> str:
        """The key of this benchmark in results: the entry's ``label``, else its ``name``."""
        return self.config.label or self.name

    def direction(self, score: str) -> str | None:
        """``"lower"`` or ``"higher"`` (is better) for ``score``; None when not known before a run."""
        return self.directions.get(score)

    @property
    def primary_score(self) -> str | None:
        """The score a gate tolerance applies to when it names none; None when known only after a run."""
        return self.primary

    def load(self) -> None:  # noqa: B027 - optional hook: not every benchmark has data to read
        """Read and validate the data (no tokenizer needed); raise early on bad input."""

    def tokenize(self, tokenizer) -> None:  # noqa: B027 - optional hook: lm_eval tokenizes inside lm-eval
        """Tokenize the data for ``tokenizer`` and keep it on ``self``; called once per tokenizer."""

    def prepare(self, tokenizer) -> None:
        """Tokenize for ``tokenizer`` unless the cache already holds that tokenizer's encoding."""
        if tokenizer is None:
            raise BenchmarkError(f"benchmark {self.label!r} needs a tokenizer: pass one to run() or at construction.")
        if tokenizer is not self._cached_for:
            self.tokenize(tokenizer)
            self._cached_for = tokenizer
            self.tokenize_calls += 1
        self._tokenizer = tokenizer

    def clear_cache(self) -> None:
        """Forget the cached tokenization (the next run tokenizes again, with the same tokenizer)."""
        self._cached_for = None

    @property
    def tokenizer(self):
        return self._tokenizer

    @abstractmethod
    def compute(self, model, tokenizer) -> dict[str, float]:
        """Scores of ``model``; the data is already tokenized for ``tokenizer`` and the model is in eval mode."""

    def run(self, model, tokenizer=None) -> dict[str, float]:
        """Score ``model`` (eval mode during the run, its train/eval mode restored after).

        Args:
            model: a causal LM on its device.
            tokenizer: its tokenizer; defaults to the one given at construction (whose encoding is cached).

        Returns:
            ``{score_name: value}``.
        """
        tokenizer = tokenizer if tokenizer is not None else self._tokenizer
        self.prepare(tokenizer)
        was_training = model.training
        model.eval()
        start = time.perf_counter()
        try:
            with torch.inference_mode():
                scores = self.compute(model, tokenizer)
        finally:
            model.train(was_training)
            self.last_seconds = time.perf_counter() - start
        return {k: float(v) for k, v in scores.items()}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(label={self.label!r}, data={self.config.data!r})"
