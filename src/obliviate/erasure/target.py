"""Where an erasure writes: the model on its device (wrapped in a new LoRA adapter for ``target: lora``),
and the candidate parameters a selector may choose from.

    python -c "from obliviate.erasure.target import prepare_target; help(prepare_target)"
"""

from __future__ import annotations

import re

import torch


def prepare_target(model, config, device) -> tuple[torch.nn.Module, dict[str, torch.nn.Parameter], dict[str, bool]]:
    """Move ``model`` to ``device``, wrap it for ``target: lora``, put it in eval mode and freeze every parameter.

    Args:
        model: the causal LM to erase from.
        config: the :class:`~obliviate.erasure.EraseConfig` (``target``, ``lora``, ``target_modules``).
        device: where to run.

    Returns:
        ``(model, candidates, requires_grad)``: the model erased (a ``PeftModel`` for lora), the floating-point
        parameters matching ``target_modules`` (for lora, the adapter's), and every parameter's original
        ``requires_grad`` (put back when the erasure ends).

    Raises:
        ValueError: lora on a model that already is a PEFT model, or ``target_modules`` matching nothing.
    """
    model.to(device)
    if config.target == "lora":
        from peft import PeftModel, get_peft_model

        if isinstance(model, PeftModel):
            raise ValueError(
                "target: lora needs a plain model, got a PEFT model; merge its adapter first "
                "(model.merge_and_unload()) or erase with target: full."
            )
        model = get_peft_model(model, config.lora_config())
    model.eval()  # no dropout: the loop is deterministic, so a resumed run ends where an uninterrupted one does
    named = dict(model.named_parameters())
    requires_grad = {n: p.requires_grad for n, p in named.items()}
    patterns = config.target_modules
    candidates = {
        n: p
        for n, p in named.items()
        if p.is_floating_point()
        and (config.target != "lora" or p.requires_grad)
        and (patterns is None or any(re.search(pat, n) for pat in patterns))
    }
    if not candidates:
        raise ValueError(
            f"target_modules {patterns} matched no parameter; names look like {', '.join(list(named)[:4])} …"
        )
    for p in named.values():
        p.requires_grad_(False)
    return model, candidates, requires_grad
