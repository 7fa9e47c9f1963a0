"""Loading models and tokenizers by hub name or local path, with errors that say what to do.

    python -c "from obliviate.modeling import load_model_and_tokenizer; help(load_model_and_tokenizer)"
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}


class ModelLoadError(ValueError):
    """The model or tokenizer could not be loaded; the message says why and what to try."""


def _looks_like_path(name: str) -> bool:
    return name.startswith((".", "/", "~")) or os.sep in name.strip("/").split("/", 1)[-1] or Path(name).exists()


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ModelLoadError(f"unknown dtype {dtype!r}; use one of {', '.join(DTYPES)}.")
    return DTYPES[dtype]


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def load_tokenizer(name_or_path: str | os.PathLike):
    from transformers import AutoTokenizer

    from obliviate.data.probes import ensure_pad_token

    tokenizer = AutoTokenizer.from_pretrained(str(name_or_path))
    ensure_pad_token(tokenizer)
    return tokenizer


def load_model(name_or_path: str | os.PathLike, dtype: str | torch.dtype | None = "float32",
               device: str | None = None):
    """Load a causal LM (or a PEFT adapter directory on top of its base) for scoring or erasure.

    Raises:
        ModelLoadError: the path does not exist, it is not a model, or the model is not a causal LM.
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    name = str(name_or_path)
    path = Path(name).expanduser()
    if _looks_like_path(name) and not path.exists():
        raise ModelLoadError(f"model path {name} does not exist. Give a directory written by save_pretrained "
                             "(e.g. runs/toy/base after `obliviate toy --out runs/toy`) or a hub name.")
    torch_dtype = resolve_dtype(dtype)
    if path.is_dir() and (path / "adapter_config.json").exists():
        from peft import AutoPeftModelForCausalLM

        model = AutoPeftModelForCausalLM.from_pretrained(str(path), dtype=torch_dtype)
    else:
        try:
            config = AutoConfig.from_pretrained(name)
        except OSError as e:
            raise ModelLoadError(f"cannot load a model config from {name!r}: {e}. Offline, only local "
                                 "directories load (HF_HUB_OFFLINE=1 is set in tests).") from None
        try:
            model = AutoModelForCausalLM.from_pretrained(name, dtype=torch_dtype)
        except ValueError:
            # transformers' own message lists every supported config class (hundreds): keep ours short.
            raise ModelLoadError(f"{name!r} ({type(config).__name__}, model_type {config.model_type!r}) is not a "
                                 "causal language model: AutoModelForCausalLM has no class for it. obliviate "
                                 "needs a decoder-only LM (GPT-2, Llama, ...).") from None
    model.to(device or default_device())
    model.eval()
    check_causal(model, name)
    return model


@torch.inference_mode()
def check_causal(model, name: str = "the model") -> None:
    """Raise unless predictions at a position ignore later tokens.

    AutoModelForCausalLM also loads encoders (a BERT saved without ``is_decoder=True`` becomes a
    bidirectional ``BertLMHeadModel``): every score would then see the suffix it is meant to predict.
    Two 4-token rows that differ only in their last token must agree on the earlier logits (up to
    noise, measured against how much the changed token moves its own position's logits).
    """
    vocab = model.get_input_embeddings().num_embeddings
    device = next(model.parameters()).device
    ids = torch.tensor([[1, 2, 3, 4], [1, 2, 3, 5]], device=device) % vocab
    logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits.float()
    earlier = (logits[0, :3] - logits[1, :3]).abs().max()
    last = (logits[0, 3] - logits[1, 3]).abs().max()
    if earlier > max(1e-3 * last, 1e-5):
        raise ModelLoadError(f"{name!r} ({type(model).__name__}) is not a causal language model: its predictions "
                             "depend on later tokens (bidirectional attention, e.g. an encoder such as BERT). "
                             "obliviate needs a decoder-only LM (GPT-2, Llama, ...).")


def load_model_and_tokenizer(name_or_path: str | os.PathLike, dtype: str | torch.dtype | None = "float32",
                             device: str | None = None, tokenizer: str | os.PathLike | None = None):
    """Model and tokenizer from the same place (or ``tokenizer`` when the model directory has none)."""
    model = load_model(name_or_path, dtype, device)
    tok_source = tokenizer or name_or_path
    if tokenizer is None and Path(str(name_or_path)).is_dir() and (Path(str(name_or_path)) / "adapter_config.json").exists():
        base = getattr(model.peft_config["default"], "base_model_name_or_path", None)
        if not any((Path(str(name_or_path)) / f).exists() for f in ("tokenizer.json", "tokenizer_config.json")) and base:
            tok_source = base
    return model, load_tokenizer(tok_source)
