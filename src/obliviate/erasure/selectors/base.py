"""Turning per-weight scores into a selection: top ``select_fraction`` at element, row or tensor granularity.

    python -c "from obliviate.erasure.selectors.base import select_top; help(select_top)"

Units are ranked by score (summed over the unit for ``row`` and ``tensor``) and taken best-first
until they hold ``ceil(select_fraction * candidates)`` elements, so every granularity updates about
the same number of weights; ties go to the earlier unit (parameter order, then index). A row is a
slice along dim 0 of the stored tensor (an output row of ``nn.Linear``, an input row of GPT-2's
``Conv1D``, one token of an embedding); each element of a 1-D tensor (bias, norm) is its own row.
The ranking streams tensor by tensor (:mod:`obliviate.erasure.selection`): no index over all weights.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar

import torch

from obliviate.erasure.config import component_args
from obliviate.erasure.selection import ShardGroup, order_keys_, top_units


@dataclass
class Selection:
    """Which entries of which parameters are updated: flat sorted indices, or None for the whole tensor."""

    indices: dict[str, torch.Tensor | None]
    candidates: int
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def selected(self) -> int:
        return sum(self.counts.values())


def _units(score: torch.Tensor, granularity: str) -> torch.Tensor:
    if granularity == "element":
        return score.reshape(-1)
    if granularity == "row":
        return score.reshape(score.shape[0], -1).sum(-1) if score.dim() > 1 else score.reshape(-1)
    return score.sum().reshape(1)


def unit_count(shape: torch.Size | tuple[int, ...], granularity: str) -> int:
    """How many selection units a tensor of ``shape`` has: elements, rows (dim 0; 1-D tensors: elements) or 1."""
    if granularity == "element" or (granularity == "row" and len(shape) <= 1):
        return int(torch.Size(shape).numel())
    return int(shape[0]) if granularity == "row" else 1


def _unit_size(param: torch.Tensor, granularity: str) -> int:
    if granularity == "tensor":
        return param.numel()  # a 1-D tensor too is one unit (it was counted as a single element before)
    if granularity == "element" or param.dim() <= 1:
        return 1
    return param[0].numel()


def select_top(
    unit_scores: dict[str, torch.Tensor],
    params: dict[str, torch.Tensor],
    fraction: float,
    granularity: str,
    scope: str = "global",
    group: ShardGroup | None = None,
    consume: bool = False,
) -> Selection:
    """Pick the best-scoring units until they hold ``fraction`` of the candidate elements.

    Args:
        unit_scores: one score per unit of each candidate parameter (see :meth:`Selector.unit_scores`).
        params: the candidate parameters, by name (this rank's shards when ``group`` spans processes).
        fraction: share of candidate elements to select, in (0, 1].
        granularity: ``element``, ``row`` or ``tensor``.
        scope: ``global`` ranks every unit of every tensor together; ``per_tensor`` takes ``fraction`` of each
            tensor separately (so no layer's large gradients crowd out the rest; ``tensor`` granularity is global).
        group: processes holding shards of the parameters, ranked together under one threshold (default: one).
        consume: the score tensors may be overwritten (the selector's own buffers: saves a copy of every score).

    Returns:
        The :class:`Selection`; a tensor whose every element is selected is marked whole (None).
    """
    group = group or ShardGroup()
    names = list(unit_scores)
    keys = {}
    for n in names:
        score = unit_scores.pop(n) if consume else unit_scores[n]
        flat = score.detach().reshape(-1).to("cpu", torch.float32)
        shared = flat.data_ptr() == score.data_ptr()
        keys[n] = order_keys_(flat.clone() if shared and not consume else flat)
        del score, flat
    sizes = {n: _unit_size(params[n], granularity) for n in names}
    groups = [[n] for n in names] if scope == "per_tensor" and granularity != "tensor" else [names]
    indices, counts, total = {}, {}, 0
    for part in groups:
        count = group.all_reduce(torch.tensor(sum(params[n].numel() for n in part), dtype=torch.long)).item()
        total += count
        chosen = top_units({n: keys[n] for n in part}, sizes, max(1, math.ceil(fraction * count)), group)
        for n, picked in chosen.items():
            p, size = params[n], sizes[n]
            if picked.numel() * size == p.numel():
                indices[n], counts[n] = None, p.numel()
                continue
            if size > 1:
                picked = (picked[:, None] * size + torch.arange(size)[None, :]).reshape(-1)
            indices[n], counts[n] = picked.to(p.device), int(picked.numel())
        for n in part:
            del keys[n]  # free each tensor's keys as soon as its part is decided
    return Selection(indices, total, counts)


class Selector:
    """Scores candidate weights from gradient *streams*.

    ``streams`` maps a stream name to the loss-term kinds it sums, with coefficients (kinds: ``loss``, the
    erasure loss; ``nll``, the forget suffix's mean NLL; ``retain_nll``, the retained text's NLL);
    :meth:`element_score` folds one parameter's stream gradients into its score and may reuse them.
    """

    name: ClassVar[str] = ""
    config_class: ClassVar[type | None] = None
    """The dataclass of this selector's own settings (the recipe's ``selector_args``); None: it has none."""

    def __init__(self, config):
        self.config = config
        self.args = component_args(self.config_class, getattr(config, "selector_args", None))
        self.streams: dict[str, dict[str, float]] = {}

    @property
    def needs(self) -> tuple[str, ...]:
        """The loss-term kinds whose gradients the streams use, in order."""
        return tuple(dict.fromkeys(kind for combo in self.streams.values() for kind in combo))

    def element_score(self, name: str, grads: dict[str, torch.Tensor]) -> torch.Tensor:
        """The per-element score of parameter ``name`` from its stream gradients (may overwrite them)."""
        raise NotImplementedError

    def unit_scores(
        self, params: dict[str, torch.Tensor], grads: dict[str, dict[str, torch.Tensor]], generator: torch.Generator
    ) -> dict[str, torch.Tensor]:
        """One score per unit of the configured granularity (higher = select first).

        Pops each parameter's gradients out of ``grads`` as it is scored, so they are freed one tensor at a time.
        """
        scores = {}
        for n in params:
            parts = {s: grads[s].pop(n) for s in grads}
            scores[n] = _units(self.element_score(n, parts), self.config.granularity)
            del parts
        return scores

    def select(
        self,
        params: dict[str, torch.Tensor],
        grads: dict[str, dict[str, torch.Tensor]],
        generator: torch.Generator,
        group: ShardGroup | None = None,
    ) -> Selection:
        """The selection over ``params`` (the candidates), from the stream gradients ``grads`` (consumed)."""
        scores = self.unit_scores(params, grads, generator)
        return select_top(
            scores,
            params,
            self.config.select_fraction,
            self.config.granularity,
            self.config.select_scope,
            group,
            consume=True,
        )
