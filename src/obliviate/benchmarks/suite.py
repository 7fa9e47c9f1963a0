"""``UtilitySuite``: several benchmarks run on one model, and ``BenchConfig`` for the ``bench`` recipe.

    obliviate bench --model runs/toy/base --config recipes/utility.yaml --out runs/toy/utility

Results are ``{benchmark_label: {score_name: value}}`` (the ``utility.json`` format); a benchmark's
label is its entry's ``label`` if given, else its ``name``. Each benchmark tokenizes its data once
and keeps it, so running the suite again (as the gate does after every erasure step) costs only
the model's forward passes.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from tqdm.auto import tqdm

from obliviate.benchmarks.base import BenchmarkError, UtilityBenchmark
from obliviate.config import check_keys, load_recipe


def check_entries(entries: Any, where: str) -> list[dict]:
    """Validate the shape of a ``benchmarks:`` list (mappings with a ``name``)."""
    if not isinstance(entries, (list, tuple)) or not entries:
        raise BenchmarkError(
            f"{where} needs `benchmarks:`, a non-empty list like "
            "[{name: perplexity, data: retain.jsonl}, {name: multiple_choice, data: mc.jsonl}]."
        )
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or "name" not in entry:
            raise BenchmarkError(f"{where}: benchmarks[{i}] must be a mapping with a `name:` key, got {entry!r}.")
    return [dict(e) for e in entries]


def check_entry_keys(entry: dict, where: str, extra: Iterable[str] = ()) -> None:
    """Unknown keys of one entry (its benchmark's config fields, ``name``, and ``extra``) fail now, naming
    the nearest valid key, before any model or data is loaded."""
    from obliviate.benchmarks.registry import get_benchmark

    klass = get_benchmark(entry["name"])
    check_keys(entry, {*klass.config_class.__dataclass_fields__, "name", *extra}, where)


@dataclass
class BenchConfig:
    """The ``bench`` recipe: which benchmarks to run (``obliviate bench --config``)."""

    benchmarks: list = field(
        default_factory=list,
        metadata={"help": "entries {name, data, label?, ...}; name is one of obliviate.benchmarks.BENCHMARKS."},
    )

    def __post_init__(self):
        self.benchmarks = check_entries(self.benchmarks, "the bench recipe")
        for i, entry in enumerate(self.benchmarks):
            check_entry_keys(entry, f"benchmark {entry['name']!r} (benchmarks[{i}])")


class UtilitySuite:
    """Benchmarks run together on the same model.

    Args:
        benchmarks: built benchmarks; their labels must be unique.
    """

    def __init__(self, benchmarks: Iterable[UtilityBenchmark]):
        self.benchmarks: list[UtilityBenchmark] = list(benchmarks)
        labels = [b.label for b in self.benchmarks]
        duplicates = sorted({x for x in labels if labels.count(x) > 1})
        if duplicates:
            raise BenchmarkError(f"two benchmarks are named {duplicates[0]!r}; give each a distinct `label:`.")
        self.last_seconds: dict[str, float] = {}

    @classmethod
    def from_config(cls, entries: list[dict] | BenchConfig, tokenizer=None) -> UtilitySuite:
        """Build from recipe entries ``[{name, data, ...}]`` (tokenized now when ``tokenizer`` is given).

        Raises:
            BenchmarkError / RecipeError / FileNotFoundError: an unknown benchmark name (listing the known
                ones), an unknown key (naming the nearest valid one), a missing file or bad rows.
        """
        if isinstance(entries, BenchConfig):
            entries = entries.benchmarks
        entries = check_entries(entries, "the benchmark suite")
        return cls(
            UtilityBenchmark.from_entry(entry, tokenizer, where=f"(benchmarks[{i}])") for i, entry in enumerate(entries)
        )

    @classmethod
    def from_recipe(cls, path: str | os.PathLike, tokenizer=None) -> UtilitySuite:
        """Build from a ``bench`` recipe YAML (top-level keys: the fields of :class:`BenchConfig`)."""
        return cls.from_config(load_recipe(path, BenchConfig), tokenizer)

    def __iter__(self) -> Iterator[UtilityBenchmark]:
        return iter(self.benchmarks)

    def __len__(self) -> int:
        return len(self.benchmarks)

    def __getitem__(self, label: str) -> UtilityBenchmark:
        for benchmark in self.benchmarks:
            if benchmark.label == label:
                return benchmark
        raise KeyError(f"no benchmark labelled {label!r} in the suite; labels: {', '.join(self.labels)}.")

    @property
    def labels(self) -> list[str]:
        return [b.label for b in self.benchmarks]

    def run(
        self, model, tokenizer=None, labels: Iterable[str] | None = None, progress: bool = False
    ) -> dict[str, dict[str, float]]:
        """Run every benchmark (or those in ``labels``) on ``model``.

        Args:
            model: the causal LM to score (its train/eval mode is restored after each benchmark).
            tokenizer: defaults to the tokenizer each benchmark was built with.
            labels: run only these benchmarks.
            progress: show a progress bar over benchmarks.

        Returns:
            ``{benchmark_label: {score_name: value}}``.
        """
        chosen = self.benchmarks if labels is None else [self[label] for label in labels]
        results = {}
        for benchmark in tqdm(chosen, desc="benchmarks", disable=not progress, leave=False):
            results[benchmark.label] = benchmark.run(model, tokenizer)
            self.last_seconds[benchmark.label] = benchmark.last_seconds
        return results

    def directions(self, results: dict[str, dict[str, float]]) -> dict[str, dict[str, str | None]]:
        """``{label: {score: "lower" | "higher" | None}}`` for the scores in ``results``."""
        return {label: {score: self[label].direction(score) for score in scores} for label, scores in results.items()}
