"""Turning per-weight scores into a selection: top ``select_fraction`` at element, row or tensor granularity.

    python -c "from obliviate.erasure.selectors.base import select_top; help(select_top)"

Units are ranked by score (summed over the unit for ``row`` and ``tensor``) and taken best-first
until they hold ``ceil(select_fraction * candidates)`` elements, so every granularity updates about
the same number of weights. A row is a slice along dim 0 of the stored tensor (an output row of
``nn.Linear``, an input row of GPT-2's ``Conv1D``, one token of an embedding); each element of a
1-D tensor (bias, norm) is its own row.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar

import torch


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


def _unit_size(param: torch.Tensor, granularity: str) -> int:
    if granularity == "element" or param.dim() <= 1:
        return 1
    if granularity == "row":
        return param[0].numel()
    return param.numel()


def select_top(unit_scores: dict[str, torch.Tensor], params: dict[str, torch.Tensor], fraction: float,
               granularity: str, scope: str = "global") -> Selection:
    """Pick the best-scoring units until they hold ``fraction`` of the candidate elements.

    Args:
        unit_scores: one score per unit of each candidate parameter (see :func:`unit_scores`).
        params: the candidate parameters, by name.
        fraction: share of candidate elements to select, in (0, 1].
        granularity: ``element``, ``row`` or ``tensor``.
        scope: ``global`` ranks every unit of every tensor together; ``per_tensor`` takes ``fraction`` of each
            tensor separately (so no layer's large gradients crowd out the rest; ``tensor`` granularity is global).

    Returns:
        The :class:`Selection`; a tensor whose every element is selected is marked whole (None).
    """
    names = list(unit_scores)
    if scope == "per_tensor" and granularity != "tensor":
        parts = [select_top({n: unit_scores[n]}, params, fraction, granularity) for n in names]
        return Selection({n: i for part in parts for n, i in part.indices.items()},
                         sum(part.candidates for part in parts),
                         {n: c for part in parts for n, c in part.counts.items()})
    total = sum(params[n].numel() for n in names)
    target = max(1, math.ceil(fraction * total))
    flat = torch.cat([unit_scores[n].float().reshape(-1).to("cpu") for n in names])
    sizes = torch.cat([torch.full((unit_scores[n].numel(),), _unit_size(params[n], granularity), dtype=torch.long)
                       for n in names])
    if granularity == "element":
        chosen = torch.topk(flat, min(target, flat.numel()), sorted=False).indices
    else:
        # stable sort: ties go to the earlier unit, so the selection is deterministic
        order = torch.sort(flat, descending=True, stable=True).indices
        cumulative = sizes[order].cumsum(0)
        last = int(torch.searchsorted(cumulative, torch.tensor(target)).clamp(max=len(order) - 1))
        chosen = order[:last + 1]
    mask = torch.zeros(flat.numel(), dtype=torch.bool)
    mask[chosen] = True
    indices, counts, offset = {}, {}, 0
    for n in names:
        units = unit_scores[n].numel()
        picked = mask[offset:offset + units].nonzero().squeeze(-1)
        offset += units
        if picked.numel() == 0:
            continue
        p = params[n]
        size = _unit_size(p, granularity)
        if picked.numel() * size == p.numel():
            indices[n], counts[n] = None, p.numel()
            continue
        if size > 1:
            picked = (picked[:, None] * size + torch.arange(size)[None, :]).reshape(-1)
        indices[n], counts[n] = picked.sort().values.to(p.device), int(picked.numel())
    return Selection(indices, total, counts)


class Selector:
    """Scores candidate weights; ``needs`` names the gradients it uses (``loss``: of the erasure loss,
    ``nll``: of the forget suffix's mean NLL)."""

    name: ClassVar[str] = ""
    needs: ClassVar[tuple[str, ...]] = ()

    def __init__(self, config):
        self.config = config

    def element_scores(self, params: dict[str, torch.Tensor], grads: dict[str, dict[str, torch.Tensor]]
                       ) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def unit_scores(self, params: dict[str, torch.Tensor], grads: dict[str, dict[str, torch.Tensor]],
                    generator: torch.Generator) -> dict[str, torch.Tensor]:
        """One score per unit of the configured granularity (higher = select first)."""
        scores = self.element_scores(params, grads)
        return {n: _units(s, self.config.granularity) for n, s in scores.items()}

    def select(self, params: dict[str, torch.Tensor], grads: dict[str, dict[str, torch.Tensor]],
               generator: torch.Generator) -> Selection:
        """The selection over ``params`` (the candidates), from ``grads`` (see ``needs``)."""
        scores = self.unit_scores(params, grads, generator)
        return select_top(scores, params, self.config.select_fraction, self.config.granularity,
                          self.config.select_scope)
