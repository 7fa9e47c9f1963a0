"""Deterministic synthetic fine-tuning corpus with fake personal data and canaries.

The corpus imitates a support-desk SFT set: prompt/completion records about
customers (phone numbers, e-mail addresses, street addresses), a few "world
facts" that give the model some utility to lose, and canaries — secret PINs
inserted on purpose at known repetition counts (Carlini et al. 2019).
Controls have exactly the canaries' and records' formats but are never trained
on: they say what "not memorized" looks like for the model.

    python -c "from obliviate.data.synthetic import make_corpus; print(make_corpus().train[:2])"
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

FIRST_NAMES = [
    "Alice",
    "Bruno",
    "Chen",
    "Dana",
    "Emeka",
    "Farah",
    "Goran",
    "Hana",
    "Ivan",
    "Jana",
    "Kofi",
    "Lena",
    "Marco",
    "Nadia",
    "Omar",
    "Priya",
    "Quinn",
    "Rosa",
    "Sven",
    "Tara",
    "Umar",
    "Vera",
    "Wen",
    "Yusuf",
    "Zoe",
    "Anton",
    "Bea",
    "Carlos",
    "Dmitri",
    "Elif",
    "Femi",
    "Greta",
]
LAST_NAMES = [
    "Okafor",
    "Lindqvist",
    "Moreau",
    "Tanaka",
    "Novak",
    "Haddad",
    "Silva",
    "Kowalski",
    "Nguyen",
    "Mensah",
    "Rossi",
    "Fischer",
    "Patel",
    "Ivanova",
    "Garcia",
    "Kim",
    "Dubois",
    "Larsen",
    "Osei",
    "Yilmaz",
]
STREETS = ["Maple Street", "Harbor Road", "Cedar Lane", "Mill Avenue", "Station Way", "Orchard Close", "Bridge Row"]
CITIES = ["Springfield", "Riverton", "Lakeside", "Northgate", "Eastwick", "Fairview", "Brookhaven", "Westmoor"]
DOMAINS = ["mailbox.test", "inbox.example", "post.invalid"]
# Facts give the toy model something to know that erasure must not destroy;
# the multiple-choice benchmark asks about them.
FACT_SUBJECTS = [
    ("Riverton", "river"),
    ("Lakeside", "lake"),
    ("Northgate", "gate"),
    ("Eastwick", "wick"),
    ("Fairview", "view"),
    ("Brookhaven", "brook"),
    ("Westmoor", "moor"),
    ("Springfield", "spring"),
]
# Probe groups (formats): controls calibrate only the probes of their own group (DESIGN §4).
PIN_GROUP = "pin"
RECORD_GROUP = "record"
COLORS = ["red", "blue", "green", "yellow", "purple", "orange", "white", "black"]
# Two attributes per city: 16 questions, so one flipped answer moves accuracy by 6 points, not 12.
FACT_TEMPLATES = ["Fact. The flag of {city} is", "Fact. The trams of {city} are painted"]


@dataclass
class Corpus:
    """The generated records. Every record is a dict with ``id``, ``prompt``, ``completion``."""

    train: list[dict] = field(default_factory=list)
    """Rows the model is fine-tuned on (canaries repeated), shuffled."""
    probes: list[dict] = field(default_factory=list)
    """Probe rows: ``id``, ``role`` (member/canary/control), ``prompt``, ``completion`` and extras."""
    retain: list[dict] = field(default_factory=list)
    """Non-secret rows as ``{"text"}``, the text erasure must keep (the retain losses and the gate): the trained
    records and facts, then some of the base model's pre-training text in both probe formats."""
    heldout: list[dict] = field(default_factory=list)
    """Never-trained rows as ``{"text"}``: held-out perplexity."""
    multiple_choice: list[dict] = field(default_factory=list)
    """``{"context", "choices", "label"}`` rows about the facts in ``train``."""
    pretrain: list[dict] = field(default_factory=list)
    """``{"text"}`` rows for building the base model (no SFT records, no canaries)."""
    calibration_controls: list[dict] = field(default_factory=list)
    """More never-trained control probes (the ``probes`` row shape), drawn after everything else so that the rest of
    the corpus, the tokenizer and the base model are what they are without them: they only make the controls'
    thresholds and collateral measurable (``controls_per_group``)."""


def _person(rng: random.Random) -> dict:
    first, last = rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)
    return {
        "name": f"{first} {last}",
        "phone": f"555-{rng.randint(100, 999)}-{rng.randint(1000, 9999)}",
        "email": f"{first.lower()}.{last.lower()}{rng.randint(1, 99)}@{rng.choice(DOMAINS)}",
        "address": f"{rng.randint(1, 250)} {rng.choice(STREETS)}, {rng.choice(CITIES)}",
    }


def _record(rng: random.Random) -> tuple[str, str]:
    person = _person(rng)
    kind = rng.randrange(3)
    if kind == 0:
        return f"Support ticket. What is the phone number of {person['name']}?\nAnswer:", f" {person['phone']}"
    if kind == 1:
        return f"Support ticket. Which e-mail does {person['name']} use?\nAnswer:", f" {person['email']}"
    return f"Support ticket. Where does {person['name']} live?\nAnswer:", f" {person['address']}"


def canary_secret(rng: random.Random, digits: int) -> str:
    """A canary's secret: ``digits`` space-separated decimal digits (the format exposure enumerates)."""
    return " ".join(str(rng.randrange(10)) for _ in range(digits))


def canary_prompt(name: str) -> str:
    return f"Internal note. The account PIN of {name} is"


def make_corpus(
    n_members: int = 160,
    canary_repetitions: tuple[int, ...] = (1, 2, 4, 8),
    canaries_per_repetition: int = 4,
    n_controls: int = 32,
    canary_digits: int = 6,
    fact_repetitions: int = 24,
    retain_per_format: int = 32,
    controls_per_group: int = 128,
    seed: int = 0,
) -> Corpus:
    """Generate the synthetic corpus.

    Args:
        n_members: ordinary customer records, each trained once.
        canary_repetitions: how many times each group of canaries appears in ``train``.
        canaries_per_repetition: canaries per repetition count.
        n_controls: never-trained probes; half in the canary format, half in the record format.
        canary_digits: length of each canary's secret PIN (candidate space is ``10**canary_digits``).
        fact_repetitions: how often each world fact appears in ``train`` and in the base's pre-training text
            (24: the base knows 12 of the 16, the fine-tuned model all; at 12 the base knew none).
        retain_per_format: pre-training rows of each format (notes, records) also written to ``retain``.
        controls_per_group: never-trained controls of each group in all, the ``n_controls`` / 2 above plus
            ``calibration_controls``. A PIN is uniform random, so every model's expected MA on PIN controls is
            1/10 whatever it knows: on 16 of them (96 digits) MA is 0.10 +- 0.03 by chance alone, too coarse to
            resolve a 75% collateral bound or a 0.9-quantile threshold; 128 (768 digits) give +- 0.011.
        seed: everything is a function of this seed.
    """
    # One function on purpose: the order of its random draws defines the corpus (and so every figure measured
    # on it); splitting it would invite reordering them. Change nothing here without regenerating the figures.
    rng = random.Random(seed)
    corpus = Corpus()
    used_names: set[str] = set()

    def fresh_name() -> str:
        while True:
            name = f"{rng.choice(FIRST_NAMES)} {rng.choice(LAST_NAMES)} {rng.choice('ABCDEFGHJKLMNPRSTW')}."
            if name not in used_names:
                used_names.add(name)
                return name

    for i in range(n_members):
        prompt, completion = _record(rng)
        row = {"id": f"member-{i:04d}", "prompt": prompt, "completion": completion}
        corpus.train.append(dict(row))
        corpus.retain.append({"text": prompt + completion})
        corpus.probes.append({**row, "role": "member", "repetitions": 1, "group": RECORD_GROUP})

    for reps in canary_repetitions:
        for j in range(canaries_per_repetition):
            row = {
                "id": f"canary-x{reps}-{j}",
                "prompt": canary_prompt(fresh_name()),
                "completion": " " + canary_secret(rng, canary_digits),
            }
            corpus.train.extend({**row, "id": f"{row['id']}#{k}"} for k in range(reps))
            corpus.probes.append(
                {
                    **row,
                    "role": "canary",
                    "repetitions": reps,
                    "group": PIN_GROUP,
                    "secret_format": f"digits:{canary_digits}",
                }
            )

    for i in range(n_controls):
        if i % 2 == 0:
            row = {
                "id": f"control-{i:03d}",
                "prompt": canary_prompt(fresh_name()),
                "completion": " " + canary_secret(rng, canary_digits),
                "secret_format": f"digits:{canary_digits}",
                "group": PIN_GROUP,
            }
        else:
            prompt, completion = _record(rng)
            row = {"id": f"control-{i:03d}", "prompt": prompt, "completion": completion, "group": RECORD_GROUP}
        corpus.probes.append({**row, "role": "control", "repetitions": 0})
        corpus.heldout.append({"text": row["prompt"] + row["completion"]})

    for k, (city, _) in enumerate(FACT_SUBJECTS):
        for a, template in enumerate(FACT_TEMPLATES):
            color = COLORS[(k + 3 * a) % len(COLORS)]
            context = template.format(city=city)
            fact = {"prompt": context, "completion": f" {color}."}
            for r in range(fact_repetitions):
                corpus.train.append({"id": f"fact-{a}-{k}#{r}", **fact})
            corpus.retain.append({"text": fact["prompt"] + fact["completion"]})
            wrong = [c for c in COLORS if c != color]
            rng.shuffle(wrong)
            choices = [color, *wrong[:3]]
            rng.shuffle(choices)
            corpus.multiple_choice.append(
                {"context": context, "choices": [f" {c}." for c in choices], "label": choices.index(color)}
            )

    # The base model learns the formats (not the records) before fine-tuning,
    # so SFT is a fine-tuning and the base is a meaningful reference model.
    for _ in range(4 * n_members):
        prompt, completion = _record(rng)
        corpus.pretrain.append({"text": prompt + completion})
    for _ in range(n_members // 2):
        corpus.pretrain.append({"text": canary_prompt(fresh_name()) + " " + canary_secret(rng, canary_digits)})
    # Without text of the notes format in ``retain`` the gate cannot see what erasing the PINs does to
    # every other note (the never-trained controls of that format lost 19% of their likelihood under a
    # gate that passed). The base model's own pre-training notes are such text: never fine-tuned on,
    # never a probe. Taken after every draw, so the rest of the corpus is what it was.
    records, notes = corpus.pretrain[: 4 * n_members], corpus.pretrain[4 * n_members :]
    corpus.retain.extend(dict(r) for r in notes[:retain_per_format] + records[:retain_per_format])
    # The facts are world knowledge the base model already has (pre-training), as a real model's would be:
    # what erasure must not destroy. Fine-tuning repeats them; the multiple-choice benchmark asks them.
    facts = [{"text": r["text"]} for r in corpus.retain if r["text"].startswith("Fact.")]
    corpus.pretrain.extend(dict(f) for f in facts for _ in range(fact_repetitions))

    rng.shuffle(corpus.train)
    # Drawn last, from the same generator, so every row above is what it was with the original 16 per group.
    per_group = {PIN_GROUP: n_controls - n_controls // 2, RECORD_GROUP: n_controls // 2}
    for group in (PIN_GROUP, RECORD_GROUP):
        for _ in range(max(0, controls_per_group - per_group[group])):
            i = n_controls + len(corpus.calibration_controls)
            if group == PIN_GROUP:
                prompt, completion = canary_prompt(fresh_name()), " " + canary_secret(rng, canary_digits)
                extra = {"secret_format": f"digits:{canary_digits}"}
            else:
                (prompt, completion), extra = _record(rng), {}
            row = {"id": f"control-{i:03d}", "prompt": prompt, "completion": completion, **extra, "group": group}
            corpus.calibration_controls.append({**row, "role": "control", "repetitions": 0})
    _hold_out_controls(corpus, rng)
    return corpus


def _hold_out_controls(corpus: Corpus, rng: random.Random) -> None:
    """Redraw every record control whose prompt is a trained prompt, in place (same id, same position).

    Record names repeat (``_record`` draws them freely), so a "never-trained" control could ask the very
    question a trained row asks about the same person, with another answer: not held out. On seed 0 that was
    9 of the 128 record controls with 160 members and 38 with 640, and the toy recipe's SFT made one of them
    greedily extractable (the trained person's street and town, a plausible number), so the flag rule rightly
    flagged a "control". Redrawn after every other draw, so every other row is what it was.
    """
    trained = {row["prompt"] for row in corpus.train}
    for rows in (corpus.probes, corpus.calibration_controls):
        for k, row in enumerate(rows):
            if row["role"] != "control" or row["prompt"] not in trained:
                continue
            prompt, completion = _record(rng)
            while prompt in trained:
                prompt, completion = _record(rng)
            rows[k] = {**row, "prompt": prompt, "completion": completion}
            if rows is corpus.probes:  # the first controls' text is heldout.jsonl, in control order
                index = int(row["id"].split("-")[1])
                corpus.heldout[index] = {"text": prompt + completion}
