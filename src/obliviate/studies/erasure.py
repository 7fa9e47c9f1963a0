"""Study 4, erasure (Zhang et al. 2025, EMSO, arXiv 2408.04983): EMSO and its baselines on one request grid.

    obliviate study recipes/studies/erasure.yaml --out runs/studies/erasure

EMSO erases memorized sequences by maximizing the entropy of the model's next-token distributions on
them (a bounded loss) while updating only the weights a contrastive gradient score selects; its claim
is that it keeps utility better than gradient ascent at equal forgetting, most on large requests.
Here the toy is fine-tuned long enough (``epochs`` on ``n_members`` records) that hundreds of trained
sequences are memorized; forget sets are its N most memorized members/canaries (exactly extractable
first, then by MA), the same for every method; each run erases a fresh copy of the model, by default
without a gate (to the forgetting criterion or ``max_steps``, so the methods are compared at what
forgetting cost them), or under the block's ``gate`` (``default``: the product's gate, so the methods are
compared at what they forget within the same utility budget), and measures: forgotten share (the
per-sequence criterion, and Jang et al.'s set-mean criterion on the erased model), held-out perplexity
change and KL to the original on the toy's never-trained text, multiple-choice accuracy change, MA
change of the never-trained controls (128 per group) and of the trained sequences not asked to be
forgotten, collapse (held-out perplexity more than doubled), what the gate rejected and wall time. The
run blocks (which arms, sizes and seeds, which gate) are in the recipe; the runs are
:mod:`obliviate.studies.erasure_runs`, the tables and plot :mod:`obliviate.studies.erasure_report`.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from obliviate.studies.common import StudyConfig, StudyError, positive_int, prepare_base, write_outputs

ARMS = {
    "emso": ("emso", "contrastive"),
    "emso_entropy": ("emso:entropy", "contrastive"),
    "entropy_only": ("emso", "all"),
    "emso_retain": ("emso", "contrastive_retain"),
    "ga": ("ga", "all"),
    "graddiff": ("graddiff", "all"),
    "npo": ("npo", "all"),
    "ga_to_reference": ("ga_to_reference", "contrastive"),
}
"""Named arms of the method comparison -> (method, selector). ``emso`` is the paper-faithful one (forget-only
contrastive selection, the library's ``uniform_ce`` loss); ``emso_entropy`` the same with the paper's other form
of the loss, -H(p_t) (``method:variant`` names an EMSO ``entropy_variant``); ``entropy_only`` the same loss on
every weight (EMSO without its selective optimization);
``emso_retain`` obliviate's retain-contrast selector; GA, GradDiff and NPO update every weight, as in their papers;
``ga_to_reference`` is obliviate's product method (GA on each token only while the model finds it likelier than the
seed's base model before SFT, plus GradDiff's retain term) on EMSO's contrastive 1%, as recipes/demo.yaml runs it."""

COLLAPSE_RATIO = 2.0
"""A run collapsed when its held-out perplexity after erasure is more than this times the one before."""


def split_method(spec: str) -> tuple[str, str | None]:
    """``(method, entropy_variant)`` of an arm's method: ``emso:entropy`` -> ``("emso", "entropy")``, ``ga`` ->
    ``("ga", None)`` (the method's default)."""
    method, _, variant = spec.partition(":")
    return method, variant or None


def arm_pair(arm: str) -> tuple[str, str]:
    """``(method, selector)`` of an arm: a name of :data:`ARMS` or ``method/selector``."""
    if arm in ARMS:
        return ARMS[arm]
    if arm.count("/") == 1:
        method, selector = arm.split("/")
        return method, selector
    raise StudyError(f"arm {arm!r} is neither one of {', '.join(ARMS)} nor 'method/selector' (e.g. ga/magnitude).")


def gate_tag(gate) -> str:
    """A run's gate in its file name: ``""`` ungated, ``"-gated"`` the default gate, ``"-gate<hash>"`` a section."""
    if gate is None:
        return ""
    if gate == "default":
        return "-gated"
    return "-gate" + hashlib.sha256(json.dumps(gate, sort_keys=True, default=str).encode()).hexdigest()[:8]


def arm_name(method: str, selector: str) -> str:
    """The arm's name: its :data:`ARMS` name when it has one, else ``method/selector``."""
    return next((name for name, pair in ARMS.items() if pair == (method, selector)), f"{method}/{selector}")


@dataclass
class RunBlock:
    """One block of runs: every arm x size x seed. Arms are ``arms`` plus the product ``methods`` x ``selectors``;
    ``n_members`` / ``epochs`` (default: the study's) say which SFT model the block erases from; ``gate`` (default
    null: ungated) is the EraseConfig ``gate`` of every run of the block (``default``: the product's gate)."""

    name: str
    sizes: list[int]
    seeds: list[int]
    n_members: int
    epochs: int
    arms: list[str] = field(default_factory=list)
    methods: list[str] = field(default_factory=list)
    selectors: list[str] = field(default_factory=list)
    gate: Any = None

    def pairs(self) -> list[tuple[str, str]]:
        out = [arm_pair(a) for a in self.arms] + list(itertools.product(self.methods, self.selectors))
        return list(dict.fromkeys(out))


@dataclass
class ErasureStudyConfig(StudyConfig):
    """Study 4: erasure methods x selectors x forget-set sizes, forgetting against utility."""

    n_members: int = field(
        default=160, metadata={"help": "Records in the SFT corpus of a block that does not set its own."}
    )
    epochs: int = field(default=30, metadata={"help": "SFT epochs of a block that does not set its own."})
    blocks: list = field(
        default_factory=list,
        metadata={
            "help": "Run blocks {name, sizes, seeds, arms | methods x selectors}; a run shared by blocks is run once."
        },
    )
    erase: dict = field(
        default_factory=dict, metadata={"help": "EraseConfig fields every run shares (gate null: none)."}
    )
    selector_learning_rates: dict = field(
        default_factory=lambda: {"all": 1e-4},
        metadata={"help": "learning_rate by selector, over erase.learning_rate (all weights move 100x more)."},
    )
    el_n: int = field(default=3, metadata={"help": "n of EL_n in the set-mean criterion (short toy sequences)."})
    el_stride: int = field(default=2, metadata={"help": "stride over prefix lengths of EL_n (cost)."})
    max_others: int = field(
        default=128, metadata={"help": "Trained sequences not asked to be forgotten scored for collateral (a sample)."}
    )
    save_models: bool = field(default=False, metadata={"help": "Save each erased model under OUT/runs/<run>/model."})
    only_blocks: list | None = field(
        default=None,
        metadata={
            "help": "Run and tabulate only these blocks (names), e.g. --set only_blocks=[entropy]; null: every block. "
            "Runs another block shares stay cached under --out either way."
        },
    )

    def __post_init__(self):
        super().__post_init__()
        for name in ("n_members", "epochs", "el_n", "el_stride", "max_others"):
            positive_int(getattr(self, name), name)
        if not isinstance(self.erase, dict) or "gate" in self.erase and self.erase["gate"] not in (None,):
            raise StudyError(
                "erase must be a mapping of EraseConfig fields, with gate: null (runs go ungated); a gate goes on "
                "a block (gate: default)."
            )
        if not isinstance(self.blocks, list) or not self.blocks:
            raise StudyError("blocks must be a non-empty list of {name, sizes, seeds, arms | methods x selectors}.")
        self.blocks = [self._block(b) for b in self.blocks]
        if self.only_blocks is not None:
            names = [b.name for b in self.blocks]
            if not isinstance(self.only_blocks, list) or not self.only_blocks or set(self.only_blocks) - set(names):
                raise StudyError(
                    f"only_blocks must be a non-empty list of block names ({', '.join(names)}); got "
                    f"{self.only_blocks!r}."
                )
            self.blocks = [b for b in self.blocks if b.name in self.only_blocks]

    def _block(self, raw) -> RunBlock:
        if isinstance(raw, RunBlock):
            return raw
        keys = ("name", "sizes", "seeds", "n_members", "epochs", "arms", "methods", "selectors", "gate")
        if not isinstance(raw, dict) or set(raw) - set(keys) or not {"name", "sizes"} <= set(raw):
            raise StudyError(f"a block has keys {', '.join(keys)} (name and sizes required); got {raw!r}.")
        block = RunBlock(**{"seeds": self.seeds[:1], "n_members": self.n_members, "epochs": self.epochs, **raw})
        for n in (*block.sizes, block.n_members, block.epochs):
            positive_int(n, f"block {block.name}: sizes, n_members and epochs")
        if unknown := set(block.seeds) - set(self.seeds):
            raise StudyError(f"block {block.name}: seeds {sorted(unknown)} are not among the study's seeds.")
        if not block.pairs():
            raise StudyError(f"block {block.name} names no arm: give arms, or methods and selectors.")
        self._check_pairs(block)
        self._check_gate(block)
        return block

    def _check_gate(self, block: RunBlock) -> None:
        """The block's gate as EraseConfig reads it (its keys and schedule checked now, not after hours of runs)."""
        from obliviate.erasure import EraseConfig
        from obliviate.erasure.config import EraseConfigError

        try:
            EraseConfig(gate=block.gate)
        except EraseConfigError as err:
            raise StudyError(f"block {block.name}: gate: {err}") from err

    def _check_pairs(self, block: RunBlock) -> None:
        from obliviate.erasure import LOSSES, SELECTORS
        from obliviate.erasure.config import ENTROPY_VARIANTS

        for spec, selector in block.pairs():
            method, variant = split_method(spec)
            if method not in LOSSES.names() or selector not in SELECTORS.names():
                raise StudyError(
                    f"block {block.name}: {spec}/{selector} is not a method/selector pair; methods: "
                    f"{', '.join(LOSSES.names())}; selectors: {', '.join(SELECTORS.names())}."
                )
            if variant is not None and (method != "emso" or variant not in ENTROPY_VARIANTS):
                raise StudyError(
                    f"block {block.name}: {spec!r}: only emso takes a variant, one of {', '.join(ENTROPY_VARIANTS)} "
                    "(e.g. emso:entropy)."
                )

    def runs(self) -> list[tuple[tuple[int, int, int], int, str, str, Any]]:
        """Every distinct ((seed, n_members, epochs), size, method, selector, gate) of the blocks, in block order."""
        keys, seen = [], set()
        for b in self.blocks:
            for s, n, (m, sel) in itertools.product(b.seeds, b.sizes, b.pairs()):
                key = ((s, b.n_members, b.epochs), n, m, sel, b.gate)
                if (tag := (*key[:4], gate_tag(b.gate))) not in seen:
                    seen.add(tag)
                    keys.append(key)
        return keys


def run_study(config: ErasureStudyConfig, out: Path) -> dict:
    from obliviate.studies.erasure_report import plots, tables
    from obliviate.studies.erasure_runs import erase_all

    start = time.perf_counter()
    base = prepare_base(out, config)
    runs, models = erase_all(config, base, out)
    results = {"models": models, "runs": runs}
    results["plots"] = plots(out, runs)
    write_outputs(out, "erasure", config, results, tables(config, runs, models), time.perf_counter() - start)
    return results
