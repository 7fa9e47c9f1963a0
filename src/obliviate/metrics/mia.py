"""Membership scores that need more than the one teacher-forced pass: GradNorm and ReCaLL.

    python -c "from obliviate.metrics.mia import score_gradnorm, score_recall; help(score_gradnorm)"

Both score the probe's suffix given its prefix, as every other score of DESIGN §3 does (mimir and
open-unlearning score the whole text; with a one-token prefix the two agree), and both are
oriented higher = member, so :func:`~obliviate.metrics.sets.summarize_scores` ranks them like the rest
(``auc/gradnorm``, ``auc/recall`` …) once their values are merged into the score rows.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from tqdm.auto import tqdm

from obliviate.data.probes import ProbeError, ProbeSet, ensure_pad_token
from obliviate.metrics.scorer import context_length, model_device, score_sequences
from obliviate.metrics.teacher_forced import collate, suffix_logits

GRAD_AGGREGATES = ("global", "tensor_mean")


def _suffix_nll(model, prefix: list[int], suffix: list[int]) -> torch.Tensor:
    """Differentiable mean NLL of one suffix (the ``loss`` metric), through the scorer's own collation."""
    ids, mask, pos, start = collate([prefix], [suffix], 0)
    device = model_device(model)
    ids, mask, pos, start = (t.to(device) for t in (ids, mask, pos, start))
    logits, targets, _ = suffix_logits(model, ids, mask, pos, start, torch.tensor([len(suffix)], device=device), "left")
    return -logits[0].float().log_softmax(-1).gather(-1, targets[0, :, None]).mean()


def gradnorm_scores(
    model,
    prefix_ids: Sequence[list[int]],
    suffix_ids: Sequence[list[int]],
    p: float = 2.0,
    aggregate: str = "global",
    progress: bool | str = False,
) -> torch.Tensor:
    """Norm of the gradient of each sequence's suffix NLL w.r.t. the trainable parameters, ``(N,)`` float64.

    GradNorm (a membership signal for LLMs in Wang et al. 2024, "Pandora's White-Box", and in mimir and open-unlearning):
    a trained sequence sits near a minimum of its loss, so its gradient is small. ``global`` is the p-norm
    of the whole gradient vector ||grad_theta L(x)||_p; ``tensor_mean`` is mimir's / open-unlearning's
    aggregate, the mean over parameter tensors of each tensor's p-norm (mimir's default p is inf).

    Per-sequence gradients need one backward pass per sequence: ``torch.func.vmap`` over a Hugging Face
    model fails on its data-dependent masking, and a batched backward would sum the sequences. Dropout
    is off (eval mode, restored after) and no ``.grad`` is written (``torch.autograd.grad``), so the
    call is safe mid-training.
    """
    if aggregate not in GRAD_AGGREGATES:
        raise ValueError(f"aggregate must be one of {', '.join(GRAD_AGGREGATES)}, got {aggregate!r}")
    if p not in (1, 2, math.inf):
        raise ValueError(f"p must be 1, 2 or math.inf, got {p!r}")
    params = [q for q in model.parameters() if q.requires_grad]
    if not params:
        raise ValueError(
            "GradNorm needs parameters that require gradients; every parameter of this model is "
            "frozen (call model.requires_grad_(True), or score a PEFT model's adapter weights)."
        )
    was_training = model.training
    model.eval()
    norms = []
    try:
        for prefix, suffix in tqdm(
            list(zip(prefix_ids, suffix_ids)),
            desc=progress if isinstance(progress, str) else "gradnorm",
            disable=not progress,
            leave=False,
        ):
            if not prefix or not suffix:
                raise ValueError("every sequence needs at least one prefix token and one suffix token.")
            with torch.enable_grad():
                grads = torch.autograd.grad(_suffix_nll(model, prefix, suffix), params, allow_unused=True)
            per_tensor = torch.stack([g.detach().double().norm(p) for g in grads if g is not None])
            if aggregate == "tensor_mean":
                norms.append(per_tensor.mean())
            else:  # the p-norm of the concatenated gradient, from the per-tensor p-norms
                norms.append(per_tensor.max() if p == math.inf else per_tensor.pow(p).sum().pow(1 / p))
    finally:
        model.train(was_training)
    return torch.stack(norms).cpu() if norms else torch.zeros(0, dtype=torch.float64)


def score_gradnorm(
    model, tokenizer, probes: ProbeSet, p: float = 2.0, aggregate: str = "global", progress: bool | str = False
) -> list[dict]:
    """``{"id", "role", "grad_norm", "gradnorm"}`` per probe; ``gradnorm`` = -``grad_norm`` (higher = member).

    Args:
        model: causal LM whose trainable parameters the gradient is taken w.r.t.
        tokenizer: its tokenizer (unused but for the pad token, kept for symmetry with ``score_probes``).
        probes: the probes to score.
        p: 1, 2 (default) or ``math.inf``.
        aggregate: ``global`` (||grad||_p) or ``tensor_mean`` (mimir's mean of per-tensor norms).
        progress: show a progress bar.
    """
    ensure_pad_token(tokenizer)
    probes = probes.check_fits(context_length(model))
    norms = gradnorm_scores(
        model, [q.prefix_ids for q in probes], [q.suffix_ids for q in probes], p, aggregate, progress
    )
    return [{"id": q.id, "role": q.role, "grad_norm": n.item(), "gradnorm": -n.item()} for q, n in zip(probes, norms)]


def recall_prefix(controls: ProbeSet, shots: int, exclude: str | None = None) -> list[int]:
    """The non-member prefix: the token ids of the first ``shots`` controls (other than ``exclude``), joined."""
    chosen = [c for c in controls if c.id != exclude][:shots]
    return [t for c in chosen for t in c.input_ids]


def score_recall(
    model,
    tokenizer,
    probes: ProbeSet,
    controls: ProbeSet | None,
    shots: int = 1,
    batch_size: int = 32,
    progress: bool | str = False,
) -> list[dict]:
    """ReCaLL (Xie et al. 2024) of each probe, conditioning on a non-member prefix taken from the controls.

    ReCaLL = LL(x | P) / LL(x), LL the mean log-likelihood of the suffix (given the probe's prefix, and
    for LL(x | P) given P + prefix), P the concatenated text of ``shots`` never-trained controls. Both LLs
    are negative; a member's likelihood drops more when an unrelated non-member text is prepended, so its
    ratio is larger: higher = member, the ratio mimir reports. A control is never conditioned on itself
    (its P is made of the next controls). ``recall_drop`` = LL(x) - LL(x | P) is the same signal as a difference.

    Raises:
        ProbeError: without controls (ReCaLL needs known non-members), or when P + a probe overflows the model.
    """
    if controls is None or len(controls) == 0:
        raise ProbeError(
            "ReCaLL needs control probes (never-trained sequences) to build its non-member prefix; "
            "pass controls (role 'control' in the probe file), or drop 'recall' from the scores."
        )
    if shots < 1:
        raise ValueError(f"shots must be >= 1, got {shots}")
    if len(controls) <= shots and any(p.id in set(controls.ids) for p in probes):
        raise ProbeError(
            f"ReCaLL with {shots} shot(s) needs at least {shots + 1} controls so that no control "
            f"is conditioned on itself; got {len(controls)}."
        )
    ensure_pad_token(tokenizer)
    limit = context_length(model)
    prefixes = [recall_prefix(controls, shots, probe.id) + probe.prefix_ids for probe in probes]
    if limit is not None:
        for probe, prefix in zip(probes, prefixes):
            if len(prefix) + len(probe.suffix_ids) > limit:
                raise ProbeError(
                    f"probe {probe.id!r} with the {shots}-shot non-member prefix is "
                    f"{len(prefix) + len(probe.suffix_ids)} tokens, longer than the model's context "
                    f"of {limit}; use fewer shots or shorter controls."
                )
    suffixes = [probe.suffix_ids for probe in probes]
    common = dict(pad_token_id=tokenizer.pad_token_id, batch_size=batch_size)
    alone = -score_sequences(model, [p.prefix_ids for p in probes], suffixes, progress=progress, **common)["loss"]
    conditioned = -score_sequences(model, prefixes, suffixes, progress=progress, **common)["loss"]
    return [
        {
            "id": probe.id,
            "role": probe.role,
            "recall": (c / a).item(),
            "recall_drop": (a - c).item(),
            "recall_shots": shots,
        }
        for probe, a, c in zip(probes, alone.double(), conditioned.double())
    ]
