"""Output paths checked before any work: writable, not inside an input, never replacing what is not ours.

    from obliviate.commands._paths import check_output_dir, claim_outputs

The rule every command follows: never write into an input (a model directory it reads), never replace a
file the command did not write, and, when ``--overwrite`` asks for a replacement, say what was replaced.
These checks run before a model is loaded, so a bad ``--out`` fails in the first second, not after a chunk.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable, Mapping
from pathlib import Path


def check_output_dir(out: str | os.PathLike, flag: str = "--out") -> Path:
    """Check that directory ``out`` can be created (or is an existing directory) and written.

    Raises:
        NotADirectoryError: ``out`` or one of its parents is a file.
        PermissionError: the nearest existing parent is not writable.
    """
    out = Path(out).expanduser()
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"{flag} {out} is a file, not a directory: choose a directory path.")
    node = out
    while not node.exists():
        if node.parent == node:
            break
        node = node.parent
    if node.exists() and not node.is_dir():
        raise NotADirectoryError(f"{flag} {out} cannot be created: {node} is a file, not a directory.")
    if not os.access(node, os.W_OK | os.X_OK):
        raise PermissionError(
            f"{flag} {out} cannot be written: {node} is not writable by this user. Choose a directory you can write to."
        )
    return out


def check_not_inside(
    out: str | os.PathLike, inputs: Mapping[str, str | os.PathLike | None], flag: str = "--out"
) -> None:
    """Refuse an output directory that is (or is inside) an input directory: inputs are never modified.

    Args:
        out: the output directory.
        inputs: ``{what: path}`` of the command's input directories (None entries and hub names are skipped).
    """
    target = Path(out).expanduser().resolve()
    for what, path in inputs.items():
        if path is None or not Path(path).expanduser().is_dir():
            continue
        source = Path(path).expanduser().resolve()
        if target == source or source in target.parents:
            raise ValueError(
                f"{flag} {out} is inside the input {what} directory {path}; inputs are never "
                "modified: write the output elsewhere."
            )


def claim_outputs(
    out: str | os.PathLike, names: Iterable[str], overwrite: bool, command: str, ours: bool = True, remove: bool = False
) -> list[Path]:
    """The files/directories ``names`` under ``out`` that the command is about to write, checked for overwrites.

    Args:
        out: the output directory.
        names: what the command writes there (files or directories).
        overwrite: ``--overwrite`` was given: existing ones may be replaced.
        command: the command's name, for messages.
        ours: whether the existing entries were written by this command (e.g. its marker file is there);
            when False they are never replaced, even with ``--overwrite``.
        remove: delete the existing entries now (a run whose new output would not cover all the old files).

    Returns:
        The entries that exist (and will be replaced); print them with :func:`replaced_note` after writing.

    Raises:
        FileExistsError: an entry exists and ``overwrite`` is False (or it is not the command's own).
    """
    out = Path(out)
    existing = [out / name for name in names if (out / name).exists() or (out / name).is_symlink()]
    if not existing:
        return []
    listed = ", ".join(p.name for p in existing)
    if not ours:
        raise FileExistsError(
            f"{out} already holds {listed}, not written by `obliviate {command}`; it is never "
            "replaced. Choose another --out."
        )
    if not overwrite:
        raise FileExistsError(
            f"{out} already holds {listed} from an earlier `obliviate {command}`; pass "
            "--overwrite to replace them, or choose another --out."
        )
    if remove:
        for path in existing:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
    return existing


def replaced_note(replaced: list[Path]) -> str:
    """``"replaced (--overwrite): a, b in DIR"`` or ``""``."""
    if not replaced:
        return ""
    return f"replaced (--overwrite): {', '.join(p.name for p in replaced)} in {replaced[0].parent}"
