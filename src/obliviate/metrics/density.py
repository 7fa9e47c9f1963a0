"""Training-data density around each probe (LMD3, Kirchenbauer et al. 2024).

    python -c "from obliviate.metrics.density import probe_density; help(probe_density)"

Memorization follows density: a sequence with many near-duplicates in the training set is learned
far sooner than an isolated one. Each text is embedded as the attention-masked mean of a model's
last hidden states (any causal LM or encoder; the scored model by default), and the training set's
Gaussian kernel density is evaluated at every probe:

    log f(x) = logsumexp_i(-||x - x_i||^2 / (2 h^2)) - log N - (d/2) log(2 pi h^2)

with bandwidth h by Scott's (n^(-1/(d+4)) sigma) or Silverman's ((4/(d+2))^(1/(d+4)) n^(-1/(d+4)) sigma)
rule, sigma the root mean per-dimension variance of the training embeddings, or a given h. With
``leave_one_out`` a probe that is itself in the training set does not count its own copy (other
copies, e.g. a canary repeated 8 times, still do).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from obliviate.data.probes import ensure_pad_token
from obliviate.metrics.scorer import model_device

BANDWIDTH_RULES = ("scott", "silverman")
# Distance (in embedding units) under which a training point is taken to be the probe itself.
SELF_DISTANCE = 1e-4


@dataclass
class DensityConfig:
    """Embedding and kernel settings of :func:`probe_density`."""

    bandwidth: float | str = field(default="scott", metadata={"help": "scott, silverman, or a positive float"})
    normalize: bool = field(default=True, metadata={"help": "L2-normalize embeddings (cosine geometry)"})
    leave_one_out: bool = field(default=True, metadata={"help": "drop one exact copy of the probe itself"})
    batch_size: int = field(default=32, metadata={"help": "texts per forward pass"})
    max_length: int | None = field(default=None, metadata={"help": "truncate texts to this many tokens"})

    def __post_init__(self):
        if isinstance(self.bandwidth, str) and self.bandwidth not in BANDWIDTH_RULES:
            try:
                self.bandwidth = float(self.bandwidth)
            except ValueError:
                raise ValueError(
                    f"bandwidth must be one of {BANDWIDTH_RULES} or a positive number, got {self.bandwidth!r}"
                ) from None
        if not isinstance(self.bandwidth, str) and not self.bandwidth > 0:
            raise ValueError(f"bandwidth must be > 0, got {self.bandwidth}")


@torch.inference_mode()
def embed_texts(
    model,
    tokenizer,
    texts: Sequence[str],
    batch_size: int = 32,
    max_length: int | None = None,
    progress: bool | str = False,
) -> torch.Tensor:
    """``(N, d)`` float32 CPU embeddings: attention-masked mean of the last hidden states.

    Args:
        model: a causal LM or base model returning hidden states.
        tokenizer: its tokenizer (pads on the right; the mask keeps padding out of the mean).
        texts: the texts to embed.
        batch_size: texts per forward pass.
        max_length: truncate longer texts (default: the model's context).
        progress: show a progress bar.
    """
    ensure_pad_token(tokenizer)
    from obliviate.metrics.scorer import context_length

    max_length = max_length or context_length(model)
    was_training = model.training
    model.eval()
    device = model_device(model)
    out = []
    try:
        for start in tqdm(
            range(0, len(texts), batch_size),
            desc=progress if isinstance(progress, str) else "embedding",
            disable=not progress,
            leave=False,
        ):
            enc = tokenizer(
                list(texts[start : start + batch_size]),
                padding=True,
                truncation=max_length is not None,
                max_length=max_length,
                return_tensors="pt",
                padding_side="right",
            )
            mask = enc["attention_mask"].to(device)
            output = model(input_ids=enc["input_ids"].to(device), attention_mask=mask, output_hidden_states=True)
            hidden = output.hidden_states[-1].float()
            weights = mask.unsqueeze(-1).float()
            out.append(((hidden * weights).sum(1) / weights.sum(1).clamp_min(1)).cpu())
    finally:
        model.train(was_training)
    return torch.cat(out) if out else torch.zeros(0, 0)


def bandwidth_rule(train: torch.Tensor, rule: str = "scott") -> float:
    """Isotropic Gaussian-kernel bandwidth for ``(n, d)`` points by Scott's or Silverman's rule of thumb."""
    n, d = train.shape
    sigma = train.double().var(0, unbiased=n > 1).mean().sqrt().item()
    if rule == "scott":
        factor = n ** (-1.0 / (d + 4))
    elif rule == "silverman":
        factor = (4.0 / (d + 2)) ** (1.0 / (d + 4)) * n ** (-1.0 / (d + 4))
    else:
        raise ValueError(f"unknown bandwidth rule {rule!r}; use one of {BANDWIDTH_RULES}.")
    return max(sigma * factor, 1e-12)


def kernel_log_density(
    train: torch.Tensor, points: torch.Tensor, bandwidth: float, leave_one_out: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Log Gaussian KDE of ``train`` at each of ``points`` and each point's distance to its nearest training point.

    With ``leave_one_out``, one training point within :data:`SELF_DISTANCE` of a point (its own copy) is left out.
    """
    train, points = train.double(), points.double()
    n, d = train.shape
    sq = torch.cdist(points, train).square()
    nearest = sq.min(-1)
    count = torch.full((points.shape[0],), float(n), dtype=torch.float64)
    if leave_one_out:
        own = nearest.values.sqrt() < SELF_DISTANCE
        sq[own, nearest.indices[own]] = math.inf
        count = count - own.double()
    log_kernel = torch.logsumexp(-sq / (2 * bandwidth**2), dim=-1)
    log_density = log_kernel - count.clamp_min(1).log() - 0.5 * d * math.log(2 * math.pi * bandwidth**2)
    return log_density, sq.min(-1).values.sqrt()


def probe_density(
    model,
    tokenizer,
    probe_texts: Sequence[str],
    train_texts: Sequence[str],
    config: DensityConfig | None = None,
    progress: bool | str = False,
) -> dict:
    """Training-set density at each probe, in an embedding space of ``model``.

    Args:
        model: the embedding model (e.g. the scored model, or its base).
        tokenizer: its tokenizer.
        probe_texts: full text of each probe (prefix + suffix).
        train_texts: the training set's texts (repeated rows count each time).
        config: :class:`DensityConfig`.
        progress: show progress bars.

    Returns:
        ``{"log_density": Tensor (M,), "nearest_distance": Tensor (M,), "bandwidth": float}``; higher
        ``log_density`` = more training data nearby.
    """
    config = config or DensityConfig()
    if not train_texts:
        raise ValueError("the density training set is empty; give the texts the model was fine-tuned on.")
    kwargs = dict(batch_size=config.batch_size, max_length=config.max_length)
    train = embed_texts(model, tokenizer, train_texts, progress=progress and "embedding training set", **kwargs)
    points = embed_texts(model, tokenizer, probe_texts, progress=progress and "embedding probes", **kwargs)
    if config.normalize:
        train = torch.nn.functional.normalize(train, dim=-1)
        points = torch.nn.functional.normalize(points, dim=-1)
    h = bandwidth_rule(train, config.bandwidth) if isinstance(config.bandwidth, str) else float(config.bandwidth)
    log_density, nearest = kernel_log_density(train, points, h, config.leave_one_out)
    return {"log_density": log_density.float(), "nearest_distance": nearest.float(), "bandwidth": h}
