"""Loading models and tokenizers by hub name, local directory or GGUF file, with errors that say what to do.

    python -c "from obliviate.modeling import load_model_and_tokenizer; help(load_model_and_tokenizer)"

A model deployed as GGUF (llama.cpp's format) is audited as it ships: ``load_model`` takes a ``.gguf``
file, or a directory holding exactly one, and transformers dequantizes it to float (it needs the ``gguf``
package: ``pip install 'obliviate[real]'``). transformers marks such a model as quantized and refuses
``save_pretrained`` on it even after dequantization, so the loaded weights are moved into a plain model
built from the same config: erasing a GGUF model saves a normal safetensors directory.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


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


def find_gguf(name_or_path: str | os.PathLike) -> Path | None:
    """The GGUF file ``name_or_path`` names: the file itself, or the only ``.gguf`` in a directory that has
    no ``config.json`` (a save_pretrained directory wins). None when it is not a GGUF model.

    Raises:
        ModelLoadError: a directory holds several ``.gguf`` files and no config (which one is meant?).
    """
    path = Path(str(name_or_path)).expanduser()
    if path.is_file() and path.suffix.lower() == ".gguf":
        return path
    if not path.is_dir() or (path / "config.json").exists():
        return None
    found = sorted(path.glob("*.gguf"))
    if len(found) > 1:
        raise ModelLoadError(
            f"{path} holds {len(found)} GGUF files ({', '.join(f.name for f in found)}); give "
            "the path of the one to load."
        )
    return found[0] if found else None


def _check_gguf_header(file: Path) -> None:
    with open(file, "rb") as f:
        magic = f.read(4)
    if magic != b"GGUF":
        raise ModelLoadError(
            f"{file} is not a GGUF file (it starts with {magic!r}, not b'GGUF'): corrupt or "
            "truncated. Download or convert it again."
        )


def _gguf_error(file: Path, error: Exception) -> ModelLoadError:
    """Say which of the two usual causes it is: an architecture transformers has no GGUF loader for, or a
    damaged file (truncated downloads fail deep in the reader with IndexError/struct/numpy errors)."""
    import re

    text = str(error)
    arch = re.search(r"architecture (\S+) is not supported", text)
    if arch:
        from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

        names = ", ".join(a for a in GGUF_SUPPORTED_ARCHITECTURES if a not in ("general", "tokenizer"))
        return ModelLoadError(
            f"{file}: transformers cannot load GGUF models of architecture {arch.group(1)!r} "
            f"(it loads {names}). Convert the original checkpoint with save_pretrained instead."
        )
    return ModelLoadError(
        f"{file} could not be read as a GGUF model ({type(error).__name__}: {text[:200]}): the "
        "file is probably corrupt or truncated. Download or convert it again."
    )


def _require_gguf_package() -> None:
    import importlib.util

    if importlib.util.find_spec("gguf") is None:
        raise ModelLoadError(
            "loading a .gguf model needs the `gguf` package: pip install 'obliviate[real]' (or pip install gguf)."
        )


def load_tokenizer(name_or_path: str | os.PathLike):
    from transformers import AutoTokenizer

    from obliviate.data.probes import ensure_pad_token

    gguf = find_gguf(name_or_path)
    if gguf is not None:
        _require_gguf_package()
        _check_gguf_header(gguf)
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        except Exception as e:  # the GGUF reader raises many types on a damaged file
            raise _gguf_error(gguf, e) from None
    else:
        tokenizer = AutoTokenizer.from_pretrained(str(name_or_path))
    ensure_pad_token(tokenizer)
    return tokenizer


def load_model(name_or_path: str | os.PathLike, dtype: str | torch.dtype | None = "float32", device: str | None = None):
    """Load a causal LM (or a PEFT adapter directory on top of its base) for scoring or erasure.

    Raises:
        ModelLoadError: the path does not exist, it is not a model, or the model is not a causal LM.
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    name = str(name_or_path)
    path = Path(name).expanduser()
    if _looks_like_path(name) and not path.exists():
        raise ModelLoadError(
            f"model path {name} does not exist. Give a directory written by save_pretrained "
            "(e.g. runs/toy/base after `obliviate toy --out runs/toy`) or a hub name."
        )
    torch_dtype = resolve_dtype(dtype)
    gguf = find_gguf(path) if _looks_like_path(name) else None
    if gguf is not None:
        model = load_gguf_model(gguf, torch_dtype)
    elif path.is_dir() and (path / "adapter_config.json").exists():
        from peft import AutoPeftModelForCausalLM

        model = AutoPeftModelForCausalLM.from_pretrained(str(path), dtype=torch_dtype)
    else:
        try:
            config = AutoConfig.from_pretrained(name)
        except OSError as e:
            raise ModelLoadError(
                f"cannot load a model config from {name!r}: {e}. Offline, only local "
                "directories load (HF_HUB_OFFLINE=1 is set in tests)."
            ) from None
        try:
            model = AutoModelForCausalLM.from_pretrained(name, dtype=torch_dtype)
        except ValueError:
            # transformers' own message lists every supported config class (hundreds): keep ours short.
            raise ModelLoadError(
                f"{name!r} ({type(config).__name__}, model_type {config.model_type!r}) is not a "
                "causal language model: AutoModelForCausalLM has no class for it. obliviate "
                "needs a decoder-only LM (GPT-2, Llama, ...)."
            ) from None
    model.to(device or default_device())
    model.eval()
    check_causal(model, name)
    return model


def load_gguf_model(file: str | os.PathLike, dtype: torch.dtype | None = torch.float32):
    """A plain (serializable) causal LM with the dequantized weights of a GGUF file.

    Raises:
        ModelLoadError: no ``gguf`` package, a damaged file, or an architecture transformers cannot load.
    """
    from transformers import AutoModelForCausalLM

    file = Path(file)
    _require_gguf_package()
    _check_gguf_header(file)
    try:
        loaded = AutoModelForCausalLM.from_pretrained(
            str(file.parent), gguf_file=file.name, dtype=dtype or torch.float32
        )
    except Exception as e:  # the GGUF reader raises many types on a damaged file
        raise _gguf_error(file, e) from None
    return dequantized_copy(loaded)


def dequantized_copy(model):
    """The same weights in a model transformers will ``save_pretrained``: built from the config without its
    ``quantization_config`` on the meta device (no second allocation), then the tensors are moved in."""
    from transformers import AutoModelForCausalLM

    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    state = model.state_dict()
    dtype = next(iter(state.values())).dtype
    with torch.device("meta"):
        plain = AutoModelForCausalLM.from_config(config, dtype=dtype)
    plain.load_state_dict(state, strict=True, assign=True)
    plain.tie_weights()  # assign=True gives tied keys two Parameters; tie them again as the config says
    # Non-persistent buffers (rotary inv_freq) are not in the state dict and still on meta: take the loaded ones.
    for name, buffer in model.named_buffers():
        owner, _, leaf = name.rpartition(".")
        target = plain.get_submodule(owner)
        if getattr(target, leaf).is_meta:
            target.register_buffer(leaf, buffer, persistent=leaf not in target._non_persistent_buffers_set)
    meta = [n for n, t in [*plain.named_parameters(), *plain.named_buffers()] if t.is_meta]
    if meta:
        raise ModelLoadError(
            f"rebuilding the GGUF model left tensors unset: {', '.join(meta[:5])}; load it with "
            "transformers and save_pretrained it yourself."
        )
    plain.generation_config = model.generation_config
    return plain


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
        raise ModelLoadError(
            f"{name!r} ({type(model).__name__}) is not a causal language model: its predictions "
            "depend on later tokens (bidirectional attention, e.g. an encoder such as BERT). "
            "obliviate needs a decoder-only LM (GPT-2, Llama, ...)."
        )


def load_model_and_tokenizer(
    name_or_path: str | os.PathLike,
    dtype: str | torch.dtype | None = "float32",
    device: str | None = None,
    tokenizer: str | os.PathLike | None = None,
):
    """Model and tokenizer from the same place (or ``tokenizer`` when the model directory has none)."""
    model = load_model(name_or_path, dtype, device)
    tok_source = tokenizer or name_or_path
    if (
        tokenizer is None
        and Path(str(name_or_path)).is_dir()
        and (Path(str(name_or_path)) / "adapter_config.json").exists()
    ):
        base = getattr(model.peft_config["default"], "base_model_name_or_path", None)
        if (
            not any((Path(str(name_or_path)) / f).exists() for f in ("tokenizer.json", "tokenizer_config.json"))
            and base
        ):
            tok_source = base
    return model, load_tokenizer(tok_source)


def freeze_except(model, trainable: int | str | list[str]) -> int:
    """Train only part of a model (full fine-tuning of its top layers); returns the trainable count.

    Args:
        trainable: an int N = the top N transformer blocks (embeddings, tied output head and final norm
            stay frozen); or regexes (``re.search`` on parameter names, e.g. ``["layers\\.2[89]\\.mlp"]``).

    Raises:
        ModelLoadError: N is out of range, or the patterns match no parameter.
    """
    import re

    names = [n for n, _ in model.named_parameters()]
    if isinstance(trainable, str) and trainable.strip().isdigit():  # `--set trainable=4` arrives as a string
        trainable = int(trainable)
    if isinstance(trainable, int) and not isinstance(trainable, bool):
        blocks = sorted({int(m.group(1)) for n in names if (m := re.search(r"\.(?:layers|h|blocks)\.(\d+)\.", n))})
        if not 1 <= trainable <= len(blocks):
            raise ModelLoadError(f"trainable: {trainable} top layers asked, the model has {len(blocks)} blocks.")
        top = {str(b) for b in blocks[-trainable:]}
        keep = [n for n in names if (m := re.search(r"\.(?:layers|h|blocks)\.(\d+)\.", n)) and m.group(1) in top]
    else:
        patterns = [trainable] if isinstance(trainable, str) else list(trainable)
        keep = [n for n in names if any(re.search(p, n) for p in patterns)]
        if not keep:
            raise ModelLoadError(f"trainable patterns {patterns} match no parameter; names look like {names[1]!r}.")
    chosen = set(keep)
    for name, param in model.named_parameters():
        param.requires_grad_(name in chosen)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
