"""Generation-based scores: extraction likelihood (EL_n, Jang et al. 2022) and the greedy suffix text.

    python -c "from obliviate.metrics.generation import extraction_likelihood; help(extraction_likelihood)"

These need ``generate`` and are slower than the teacher-forced scores, so they run only where asked
(a subsample, the flagged few). Every call decodes greedily (``do_sample=False`` set explicitly,
whatever the model's generation config says), with KV cache, left padding and eos disabled so each
continuation has exactly the length asked for.
"""

from __future__ import annotations

from collections import Counter, defaultdict

import torch
from tqdm.auto import tqdm

from obliviate.data.probes import ProbeSet, ensure_pad_token
from obliviate.metrics.scorer import model_device


@torch.inference_mode()
def greedy_continuations(
    model,
    prompts: list[list[int]],
    lengths: list[int],
    pad_token_id: int,
    batch_size: int = 32,
    progress: bool | str = False,
) -> list[list[int]]:
    """Greedy continuation of ``lengths[i]`` tokens after each prompt.

    Prompts are sorted by the length asked for and each batch generates its longest; shorter rows are
    cut (greedy tokens do not depend on what comes after them), so EL_n's T prompts per probe cost a
    few ``generate`` calls rather than one per length.

    Args:
        model: causal LM.
        prompts: token ids of each prompt (non-empty).
        lengths: tokens to generate for each prompt (>= 1).
        pad_token_id: id used for left padding (hidden by the attention mask).
        batch_size: prompts per ``generate`` call.
        progress: show a progress bar (a string sets its label).

    Returns:
        The generated token ids, in input order.
    """
    was_training = model.training
    model.eval()
    device = model_device(model)
    if any(not p for p in prompts) or any(n < 1 for n in lengths):
        raise ValueError("every prompt needs at least one token and every continuation at least one new token.")
    order = sorted(range(len(prompts)), key=lambda i: (lengths[i], len(prompts[i])))
    batches = [order[k : k + batch_size] for k in range(0, len(order), batch_size)]
    out: list[list[int]] = [[] for _ in prompts]
    try:
        for batch in tqdm(
            batches, desc=progress if isinstance(progress, str) else "generating", disable=not progress, leave=False
        ):
            n = max(lengths[i] for i in batch)
            width = max(len(prompts[i]) for i in batch)
            ids = torch.full((len(batch), width), pad_token_id, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for row, i in enumerate(batch):
                ids[row, width - len(prompts[i]) :] = torch.tensor(prompts[i])
                mask[row, width - len(prompts[i]) :] = 1
            # Neutral values override what a model's generation_config.json may set (repetition
            # penalties change the argmax); eos off so every row yields exactly n tokens.
            generated = model.generate(
                input_ids=ids.to(device),
                attention_mask=mask.to(device),
                do_sample=False,
                num_beams=1,
                max_new_tokens=n,
                eos_token_id=None,
                pad_token_id=pad_token_id,
                use_cache=True,
                repetition_penalty=1.0,
                no_repeat_ngram_size=0,
            )
            for row, i in enumerate(batch):
                out[i] = generated[row, width : width + lengths[i]].tolist()
    finally:
        model.train(was_training)
    return out


OVERLAPS = ("set", "clipped")
"""n-gram counting of EL_n: ``set`` (Jang et al. 2022, the default) or ``clipped`` (multiset, BLEU-style)."""


def ngram_overlap(generated: list[int], true: list[int], n: int, overlap: str = "set") -> float | None:
    """Share of the generated n-grams found in the true continuation; None when ``generated`` has no n-gram.

    ``set`` is Jang et al. (2022)'s OVERLAP_n: every generated n-gram (repeats included) counts when it
    appears in the *set* of the true continuation's n-grams, so a repeated hit counts each time.
    ``clipped`` counts each generated n-gram at most as often as it occurs in the truth (``gen & ref``
    on multisets, BLEU's modified precision): a degenerate repetition of one true token scores less.
    """
    if overlap not in OVERLAPS:
        raise ValueError(f"overlap must be one of {', '.join(OVERLAPS)}, got {overlap!r}")
    grams = [tuple(generated[i : i + n]) for i in range(len(generated) - n + 1)]
    if not grams:
        return None
    truth = [tuple(true[i : i + n]) for i in range(len(true) - n + 1)]
    if overlap == "set":
        reference = set(truth)
        return sum(gram in reference for gram in grams) / len(grams)
    return sum((Counter(grams) & Counter(truth)).values()) / len(grams)


def extraction_likelihood(
    model,
    tokenizer,
    probes: ProbeSet,
    n: int = 1,
    stride: int = 1,
    batch_size: int = 32,
    from_suffix: bool = False,
    overlap: str = "set",
    progress: bool | str = False,
) -> list[dict]:
    """EL_n of each probe (Jang et al. 2022): mean n-gram overlap of greedy continuations over prefix lengths.

    For x = prefix + suffix (T tokens) and each t in {t0, t0 + stride, ...} <= T - n, greedily generate
    T - t tokens from x[:t] and take ``ngram_overlap`` with x[t:]; EL_n is the mean over t.

    Args:
        model: causal LM.
        tokenizer: its tokenizer (for the pad token).
        probes: probes to measure.
        n: n-gram size (Jang et al. report EL_10 on 200-token sequences; use a small n for short probes).
        stride: step between prefix lengths t (1 = every position, as in the paper).
        batch_size: prompts per ``generate`` call.
        from_suffix: start t at the suffix (t0 = len(prefix)) instead of t0 = 1 (the paper's whole sequence).
        overlap: ``set`` (Jang et al.'s counting, default) or ``clipped`` (multiset overlap); see :func:`ngram_overlap`.
        progress: show a progress bar.

    Returns:
        One ``{"id", "role", "extraction_likelihood", "el_n", "el_overlap", "el_positions"}`` dict per probe;
        ``extraction_likelihood`` is None when the probe is shorter than ``n + 1`` tokens.
    """
    if n < 1 or stride < 1:
        raise ValueError(f"n and stride must be >= 1, got n={n}, stride={stride}")
    if overlap not in OVERLAPS:
        raise ValueError(f"overlap must be one of {', '.join(OVERLAPS)}, got {overlap!r}")
    ensure_pad_token(tokenizer)
    prompts, lengths, owners, truths = [], [], [], []
    for k, probe in enumerate(probes):
        x = probe.input_ids
        first = len(probe.prefix_ids) if from_suffix else 1
        for t in range(first, len(x) - n + 1, stride):
            prompts.append(x[:t])
            lengths.append(len(x) - t)
            owners.append(k)
            truths.append(x[t:])
    generated = greedy_continuations(model, prompts, lengths, tokenizer.pad_token_id, batch_size, progress)
    per_probe: dict[int, list[float]] = defaultdict(list)
    for k, gen, true in zip(owners, generated, truths):
        value = ngram_overlap(gen, true, n, overlap)
        if value is not None:
            per_probe[k].append(value)
    rows = []
    for k, probe in enumerate(probes):
        values = per_probe.get(k, [])
        rows.append(
            {
                "id": probe.id,
                "role": probe.role,
                "el_n": n,
                "el_overlap": overlap,
                "el_positions": len(values),
                "extraction_likelihood": sum(values) / len(values) if values else None,
            }
        )
    return rows


def greedy_suffix(model, tokenizer, probes: ProbeSet, batch_size: int = 32, progress: bool | str = False) -> list[str]:
    """The text greedy decoding produces from each prefix, as long (in tokens) as the true suffix.

    Shown in reports next to the true suffix; it equals the suffix exactly when ``exact_extraction`` is 1.
    """
    ensure_pad_token(tokenizer)
    generated = greedy_continuations(
        model,
        [p.prefix_ids for p in probes],
        [len(p.suffix_ids) for p in probes],
        tokenizer.pad_token_id,
        batch_size,
        progress,
    )
    return [tokenizer.decode(ids) for ids in generated]
