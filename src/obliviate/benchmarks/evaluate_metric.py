"""``evaluate_metric``: greedy generation from prompts, scored by a Hugging Face ``evaluate`` module.

    obliviate bench --model runs/toy/base --config recipes/utility.yaml --out runs/toy/utility

Rows are ``{"prompt", "reference"}`` (keys configurable). Prompts are tokenized once, left-padded
in length-sorted batches and decoded greedily (``do_sample=False``, KV cache); each generation is
cut at the first ``stop`` string. ``metric`` is the name of a module shipped with obliviate
(``exact_match``, ``token_f1``: they load offline) or anything ``evaluate.load`` accepts: a local
path to a metric script, or a hub name when the network is reachable (``rouge``, ``bleu``, ...).
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass, field
from typing import Any

import torch

from obliviate.benchmarks.base import (
    DIRECTIONS,
    BenchmarkConfig,
    BenchmarkError,
    UtilityBenchmark,
    encode,
    fixed_sample,
    read_rows,
)
from obliviate.benchmarks.registry import register_benchmark
from obliviate.data.probes import ensure_pad_token
from obliviate.metrics import context_length


@dataclass
class EvaluateMetricConfig(BenchmarkConfig):
    """Options of the ``evaluate_metric`` benchmark."""

    metric: str = field(
        default="exact_match",
        metadata={
            "help": "shipped metric name (exact_match, token_f1), a local metric path, or a hub name (needs network)."
        },
    )
    metric_kwargs: dict = field(default_factory=dict, metadata={"help": "extra arguments to metric.compute()."})
    prompt_key: str = field(default="prompt", metadata={"help": "the field holding each prompt."})
    reference_key: str = field(default="reference", metadata={"help": "the field holding each reference."})
    max_new_tokens: int = field(default=32, metadata={"help": "tokens generated per prompt at most."})
    stop: list = field(default_factory=lambda: ["\n"], metadata={"help": "cut each generation at the first of these."})
    score: str | None = field(
        default=None,
        metadata={
            "help": "the metric output a gate tolerance applies to by default (default: the metric's first output)."
        },
    )
    direction: str = field(default="higher", metadata={"help": "'higher' or 'lower' is better, for every output."})
    max_samples: int | None = field(default=None, metadata={"help": "use a fixed random sample of this many rows."})
    seed: int = field(default=0, metadata={"help": "seed of the max_samples sample."})

    def __post_init__(self):
        super().__post_init__()
        if self.direction not in DIRECTIONS:
            raise ValueError(f"direction must be one of {DIRECTIONS}, got {self.direction!r}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        if self.max_samples is not None and self.max_samples < 1:
            raise ValueError(f"max_samples must be >= 1 or null, got {self.max_samples}")


_METRICS: dict[str, Any] = {}


def load_metric(name: str):
    """An ``evaluate`` module: a shipped name resolves to its path in the package, anything else goes to ``evaluate.load``.

    Modules are loaded once per process and kept in memory (``keep_in_memory``: no Arrow cache files
    are written per computation, which matters when the gate scores after every step).
    """
    import evaluate

    from obliviate import evaluate_metrics

    target = evaluate_metrics.path(name) if name in evaluate_metrics.SHIPPED else name
    if target not in _METRICS:
        try:
            metric = evaluate.load(target, keep_in_memory=True)
        except Exception as e:  # evaluate raises FileNotFoundError/ConnectionError/ValueError/ImportError by case
            raise BenchmarkError(
                f"cannot load the evaluate metric {name!r} ({type(e).__name__}: {e}). Offline, use "
                f"a shipped metric ({', '.join(evaluate_metrics.SHIPPED)}) or a local metric script "
                "path."
            ) from None
        if metric is None:  # a metric object is falsy (len 0): only None means nothing was loaded
            raise BenchmarkError(f"evaluate.load({target!r}) returned nothing.")
        _METRICS[target] = metric
    return _METRICS[target]


def cut_at_stop(text: str, stop: list[str]) -> str:
    positions = [i for s in stop if s and (i := text.find(s)) >= 0]
    return text[: min(positions)] if positions else text


@register_benchmark("evaluate_metric")
class EvaluateMetric(UtilityBenchmark):
    """Greedy generations scored by an ``evaluate`` module; scores are the module's numeric outputs."""

    config_class = EvaluateMetricConfig
    config: EvaluateMetricConfig

    def load(self) -> None:
        c = self.config
        rows = read_rows(c.data, (c.prompt_key, c.reference_key), "evaluate_metric")
        for where, row in rows:
            for key in (c.prompt_key, c.reference_key):
                if not isinstance(row[key], str):
                    raise BenchmarkError(f"{where}: {key!r} must be a string, got {type(row[key]).__name__}.")
        self.rows = [rows[i] for i in fixed_sample(len(rows), c.max_samples, c.seed)]
        self.metric = load_metric(c.metric)
        self._outputs: list[str] = []

    def direction(self, score: str) -> str | None:
        return self.config.direction

    @property
    def primary_score(self) -> str | None:
        from obliviate import evaluate_metrics

        if self.config.score is not None:
            return self.config.score
        if self.config.metric in evaluate_metrics.SHIPPED:
            return self.config.metric
        return self._outputs[0] if self._outputs else None

    def tokenize(self, tokenizer) -> None:
        ensure_pad_token(tokenizer)
        self.pad_token_id, self.eos_token_id = tokenizer.pad_token_id, tokenizer.eos_token_id
        self.prompt_ids = [encode(tokenizer, row[self.config.prompt_key]) for _, row in self.rows]
        self._batches: dict[int | None, list[tuple[list[int], torch.Tensor, torch.Tensor]]] = {}

    def _left_padded_batches(self, max_length: int | None):
        """(row indices, input_ids, attention_mask) per length-sorted batch, built once per context size."""
        if max_length not in self._batches:
            keep = None if max_length is None else max_length - self.config.max_new_tokens
            if keep is not None and keep < 1:
                raise BenchmarkError(
                    f"max_new_tokens={self.config.max_new_tokens} leaves no room for a prompt in "
                    f"the model's context of {max_length}."
                )
            prompts = [ids[-keep:] if keep is not None else ids for ids in self.prompt_ids]
            order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
            batches = []
            for start in range(0, len(order), self.config.batch_size):
                index = order[start : start + self.config.batch_size]
                width = max(len(prompts[i]) for i in index)
                ids = torch.full((len(index), width), self.pad_token_id, dtype=torch.long)
                mask = torch.zeros((len(index), width), dtype=torch.long)
                for row, i in enumerate(index):
                    ids[row, width - len(prompts[i]) :] = torch.tensor(prompts[i])
                    mask[row, width - len(prompts[i]) :] = 1
                batches.append((index, ids, mask))
            self._batches[max_length] = batches
        return self._batches[max_length]

    def generate(self, model, tokenizer) -> list[str]:
        """Greedy continuations of every prompt, in row order, cut at the stop strings."""
        from tqdm.auto import tqdm
        from transformers import GenerationConfig

        config = GenerationConfig(
            max_new_tokens=self.config.max_new_tokens,
            do_sample=False,
            num_beams=1,
            pad_token_id=self.pad_token_id,
            eos_token_id=self.eos_token_id,
        )
        device = next(model.parameters()).device
        outputs: list[str] = [""] * len(self.rows)
        batches = self._left_padded_batches(context_length(model))
        for index, ids, mask in tqdm(batches, desc="generating", leave=False, disable=len(batches) < 4):
            generated = model.generate(
                input_ids=ids.to(device), attention_mask=mask.to(device), generation_config=config
            )
            texts = tokenizer.batch_decode(generated[:, ids.shape[1] :], skip_special_tokens=True)
            for i, text in zip(index, texts):
                outputs[i] = cut_at_stop(text, self.config.stop)
        return outputs

    def compute(self, model, tokenizer) -> dict[str, float]:
        predictions = self.generate(model, tokenizer)
        references = [row[self.config.reference_key] for _, row in self.rows]
        result: dict[str, Any] = self.metric.compute(
            predictions=predictions, references=references, **self.config.metric_kwargs
        )
        scores = {
            k: float(v) for k, v in (result or {}).items() if isinstance(v, numbers.Real) and not isinstance(v, bool)
        }
        if not scores:
            raise BenchmarkError(f"evaluate metric {self.config.metric!r} returned no numeric score: {result!r}.")
        self._outputs = list(scores)
        self.last_predictions = predictions
        return scores
