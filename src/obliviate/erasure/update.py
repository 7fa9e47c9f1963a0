"""Updating only the selected weights, with optimizer state for the selected entries only.

    python -c "from obliviate.erasure.update import SelectedUpdate; help(SelectedUpdate)"

For ``element``/``row`` selections each touched parameter gets a flat trainable copy of just its
selected entries; the gradient is gathered into it, the optimizer (Adam moments, weight decay)
steps it, and it is scattered back with ``index_copy_``. Unselected entries are never written, so
they stay bitwise identical, and the optimizer state is as large as the selection, not the model.
Whole-tensor selections (``tensor`` granularity, ``all``) are optimized in place.
"""

from __future__ import annotations

import torch

from obliviate.erasure.memory import release_freed_memory
from obliviate.erasure.selectors.base import Selection


class SelectedUpdate:
    """Optimizer over the entries of ``selection`` in ``params``.

    Args:
        params: candidate parameters by name (the model's own tensors).
        selection: what to update.
        config: the :class:`~obliviate.erasure.EraseConfig` (optimizer fields).
        lr: the learning rate to start with.
        accelerator: sums gradients over processes (a no-op with one).
    """

    def __init__(
        self, params: dict[str, torch.nn.Parameter], selection: Selection, config, lr: float, accelerator=None
    ):
        self.selection, self.config, self.accelerator = selection, config, accelerator
        self.entries: list[tuple[str, torch.nn.Parameter, torch.Tensor | None, torch.nn.Parameter]] = []
        for name, idx in selection.indices.items():
            p = params[name]
            if idx is None:
                trainable = p
            else:
                if not p.is_contiguous():
                    raise ValueError(f"parameter {name} is not contiguous; cannot select its entries in place.")
                trainable = torch.nn.Parameter(p.detach().view(-1)[idx].clone())
            self.entries.append((name, p, idx, trainable))
        trainables = [t for *_, t in self.entries]
        if config.optimizer == "sgd":
            self.optimizer = torch.optim.SGD(trainables, lr=lr, weight_decay=config.weight_decay)
        else:
            # AdamW: weight decay is decoupled and, like the moments, exists only for the selected entries.
            self.optimizer = torch.optim.AdamW(
                trainables,
                lr=lr,
                betas=(config.adam_beta1, config.adam_beta2),
                eps=config.adam_epsilon,
                weight_decay=config.weight_decay,
            )

    @property
    def trainables(self) -> list[torch.nn.Parameter]:
        """What the optimizer holds (and what a gate snapshot must copy)."""
        return [t for *_, t in self.entries]

    def enable_grads(self, all_params: dict[str, torch.nn.Parameter]) -> None:
        """Gradients only for parameters with a selected entry (the backward pass skips the rest)."""
        selected = {name for name, *_ in self.entries}
        for name, p in all_params.items():
            p.requires_grad_(name in selected)

    def zero_grad(self) -> None:
        for _, p, _, t in self.entries:
            p.grad = None
            t.grad = None

    def step(self) -> float:
        """Gather, reduce and clip gradients, step, scatter back. Returns the gradient norm before clipping."""
        for _, p, idx, t in self.entries:
            grad = p.grad if p.grad is not None else torch.zeros_like(p)
            if idx is not None:
                grad = grad.reshape(-1)[idx]
            if self.accelerator is not None and self.accelerator.num_processes > 1:
                grad = self.accelerator.reduce(grad.contiguous(), reduction="sum")
            t.grad = grad
            if idx is not None:
                p.grad = None
        norm = torch.nn.utils.clip_grad_norm_(self.trainables, self.config.max_grad_norm or float("inf"))
        self.optimizer.step()
        self.zero_grad()
        self.write_back()
        release_freed_memory()  # the full gradients of this step are freed: return their pages
        return float(norm)

    @torch.no_grad()
    def write_back(self) -> None:
        """Scatter the trainable copies into the weights (also after a gate restore of the copies)."""
        for _, p, idx, t in self.entries:
            if idx is not None:
                p.data.view(-1).index_copy_(0, idx, t.data)

    def state_bytes(self) -> int:
        """Bytes held by the optimizer state (moments, step counters)."""
        total = 0
        for state in self.optimizer.state.values():
            for value in state.values():
                if isinstance(value, torch.Tensor):
                    total += value.numel() * value.element_size()
        return total
