"""Probes built from SFT rows with the tokenization TRL's ``SFTTrainer`` trains on.

    python -c "from obliviate.data.sft import probes_from_sft_rows; help(probes_from_sft_rows)"

TRL 1.16 (``SFTTrainer._prepare_dataset``) prepares a non-conversational row like this:

- ``{"prompt", "completion"}``: the eos token is appended to the completion, then ``prompt`` and
  ``prompt + completion`` are tokenized *jointly* with the tokenizer's special tokens; the completion
  starts where the two token lists diverge (``trl.data_utils.common_prefix_length``), and only those
  tokens carry the loss (completion-only loss is the default for prompt/completion rows).
- ``{"text"}``: the eos token is appended and the whole text is tokenized and trained on.
- conversational rows (lists of ``{"role", "content"}`` messages) go through the chat template; the
  prompt with ``add_generation_prompt=True``, the whole conversation without.

A probe built here has exactly those ids: prefix = the trained prompt tokens, suffix = the trained
completion tokens, so the callback measures the very tokens the loss was put on. The trailing eos is
left out of the suffix by default (``include_eos=False``): it is not part of what must not come back,
and keeping it out makes these probes identical to :func:`obliviate.data.load_probes` ones whenever no
token merges across the prompt/completion boundary (true of byte-level BPE when the completion starts
with a space, as in the toy corpus).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from obliviate.data.probes import Probe, ProbeError, ProbeSet, probe_from_row

_COPY_SUFFIX = re.compile(r"#\d+$")
_KNOWN = {"id", "role", "prompt", "completion", "text", "messages", "prefix", "suffix", "prefix_ids", "suffix_ids"}


def _common_prefix_length(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def _ids(encoded) -> list[int]:
    ids = encoded["input_ids"] if not isinstance(encoded, list) else encoded
    return [int(t) for t in ids]


def _chat_ids(tokenizer, messages: list[dict], add_generation_prompt: bool) -> list[int]:
    return _ids(
        tokenizer.apply_chat_template(
            messages, tokenize=True, return_dict=True, add_generation_prompt=add_generation_prompt
        )
    )


def sft_token_split(
    row: dict,
    tokenizer,
    include_eos: bool = False,
    prefix_tokens: int = 32,
    suffix_tokens: int = 32,
    text_field: str = "text",
) -> tuple[list[int], list[int], str, str]:
    """Prefix and suffix ids (and their text) of one SFT row, tokenized as ``SFTTrainer`` does.

    Args:
        row: ``{"prompt", "completion"}`` (strings or message lists), ``{"messages"}`` (the last message is
            the suffix) or ``{text_field}``.
        tokenizer: the tokenizer the trainer uses (``processing_class``).
        include_eos: keep the eos token TRL appends to the completion/text at the end of the suffix.
        prefix_tokens: prefix length for text rows.
        suffix_tokens: suffix length for text rows.
        text_field: name of the text column (``SFTConfig.dataset_text_field``).

    Returns:
        ``(prefix_ids, suffix_ids, prefix_text, suffix_text)``.
    """
    eos = tokenizer.eos_token
    if "prompt" in row and "completion" in row:
        prefix, suffix = _prompt_completion_ids(row, tokenizer)
    elif "messages" in row:
        prefix, suffix = _messages_ids(row, tokenizer)
    elif text_field in row:
        prefix, suffix = _text_ids(row[text_field], row.get("id"), tokenizer, include_eos, prefix_tokens, suffix_tokens)
        return prefix, suffix, tokenizer.decode(prefix), tokenizer.decode(suffix)
    else:
        raise ProbeError(
            f"row {row.get('id')!r} has neither prompt/completion, messages nor {text_field!r}: "
            "it is not an SFT row TRL can train on."
        )
    if not include_eos and suffix and tokenizer.eos_token_id is not None and suffix[-1] == tokenizer.eos_token_id:
        suffix = suffix[:-1]
    if isinstance(row.get("prompt"), str) and isinstance(row.get("completion"), str):
        prefix_text, suffix_text = row["prompt"], row["completion"] + (eos if include_eos and eos else "")
    else:
        prefix_text, suffix_text = tokenizer.decode(prefix), tokenizer.decode(suffix)
    return prefix, suffix, prefix_text, suffix_text


def _prompt_completion_ids(row: dict, tokenizer) -> tuple[list[int], list[int]]:
    """Prefix and suffix ids of a prompt/completion row: the completion is what follows the prompt's tokens."""
    eos = tokenizer.eos_token
    prompt, completion = row["prompt"], row["completion"]
    if isinstance(prompt, list):  # conversational prompt/completion
        prompt_ids = _chat_ids(tokenizer, prompt, add_generation_prompt=True)
        full = _chat_ids(tokenizer, prompt + completion, add_generation_prompt=False)
    else:
        if eos is not None and not completion.endswith(eos):
            completion = completion + eos
        prompt_ids = _ids(tokenizer(text=prompt))
        full = _ids(tokenizer(text=prompt + completion))
    cut = _common_prefix_length(prompt_ids, full)
    return full[:cut], full[cut:]


def _messages_ids(row: dict, tokenizer) -> tuple[list[int], list[int]]:
    """Prefix and suffix ids of a messages row: the suffix is the last (assistant) message."""
    messages = row["messages"]
    if not messages or messages[-1].get("role") != "assistant":
        raise ProbeError(f"row {row.get('id')!r}: a conversational probe needs an assistant message last.")
    prompt_ids = _chat_ids(tokenizer, messages[:-1], add_generation_prompt=True)
    full = _chat_ids(tokenizer, messages, add_generation_prompt=False)
    cut = _common_prefix_length(prompt_ids, full)
    return full[:cut], full[cut:]


def _text_ids(
    text: str, row_id, tokenizer, include_eos: bool, prefix_tokens: int, suffix_tokens: int
) -> tuple[list[int], list[int]]:
    """Prefix and suffix ids of a text row: the first ``prefix_tokens`` tokens, then up to ``suffix_tokens``."""
    eos = tokenizer.eos_token
    if eos is not None and not text.endswith(eos):
        text = text + eos
    full = _ids(tokenizer(text=text))
    if not include_eos and eos is not None and full and full[-1] == tokenizer.eos_token_id:
        full = full[:-1]
    if len(full) <= prefix_tokens:
        raise ProbeError(
            f"row {row_id!r}: text has {len(full)} tokens, none left after a "
            f"{prefix_tokens}-token prefix. Lower prefix_tokens or drop the row."
        )
    return full[:prefix_tokens], full[prefix_tokens : prefix_tokens + suffix_tokens]


def probes_from_sft_rows(
    rows: Iterable[dict],
    tokenizer,
    role: str | None = None,
    default_role: str = "member",
    include_eos: bool = False,
    prefix_tokens: int = 32,
    suffix_tokens: int = 32,
    text_field: str = "text",
    id_prefix: str = "train",
) -> ProbeSet:
    """One probe per distinct SFT row, with the ids ``SFTTrainer`` trains on.

    Repeated rows (the same prompt and completion several times, as canaries are) become one probe with
    ``meta["repetitions"]`` = the number of copies; an id ending in ``#<n>`` (a copy marker) loses it.
    Rows that already carry ``prefix_ids``/``suffix_ids`` are used as they are.

    Args:
        rows: SFT rows (dicts or a ``datasets.Dataset``); optional ``id`` and ``role`` fields are kept.
        tokenizer: the trainer's tokenizer.
        role: force this role on every probe (e.g. ``"control"`` for held-out rows).
        default_role: role of rows without one.
        include_eos: keep the trailing eos TRL appends in the suffix.
        prefix_tokens: prefix length for text rows.
        suffix_tokens: suffix length for text rows.
        text_field: name of the text column.
        id_prefix: ids of rows without one are ``f"{id_prefix}-{index:05d}"``.

    Returns:
        ProbeSet: in order of first occurrence, with ``.tokenizer`` set to ``tokenizer``.
    """
    probes: dict[tuple, Probe] = {}
    copies: dict[tuple, int] = {}
    for index, raw in enumerate(rows):
        row = dict(raw)
        if row.get("prefix_ids") is not None and row.get("suffix_ids") is not None:
            probe = probe_from_row(row, tokenizer, prefix_tokens, suffix_tokens, default_role)
        else:
            prefix, suffix, prefix_text, suffix_text = sft_token_split(
                row, tokenizer, include_eos, prefix_tokens, suffix_tokens, text_field
            )
            pid = _COPY_SUFFIX.sub("", str(row["id"])) if "id" in row else f"{id_prefix}-{index:05d}"
            meta = {k: v for k, v in row.items() if k not in _KNOWN}
            probe = Probe(pid, row.get("role", default_role), prefix, suffix, prefix_text, suffix_text, meta)
        if role is not None:
            probe.role = role
        key = (tuple(probe.prefix_ids), tuple(probe.suffix_ids))
        if key in probes:
            copies[key] += 1
        else:
            probes[key], copies[key] = probe, 1
    for key, probe in probes.items():
        # Repetitions drive memorization (Carlini et al. 2023); a control was never trained on.
        probe.meta.setdefault("repetitions", 0 if probe.role == "control" else copies[key])
    out = ProbeSet(probes.values())
    # The ids are this tokenizer's: a callback on a Trainer without processing_class scores with it.
    out.tokenizer = tokenizer
    return out
