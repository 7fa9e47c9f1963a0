"""Real English text that no one on this project wrote, for utility benchmarks of real models.

    python -c "from obliviate.data.realtext import real_text_documents; print(len(real_text_documents()))"

Two sources found on any Debian/Ubuntu system with Python, read at run time and never committed:

- the license texts of ``/usr/share/common-licenses`` (GPL, Apache-2.0, MPL, ... : legal prose);
- the docstrings of the standard library modules of the running interpreter (:data:`STDLIB_MODULES`),
  read with :mod:`inspect` (technical prose), doctest and code paragraphs left out.

Documents are split into paragraphs, paragraphs into sentences, and sentences packed into chunks of
at most ``max_tokens`` tokens (:func:`chunk_documents`). :func:`next_sentence_task` builds a
multiple-choice task from the same sentences: given a passage, pick the sentence that really follows it
among distractors drawn from *other* documents (a task a language model solves by reading the context,
that erasing a few secrets must not break). Every output is a pure function of the seed and the files
present; the same interpreter and system give the same rows.
"""

from __future__ import annotations

import hashlib
import inspect
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

LICENSE_DIR = Path("/usr/share/common-licenses")
STDLIB_MODULES = (
    "argparse",
    "ast",
    "asyncio",
    "bisect",
    "calendar",
    "collections",
    "configparser",
    "contextlib",
    "csv",
    "dataclasses",
    "datetime",
    "decimal",
    "difflib",
    "email.message",
    "enum",
    "fractions",
    "functools",
    "heapq",
    "http.client",
    "inspect",
    "ipaddress",
    "itertools",
    "json",
    "logging",
    "mailbox",
    "pathlib",
    "pickle",
    "queue",
    "random",
    "shutil",
    "smtplib",
    "socket",
    "statistics",
    "string",
    "subprocess",
    "tarfile",
    "tempfile",
    "textwrap",
    "threading",
    "typing",
    "unittest",
    "urllib.parse",
    "uuid",
    "zipfile",
)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z(\"'])")
_CODE = re.compile(r"^\s*(>>>|\.\.\.|\$ |[-=*+]{3,}|\w+\s*\(.*\)\s*$)|[{}\[\]<>|\\]{2,}|::\s*$")


class RealTextError(ValueError):
    """The real-text sources cannot provide what was asked; the message says what to change."""


@dataclass(frozen=True)
class Document:
    """One source document: ``id`` names it (``license/GPL-3``, ``docstring/json.dumps``)."""

    id: str
    paragraphs: tuple[str, ...]


def _prose_paragraphs(text: str, min_words: int) -> list[str]:
    """Blank-line separated paragraphs, re-flowed onto one line, keeping only prose (no code, no tables)."""
    out = []
    for block in re.split(r"\n\s*\n", text):
        lines = [line for line in block.splitlines() if line.strip()]
        if not lines or any(_CODE.search(line) for line in lines):
            continue
        paragraph = " ".join(line.strip() for line in lines)
        letters = sum(c.isalpha() or c.isspace() for c in paragraph)
        if len(paragraph.split()) >= min_words and letters >= 0.85 * len(paragraph):
            out.append(paragraph)
    return out


def license_documents(directory: str | Path = LICENSE_DIR, min_words: int = 8) -> list[Document]:
    """The license texts, one document per distinct file (GPL is a link to GPL-3: read once)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    seen, docs = set(), []
    for path in sorted(directory.iterdir()):
        if not path.is_file():
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        digest = hashlib.sha256(text.encode()).hexdigest()
        if digest in seen:
            continue
        seen.add(digest)
        paragraphs = _prose_paragraphs(text, min_words)
        if paragraphs:
            docs.append(Document(f"license/{path.name}", tuple(paragraphs)))
    return docs


def docstring_documents(modules: Sequence[str] = STDLIB_MODULES, min_words: int = 8) -> list[Document]:
    """One document per documented module, class and function of ``modules`` (public names, sorted)."""
    import importlib

    docs = []
    for module_name in modules:
        try:
            module = importlib.import_module(module_name)
        except ImportError:  # a module the interpreter was built without (e.g. no _ssl): skip it
            continue
        objects = [(module_name, module)]
        for name, obj in sorted(vars(module).items()):
            if name.startswith("_") or getattr(obj, "__module__", None) != module.__name__:
                continue
            if inspect.isclass(obj) or inspect.isfunction(obj):
                objects.append((f"{module_name}.{name}", obj))
        for name, obj in objects:
            paragraphs = _prose_paragraphs(inspect.getdoc(obj) or "", min_words)
            if paragraphs:
                docs.append(Document(f"docstring/{name}", tuple(paragraphs)))
    return docs


def real_text_documents(min_words: int = 8) -> list[Document]:
    """Every document of both sources, licenses first, in a fixed order.

    Raises:
        RealTextError: neither source has any prose (no /usr/share/common-licenses and no docstrings).
    """
    docs = license_documents(min_words=min_words) + docstring_documents(min_words=min_words)
    if not docs:
        raise RealTextError(
            f"no real text found: {LICENSE_DIR} is missing and the standard library has no "
            "docstrings (python -OO strips them; run without -OO)."
        )
    return docs


def sentences(paragraph: str) -> list[str]:
    """A paragraph cut after ``.``/``!``/``?`` followed by space and a capital (good enough for prose)."""
    return [s.strip() for s in _SENTENCE_END.split(paragraph) if s.strip()]


def word_count(text: str) -> int:
    return len(text.split())


def chunk_documents(
    docs: Sequence[Document], max_tokens: int = 48, count: Callable[[str], int] = word_count, min_tokens: int = 8
) -> list[dict]:
    """Whole sentences packed into chunks of at most ``max_tokens`` (``count`` = a tokenizer's length).

    A chunk never crosses a paragraph; a single sentence longer than ``max_tokens`` is cut at the last
    word that fits. Chunks under ``min_tokens`` are dropped (headings, stubs).

    Returns:
        Rows ``{"id", "doc", "text"}`` in document order.
    """
    if max_tokens < min_tokens:
        raise RealTextError(f"max_tokens ({max_tokens}) must be >= min_tokens ({min_tokens}).")
    rows = []
    for doc in docs:
        for p, paragraph in enumerate(doc.paragraphs):
            current: list[str] = []
            pieces = []
            for sentence in sentences(paragraph):
                for part in _fitting_parts(sentence, max_tokens, count):
                    if current and count(" ".join([*current, part])) > max_tokens:
                        pieces.append(" ".join(current))
                        current = []
                    current.append(part)
            if current:
                pieces.append(" ".join(current))
            for k, text in enumerate(pieces):
                if count(text) >= min_tokens:
                    rows.append({"id": f"{doc.id}#{p}.{k}", "doc": doc.id, "text": text})
    return rows


def _fitting_parts(sentence: str, max_tokens: int, count: Callable[[str], int]) -> list[str]:
    """A sentence as is when it fits, else cut into runs of words that each fit (at least one word each)."""
    words, parts = sentence.split(), []
    while words:
        k = len(words)
        while k > 1 and count(" ".join(words[:k])) > max_tokens:
            k -= 1
        parts.append(" ".join(words[:k]))
        words = words[k:]
    return parts


def split_by_document(rows: Sequence[dict], fractions: dict[str, float], seed: int = 0) -> dict[str, list[dict]]:
    """Rows shuffled into named parts by *document* (no document feeds two parts), seeded.

    Args:
        rows: chunk rows with a ``doc`` key.
        fractions: part name -> share of the documents (e.g. ``{"retain": 0.5, "heldout": 0.5}``).
    """
    if not fractions or any(f <= 0 for f in fractions.values()) or sum(fractions.values()) > 1 + 1e-9:
        raise RealTextError(f"fractions must be positive and sum to at most 1, got {fractions}.")
    docs = sorted({r["doc"] for r in rows})
    random.Random(seed).shuffle(docs)
    parts, start = {}, 0
    for name, fraction in fractions.items():
        end = start + round(fraction * len(docs))
        parts[name] = set(docs[start:end])
        start = end
    return {name: [r for r in rows if r["doc"] in chosen] for name, chosen in parts.items()}


def next_sentence_task(
    docs: Sequence[Document],
    n_questions: int = 100,
    n_choices: int = 4,
    seed: int = 0,
    context_sentences: int = 2,
    max_words: int = 40,
) -> list[dict]:
    """Pick-the-true-next-sentence questions: ``{"id", "context", "choices", "label"}`` rows.

    The context is ``context_sentences`` consecutive sentences of one paragraph; the right choice is the
    sentence that follows them, the others are sentences of other documents of a similar length (so
    length alone does not give it away) that the question's document does not contain. Choices carry a leading space, as ``multiple_choice`` expects.

    Raises:
        RealTextError: the documents have fewer usable passages than ``n_questions``.
    """
    rng = random.Random(seed)
    passages, pool, own = [], [], {}
    for doc in docs:
        for paragraph in doc.paragraphs:
            sents = sentences(paragraph)
            own.setdefault(doc.id, set()).update(sents)
            usable = [4 <= word_count(s) <= max_words for s in sents]
            pool.extend((doc.id, s) for s, ok in zip(sents, usable) if ok)
            for i in range(len(sents) - context_sentences):
                # Consecutive sentences only: skipping a short one ("N.") would break the true order.
                if all(usable[i : i + context_sentences + 1]):
                    passages.append((doc.id, sents[i : i + context_sentences], sents[i + context_sentences]))
    if len(passages) < n_questions:
        raise RealTextError(f"only {len(passages)} passages for {n_questions} questions; ask for fewer.")
    by_length = sorted(pool, key=lambda item: (word_count(item[1]), item[1]))
    rows = []
    for q, (doc_id, context, answer) in enumerate(rng.sample(passages, n_questions)):
        # Distractors: sentences of other documents whose length is nearest the answer's, never a sentence the
        # question's own document contains (GFDL-1.2 and 1.3 share most sentences).
        rank = min(range(len(by_length)), key=lambda k: abs(word_count(by_length[k][1]) - word_count(answer)))
        window = [s for d, s in by_length[max(0, rank - 40) : rank + 40] if d != doc_id and s not in own[doc_id]]
        distractors = rng.sample(sorted(set(window)), n_choices - 1)
        choices = [answer, *distractors]
        rng.shuffle(choices)
        rows.append(
            {
                "id": f"nextsent/{q}",
                "doc": doc_id,
                "context": " ".join(context),
                "choices": [" " + c for c in choices],
                "label": choices.index(answer),
            }
        )
    return rows
