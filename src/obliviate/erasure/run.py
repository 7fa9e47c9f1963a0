"""``run_erase``: load a model and a forget file, erase, save a new directory (used by the CLI and the demo).

    python -c "from obliviate.erasure import run_erase; help(run_erase)"

A killed run leaves ``<out>.partial/`` behind; running again with the same ``out`` (and the same
options) resumes from the last finished chunk and ends with the same weights.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable
from pathlib import Path

from obliviate.data.probes import ProbeError, ProbeSet
from obliviate.erasure.config import EraseConfig
from obliviate.erasure.result import check_new_dir


def partial_dir(out: str | os.PathLike) -> Path:
    """Where the resume state of ``out`` lives."""
    out = Path(out)
    return out.with_name(f"{out.name}.partial")


def load_forget(
    path, tokenizer, controls_path=None, ids: Iterable[str] | None = None, roles: Iterable[str] | None = None
) -> tuple[ProbeSet, ProbeSet | None]:
    """The forget set (roles other than control) and the controls (``controls_path``, else the file's controls).

    Raises:
        ProbeError: token ids that disagree with the tokenizer, unknown ``ids``, an empty forget set, or a
            controls file without control rows.
    """
    from obliviate.data import load_probes
    from obliviate.data.flagged import read_flagged

    rows = read_flagged(path, tokenizer)
    forget = ProbeSet(p for p in rows if p.role != "control")
    controls = ProbeSet(p for p in rows if p.role == "control") or None
    if controls_path is not None:
        controls = load_probes(controls_path, tokenizer, roles=("control",))
        if len(controls) == 0:
            raise ProbeError(f"{controls_path} has no rows with role 'control'; controls are probes never trained on.")
    if roles is not None:
        roles = [roles] if isinstance(roles, str) else list(roles)
        forget = ProbeSet(p for p in forget if p.role in roles)
    if ids is not None:
        ids = list(ids)
        unknown = [i for i in ids if i not in forget]
        if unknown:
            raise ProbeError(
                f"unknown forget ids {unknown[:5]}{' …' if len(unknown) > 5 else ''}: not among the "
                f"{len(forget)} non-control rows of {path} (ids look like {', '.join(forget.ids[:3])})."
            )
        forget = forget.subset(ids)
    if len(forget) == 0:
        raise ProbeError(
            f"the forget set from {path} is empty (it holds only control rows, or --ids/--roles selected none): "
            "there is nothing to erase."
        )
    return forget, controls


def filter_retain(retain_path, forget: ProbeSet, tokenizer) -> tuple[list[str], dict]:
    """Drop retain rows whose text is a forget sequence: one cannot both keep and forget it.

    Returns:
        The kept texts (always a list, whether or not a row was dropped), and ``{"path", "rows", "dropped"}``
        for the report.
    """
    from obliviate.data.probes import read_jsonl

    rows = read_jsonl(retain_path)
    bad = [n for n, r in enumerate(rows, 1) if not isinstance(r, dict) or not isinstance(r.get("text"), str)]
    if bad:
        raise ProbeError(f'{retain_path}:{bad[0]}: retain rows need a "text" string field.')
    erased = {
        (
            p.prefix + p.suffix if p.prefix is not None and p.suffix is not None else tokenizer.decode(p.input_ids)
        ).strip()
        for p in forget
    }
    kept = [r["text"] for r in rows if r["text"].strip() not in erased]
    if not kept:
        raise ProbeError(f"every row of {retain_path} is a sequence being erased: give retain text to keep.")
    return kept, {"path": str(retain_path), "rows": len(rows), "dropped": len(rows) - len(kept)}


def run_erase(
    model_path: str | os.PathLike,
    forget_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    config: EraseConfig | None = None,
    controls_path: str | os.PathLike | None = None,
    retain_path: str | os.PathLike | None = None,
    ids: Iterable[str] | None = None,
    roles: Iterable[str] | None = None,
    progress: bool = True,
    heldout_path: str | os.PathLike | None = None,
    neighbors_path: str | os.PathLike | None = None,
):
    """Erase the sequences of ``forget_path`` from the model at ``model_path`` into the new ``out_dir``.

    Args:
        model_path: model directory (or hub name) loadable by ``AutoModelForCausalLM``.
        forget_path: a ``flagged.jsonl`` from the callback or any probes file (control rows become controls).
        out_dir: the output directory; must not exist (a ``<out>.partial/`` beside it is resumed from).
        config: the :class:`EraseConfig` (default: EMSO defaults).
        controls_path: probes whose ``control`` rows set the forgetting thresholds; its member/canary rows not
            being erased are reported as collateral (their MA and loss change per group).
        retain_path: ``{"text"}`` JSONL, split into the part losses may use, the gate's part and an audit part.
        heldout_path: ``{"text"}`` JSONL neither the gate nor any loss reads, scored before/after for the report.
        neighbors_path: ``{"text"}`` JSONL of records of the forget set's format that are kept (other customers'
            records): the retain term reads all of them, the gate none.
        ids: erase only these ids of the forget file.
        roles: erase only rows with these roles (e.g. ``["canary"]``).
        progress: progress bars.

    Returns:
        Path: ``out_dir``, holding the model (or LoRA adapter), tokenizer, ``erasure_report.json`` and plots.
    """
    from obliviate.erasure.eraser import Eraser

    config = config or EraseConfig()
    out = check_new_dir(out_dir)
    _check_inputs(out, model_path, config, forget_path, controls_path, retain_path, heldout_path, neighbors_path)
    model, tokenizer, forget, controls, collateral, retain, retain_info = _load_inputs(
        config, model_path, forget_path, controls_path, retain_path, ids, roles
    )
    eraser = Eraser(
        model,
        tokenizer,
        forget,
        config,
        controls=controls,
        retain=retain,
        checkpoint_dir=partial_dir(out),
        progress=progress,
        heldout=heldout_path,
        collateral=collateral,
        neighbors=neighbors_path,
    )
    _write_outputs(eraser, eraser.erase(), retain_info, out)
    return out


def _check_inputs(
    out: Path, model_path, config: EraseConfig, forget_path, controls_path, retain_path, heldout_path, neighbors_path
):
    """Fail before any model is loaded: a missing input file, graddiff without retain text, or ``out`` in the model."""
    for path, what in (
        (forget_path, "forget"),
        (controls_path, "controls"),
        (retain_path, "retain"),
        (heldout_path, "heldout"),
        (neighbors_path, "neighbors"),
    ):
        if path is not None and not Path(path).is_file():
            raise FileNotFoundError(f"{what} file {path} does not exist.")
    if config.method == "graddiff" and retain_path is None:
        raise ValueError('method graddiff needs retained text: pass --retain FILE ({"text"} JSONL).')
    model_dir = Path(model_path).expanduser()
    if model_dir.is_dir():
        resolved = out.expanduser().resolve()
        if resolved == model_dir.resolve() or model_dir.resolve() in resolved.parents:
            raise ValueError(
                f"--out {out} is inside the input model directory {model_dir}; the input is never "
                "modified: write the erased model elsewhere."
            )


def _load_inputs(config: EraseConfig, model_path, forget_path, controls_path, retain_path, ids, roles):
    """The model and tokenizer, the forget set and controls, the collateral probes and the retain text.

    Returns:
        ``(model, tokenizer, forget, controls, collateral, retain, retain_info)``: ``collateral`` is the controls
        file's member/canary rows not being erased (or None), ``retain_info`` the report's ``retain`` entry.
    """
    from obliviate.modeling import load_model_and_tokenizer

    model, tokenizer = load_model_and_tokenizer(model_path, config.dtype)
    forget, controls = load_forget(forget_path, tokenizer, controls_path, ids, roles)
    collateral = None
    if controls_path is not None:
        from obliviate.data import load_probes

        collateral = (
            ProbeSet(p for p in load_probes(controls_path, tokenizer, roles=("member", "canary")) if p.id not in forget)
            or None
        )
    retain, retain_info = retain_path, None
    if retain_path is not None:
        retain, retain_info = filter_retain(retain_path, forget, tokenizer)
    return model, tokenizer, forget, controls, collateral, retain, retain_info


def _write_outputs(eraser, result, retain_info: dict | None, out: Path) -> None:
    """Save the result into ``out`` (main process only) and drop the resume state it no longer needs."""
    result.report["retain"] = retain_info
    if eraser.accelerator.is_main_process:
        result.save(out)
        shutil.rmtree(partial_dir(out), ignore_errors=True)
    eraser.accelerator.wait_for_everyone()
