"""``multiple_choice``: log-likelihood scoring of choices, as lm-evaluation-harness does it.

    obliviate bench --model runs/toy/base --config recipes/utility.yaml --out runs/toy/utility

Rows are ``{"context", "choices", "label"}`` (label = index of the right choice). Each choice is
scored by the summed log-likelihood of its tokens given the context; the prediction is the argmax.
Scores (higher is better), matching lm-eval 0.4's ``multiple_choice`` output type:

- ``acc``: argmax of the summed log-likelihood;
- ``acc_norm``: argmax of log-likelihood / len(choice) in characters (lm-eval's ``acc_norm``);
- ``acc_bytes``: argmax of log-likelihood / len(choice) in UTF-8 bytes (lm-eval's ``acc_bytes``).

Tokenization follows lm-eval's ``LM._encode_pair`` for causal models: trailing whitespace of the
context moves to the continuation, context+continuation is encoded whole and split after the
context's own encoding (so a merge across the boundary goes to the continuation); an empty context
becomes the BOS token (EOS when there is none). Choice text is appended as is (``target_delimiter``
defaults to ``""``: write the leading space into the choices, as the toy data does).

Truncation follows lm-eval's ``HFLM._loglikelihood_tokens`` for causal models: the last token of the
continuation is never fed to the model (its logit would predict nothing), so a pair fits a window of
L positions when context + continuation <= L + 1 tokens; longer pairs keep the window
``(context + continuation)[-(L + 1):][:-1]``, i.e. the most recent L + 1 - len(continuation) context tokens.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

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
from obliviate.metrics.scorer import model_device
from obliviate.metrics.teacher_forced import token_statistics


@dataclass
class MultipleChoiceConfig(BenchmarkConfig):
    """Options of the ``multiple_choice`` benchmark."""

    target_delimiter: str = field(
        default="", metadata={"help": "text between context and each choice (lm-eval task YAMLs default to ' ')."}
    )
    max_samples: int | None = field(default=None, metadata={"help": "use a fixed random sample of this many rows."})
    seed: int = field(default=0, metadata={"help": "seed of the max_samples sample."})
    truncate: bool = field(
        default=True,
        metadata={
            "help": "drop the oldest context tokens when context+choice "
            "overflows the model, keeping lm-eval's window "
            "(context+choice)[-(L+1):][:-1]; false raises."
        },
    )

    def __post_init__(self):
        super().__post_init__()
        if self.max_samples is not None and self.max_samples < 1:
            raise ValueError(f"max_samples must be >= 1 or null, got {self.max_samples}")


def encode_pair(tokenizer, context: str, continuation: str, prefix_token_id: int) -> tuple[list[int], list[int]]:
    """Context and continuation token ids split the way lm-eval's ``_encode_pair`` does for causal LMs."""
    if context == "":
        cont = encode(tokenizer, continuation, special=False)
        if cont and cont[0] == prefix_token_id:
            return cont[:1], cont[1:]
        return [prefix_token_id], cont
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        context, continuation = context[:-n_spaces], context[-n_spaces:] + continuation
    whole = encode(tokenizer, context + continuation)
    context_ids = encode(tokenizer, context)
    return context_ids, whole[len(context_ids) :]


@register_benchmark("multiple_choice")
class MultipleChoice(UtilityBenchmark):
    """lm-eval-style multiple-choice accuracy from a local JSONL; scores ``acc``, ``acc_norm``, ``acc_bytes``."""

    config_class = MultipleChoiceConfig
    directions = {"acc": "higher", "acc_norm": "higher", "acc_bytes": "higher"}
    primary = "acc"
    config: MultipleChoiceConfig

    def load(self) -> None:
        rows = read_rows(self.config.data, ("context", "choices", "label"), "multiple_choice")
        for where, row in rows:
            choices, label = row["choices"], row["label"]
            if not isinstance(row["context"], str):
                raise BenchmarkError(f"{where}: 'context' must be a string, got {type(row['context']).__name__}.")
            if not isinstance(choices, list) or not choices:
                raise BenchmarkError(f"{where}: 'choices' must be a non-empty list of strings, got {choices!r}.")
            bad = [c for c in choices if not isinstance(c, str) or c == ""]
            if bad:
                raise BenchmarkError(f"{where}: every choice must be a non-empty string; got {bad[0]!r}.")
            if isinstance(label, bool) or not isinstance(label, int):
                raise BenchmarkError(f"{where}: 'label' must be the integer index of the right choice, got {label!r}.")
            if not 0 <= label < len(choices):
                raise BenchmarkError(
                    f"{where}: label {label} is out of range for {len(choices)} choices (valid: 0..{len(choices) - 1})."
                )
        keep = fixed_sample(len(rows), self.config.max_samples, self.config.seed)
        self.rows = [rows[i] for i in keep]

    def tokenize(self, tokenizer) -> None:
        ensure_pad_token(tokenizer)
        self.pad_token_id = tokenizer.pad_token_id
        prefix_token_id = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        # Every (context, choice) pair of every row, flat, so scoring batches across rows.
        self.pairs: list[tuple[list[int], list[int]]] = []
        for where, row in self.rows:
            for choice in row["choices"]:
                context_ids, choice_ids = encode_pair(
                    tokenizer, row["context"], self.config.target_delimiter + choice, prefix_token_id
                )
                if not choice_ids:
                    raise BenchmarkError(f"{where}: choice {choice!r} tokenizes to nothing after the context.")
                self.pairs.append((context_ids, choice_ids))
        self._fitted: dict[int | None, tuple[list[list[int]], list[list[int]], dict[int, list[int]]]] = {}

    def _inputs(self, max_length: int | None) -> tuple[list[list[int]], list[list[int]], dict[int, list[int]]]:
        """Prefixes and suffixes of the pairs the scorer can feed whole (<= L tokens), and lm-eval's
        L-token window (all but the last token) of every other pair, by pair index."""
        if max_length not in self._fitted:
            prefixes, suffixes, windows = [], [], {}
            for k, ((context_ids, choice_ids), where) in enumerate(zip(self.pairs, self._pair_where())):
                total = len(context_ids) + len(choice_ids)
                if max_length is not None and total > max_length:
                    if len(choice_ids) > max_length or (total > max_length + 1 and not self.config.truncate):
                        raise BenchmarkError(
                            f"{where}: context+choice is {total} tokens (choice {len(choice_ids)}), "
                            f"longer than the model's context of {max_length}"
                            f"{'' if self.config.truncate else '; set truncate: true'}."
                        )
                    windows[k] = (context_ids + choice_ids)[-(max_length + 1) :][:-1]
                prefixes.append(context_ids)
                suffixes.append(choice_ids)
            self._fitted[max_length] = (prefixes, suffixes, windows)
        return self._fitted[max_length]

    def _pair_where(self):
        for where, row in self.rows:
            for _ in row["choices"]:
                yield where

    def _window_log_likelihoods(self, model, windows: dict[int, list[int]]) -> dict[int, float]:
        """Summed log-likelihood of each overflowing pair's choice from its lm-eval window (all L tokens long)."""
        out: dict[int, float] = {}
        keys = list(windows)
        was_training = model.training
        model.eval()
        try:
            for start in range(0, len(keys), self.config.batch_size):
                batch = keys[start : start + self.config.batch_size]
                ids = torch.tensor([windows[k] for k in batch], device=model_device(model))
                with torch.inference_mode():
                    logits = model(input_ids=ids, use_cache=False).logits
                for row, k in enumerate(batch):
                    # The window ends one token short of the choice: its last m logits predict the m choice tokens.
                    choice = self.pairs[k][1]
                    targets = torch.tensor(choice, device=logits.device)
                    stats = token_statistics(logits[row, -len(choice) :], targets)
                    out[k] = stats["target_log_prob"].double().sum().item()
        finally:
            model.train(was_training)
        return out

    def log_likelihoods(self, model) -> list[list[float]]:
        """Summed log-likelihood of each choice given its context, per row (one batched pass over all pairs)."""
        prefixes, suffixes, windows = self._inputs(context_length(model))
        fits = [k for k in range(len(prefixes)) if k not in windows]
        flat = [0.0] * len(prefixes)
        if fits:
            scores = score_sequences(
                model,
                [prefixes[k] for k in fits],
                [suffixes[k] for k in fits],
                self.pad_token_id,
                batch_size=self.config.batch_size,
            )
            for k, value in zip(fits, scores["suffix_log_prob"].double().tolist()):
                flat[k] = value
        for k, value in self._window_log_likelihoods(model, windows).items():
            flat[k] = value
        out, start = [], 0
        for _, row in self.rows:
            out.append(flat[start : start + len(row["choices"])])
            start += len(row["choices"])
        return out

    def compute(self, model, tokenizer) -> dict[str, float]:
        lls = self.log_likelihoods(model)
        hits = {"acc": 0, "acc_norm": 0, "acc_bytes": 0}
        predictions = []
        for (_, row), ll in zip(self.rows, lls):
            chars = [len(c) for c in row["choices"]]
            nbytes = [len(c.encode("utf-8")) for c in row["choices"]]
            # First index on ties, as numpy.argmax (which lm-eval uses) picks.
            pred = {
                "acc": max(range(len(ll)), key=lambda i: (ll[i], -i)),
                "acc_norm": max(range(len(ll)), key=lambda i: (ll[i] / chars[i], -i)),
                "acc_bytes": max(range(len(ll)), key=lambda i: (ll[i] / nbytes[i], -i)),
            }
            for name, index in pred.items():
                hits[name] += int(index == row["label"])
            predictions.append(pred)
        self.last_log_likelihoods, self.last_predictions = lls, predictions
        return {name: count / len(self.rows) for name, count in hits.items()}
