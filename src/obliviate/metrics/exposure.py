"""Canary exposure (Carlini et al. 2019, "The Secret Sharer").

    python -c "from obliviate.metrics.exposure import parse_format; print(parse_format('digits:6').size)"

exposure = log2 |R| - log2 rank(canary), where R is every string of the canary's format (for
``digits:6``: the 10^6 PINs " d d d d d d" that ``data/synthetic.py`` writes) and candidates are
ranked by log-perplexity given the canary's prefix, rank 1 = lowest. Exposure log2 |R| means the
model ranks the real secret first among all candidates; ~1 bit means it does not know it.

Exact: every candidate of R is scored through :func:`~obliviate.metrics.score_sequences`, in
chunks, when |R| <= ``exact_limit`` (10^6 by default). Estimated: a skew-normal is fitted to the
log-perplexities of ``samples`` (>= 5,000) uniformly drawn candidates and the rank is |R| times its
CDF at the canary's log-perplexity (Carlini et al. §4.3 use the same extrapolation).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
from tqdm.auto import tqdm

from obliviate.data.probes import Probe, ProbeSet, ensure_pad_token
from obliviate.metrics.scorer import score_sequences

RANK_BY = ("log_perplexity", "loss")


@dataclass(frozen=True)
class SecretFormat:
    """A finite candidate space: ``length`` slots, each one of ``alphabet``, joined and led as written.

    Candidate ``i`` is ``i`` written in base ``len(alphabet)``, most significant slot first, so the
    index of ``digits`` secrets is the PIN itself.
    """

    spec: str
    alphabet: tuple[str, ...]
    length: int = 1
    separator: str = " "
    lead: str = " "

    @property
    def size(self) -> int:
        return len(self.alphabet) ** self.length

    def render(self, index: int) -> str:
        base, slots = len(self.alphabet), []
        for _ in range(self.length):
            index, digit = divmod(index, base)
            slots.append(self.alphabet[digit])
        return self.lead + self.separator.join(reversed(slots))

    def index(self, secret: str) -> int:
        """The candidate index of ``secret``; ValueError when it is not in this format."""
        body = secret[len(self.lead) :]
        slots = body.split(self.separator) if self.length > 1 else [body]
        lookup = {s: i for i, s in enumerate(self.alphabet)}
        if not secret.startswith(self.lead) or len(slots) != self.length or any(s not in lookup for s in slots):
            example = self.render(min(12345, self.size - 1))
            raise ValueError(f"secret {secret!r} is not in format {self.spec!r} (candidates look like {example!r}).")
        value = 0
        for s in slots:
            value = value * len(self.alphabet) + lookup[s]
        return value


def _digits(arg: str) -> SecretFormat:
    if not arg.isdigit() or int(arg) < 1:
        raise ValueError(f"digits format needs a positive length, e.g. 'digits:6'; got 'digits:{arg}'.")
    return SecretFormat(f"digits:{arg}", tuple("0123456789"), int(arg))


def _choices(arg: str) -> SecretFormat:
    # Each choice is one whole candidate completion, written as-is (include its leading space).
    options = tuple(arg.split("|"))
    if len(options) < 2 or len(set(options)) != len(options):
        raise ValueError(
            f"choices format needs >= 2 distinct '|'-separated candidates, e.g. 'choices: red| blue'; "
            f"got 'choices:{arg}'."
        )
    return SecretFormat(f"choices:{arg}", options, 1, separator="", lead="")


FORMATS: dict[str, Callable[[str], SecretFormat]] = {"digits": _digits, "choices": _choices}
"""Format registry: ``"<name>:<argument>"`` -> :class:`SecretFormat`. Add entries to support new formats."""


def parse_format(spec: str | dict | SecretFormat) -> SecretFormat:
    """A :class:`SecretFormat` from ``"digits:6"``, ``"choices: red| blue| green"`` or
    ``{"type": "choices", "choices": [...]}`` / ``{"type": "digits", "length": 6}``."""
    if isinstance(spec, SecretFormat):
        return spec
    if isinstance(spec, dict):
        kind = spec.get("type")
        if kind == "choices":
            return _choices("|".join(spec.get("choices", [])))
        if kind == "digits":
            return _digits(str(spec.get("length", "")))
        raise ValueError(f"unknown secret format type {kind!r}; use one of {', '.join(FORMATS)}.")
    name, _, arg = str(spec).partition(":")
    if name not in FORMATS:
        raise ValueError(f"unknown secret format {spec!r}; use one of {', '.join(f'{n}:...' for n in FORMATS)}.")
    return FORMATS[name](arg)


@dataclass
class ExposureConfig:
    """How to rank a canary among its candidate space."""

    exact_limit: int = field(default=1_000_000, metadata={"help": "enumerate R exactly when |R| <= this"})
    samples: int = field(default=5000, metadata={"help": "candidates sampled for the skew-normal fit (>= 5000)"})
    batch_size: int = field(default=256, metadata={"help": "sequences per forward pass"})
    chunk_size: int = field(default=16384, metadata={"help": "candidates tokenized and scored per chunk"})
    rank_by: str = field(
        default="log_perplexity",
        metadata={"help": "log_perplexity (sum of -log p over the secret's tokens, Carlini et al.) or loss (its mean)"},
    )
    seed: int = field(default=0, metadata={"help": "seed of the sampled candidates"})

    def __post_init__(self):
        if self.exact_limit < 0:
            raise ValueError(f"exact_limit must be >= 0, got {self.exact_limit}")
        if self.samples < 5000:
            raise ValueError(f"samples must be >= 5000 for a stable skew-normal fit, got {self.samples}")
        if self.rank_by not in RANK_BY:
            raise ValueError(f"rank_by must be one of {RANK_BY}, got {self.rank_by!r}")
        if self.batch_size < 1 or self.chunk_size < 1:
            raise ValueError("batch_size and chunk_size must be >= 1")


def candidate_scores(
    model,
    tokenizer,
    prefix_ids: list[int],
    candidates: Sequence[str],
    config: ExposureConfig,
    progress: bool | str = False,
) -> np.ndarray:
    """Ranking score (lower = more likely) of each candidate completion after ``prefix_ids``, float64."""
    out = []
    chunks = range(0, len(candidates), config.chunk_size)
    for start in tqdm(
        chunks, desc=progress if isinstance(progress, str) else "candidates", disable=not progress, leave=False
    ):
        texts = list(candidates[start : start + config.chunk_size])
        # Tokenized alone, without special tokens: exactly how a probe's suffix is tokenized.
        suffixes = tokenizer(texts, add_special_tokens=False)["input_ids"]
        scores = score_sequences(
            model, [prefix_ids] * len(texts), suffixes, tokenizer.pad_token_id, batch_size=config.batch_size
        )
        value = -scores["suffix_log_prob"] if config.rank_by == "log_perplexity" else scores["loss"]
        out.append(value.double().numpy())
    return np.concatenate(out) if out else np.zeros(0)


class _Candidates(Sequence):
    """Lazy candidate strings for a list of indices (avoids holding 10^6 strings at once)."""

    def __init__(self, fmt: SecretFormat, indices: Sequence[int]):
        self.fmt, self.indices = fmt, indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, item):
        if isinstance(item, slice):
            return [self.fmt.render(i) for i in self.indices[item]]
        return self.fmt.render(self.indices[item])


def canary_exposure(
    model,
    tokenizer,
    probe: Probe,
    secret_format: str | dict | SecretFormat | None = None,
    config: ExposureConfig | None = None,
    progress: bool | str = False,
) -> dict:
    """Exposure of one canary probe: its suffix is the secret, its prefix the context.

    Args:
        model: causal LM.
        tokenizer: its tokenizer (candidates are tokenized like probe suffixes).
        probe: the canary; its ``suffix`` text (or decoded ``suffix_ids``) must be in the format.
        secret_format: format spec; defaults to ``probe.meta["secret_format"]``.
        config: :class:`ExposureConfig`.
        progress: show a progress bar.

    Returns:
        ``{"id", "exposure", "rank", "space_size", "method": "exact"|"estimated", "score"}``: ``rank`` is
        1 + the number of candidates scored strictly lower (a float when estimated).
    """
    config = config or ExposureConfig()
    ensure_pad_token(tokenizer)
    spec = secret_format if secret_format is not None else probe.meta.get("secret_format")
    if spec is None:
        raise ValueError(f"probe {probe.id!r} has no secret_format; give one (e.g. 'digits:6').")
    fmt = parse_format(spec)
    secret = probe.suffix if probe.suffix is not None else tokenizer.decode(probe.suffix_ids)
    try:
        index = fmt.index(secret)
    except ValueError as e:
        raise ValueError(f"probe {probe.id!r}: {e}") from None
    size = fmt.size
    result = {"id": probe.id, "space_size": size}
    if size <= config.exact_limit:
        scores = candidate_scores(model, tokenizer, probe.prefix_ids, _Candidates(fmt, range(size)), config, progress)
        # The canary's own score comes from the same enumeration, so batching noise cannot reorder it.
        own = scores[index]
        rank = float(1 + np.count_nonzero(scores < own))
        log2_rank = math.log2(rank)
        result.update(method="exact", rank=rank, score=float(own))
    else:
        from scipy import stats

        rng = random.Random(config.seed)
        indices = [rng.randrange(size) for _ in range(config.samples)]
        scores = candidate_scores(model, tokenizer, probe.prefix_ids, _Candidates(fmt, indices), config, progress)
        own = float(candidate_scores(model, tokenizer, probe.prefix_ids, [fmt.render(index)], config)[0])
        shape, loc, scale = stats.skewnorm.fit(scores)
        log_cdf = float(stats.skewnorm.logcdf(own, shape, loc, scale))
        # rank = |R| * CDF, at least 1 (the canary itself is a candidate); kept in log space for huge R.
        log2_rank = max(0.0, math.log2(size) + log_cdf / math.log(2))
        result.update(
            method="estimated",
            rank=2.0 ** min(log2_rank, 1000.0),
            score=own,
            fit={"shape": float(shape), "loc": float(loc), "scale": float(scale)},
        )
    result["exposure"] = math.log2(size) - log2_rank
    return result


def exposures(
    model, tokenizer, probes: ProbeSet, config: ExposureConfig | None = None, progress: bool | str = False
) -> list[dict]:
    """:func:`canary_exposure` for every probe carrying ``meta["secret_format"]`` (any role), in probe order."""
    config = config or ExposureConfig()
    chosen = [p for p in probes if p.meta.get("secret_format")]
    return [
        canary_exposure(model, tokenizer, p, config=config, progress=progress and f"exposure {p.id}")
        for p in tqdm(chosen, desc="exposure", disable=not progress, leave=False)
    ]
