"""The demo's toy build: reused from OUT/toy, copied from the cache, or built once and cached.

    python -c "from obliviate.demo import cache_root; print(cache_root())"
    OBLIVIATE_CACHE=/tmp/cache obliviate demo --quick --out /tmp/demo   # builds, then reuses the cached toy

A build is keyed by the toy's settings and the code that builds it (:func:`toy_key`), so a change to
either rebuilds instead of reusing a stale model.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from dataclasses import asdict
from pathlib import Path

from obliviate.demo.recipe import DemoError


def cache_root() -> Path:
    """``$OBLIVIATE_CACHE``, else ``$XDG_CACHE_HOME/obliviate``, else ``~/.cache/obliviate``."""
    if os.environ.get("OBLIVIATE_CACHE"):
        return Path(os.environ["OBLIVIATE_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "obliviate"


def toy_key(config) -> str:
    """Changes whenever the toy's settings or the code that builds it change."""
    import obliviate.data.synthetic as synthetic
    import obliviate.toy as toy

    h = hashlib.sha256(json.dumps(asdict(config), sort_keys=True).encode())
    for module in (toy, synthetic):
        h.update(Path(module.__file__).read_bytes())
    return h.hexdigest()[:12]


def _is_toy(path: Path) -> bool:
    return (
        (path / "toy_config.json").is_file()
        and (path / "base" / "config.json").is_file()
        and (path / "probes.jsonl").is_file()
    )


def prepare_toy(dest: Path, config, given: str | os.PathLike | None = None) -> tuple[Path, str]:
    """The toy build to use and where it came from (``given``, ``reused``, ``cache`` or ``built``)."""
    if given is not None:
        given = Path(given)
        if not _is_toy(given):
            raise DemoError(
                f"--toy {given} is not a toy build (no base/ and probes.jsonl); write one with "
                f"`obliviate toy --out {given}`, or drop --toy."
            )
        return given, "given"
    key = toy_key(config)
    if _is_toy(dest) and (dest / ".toy-key").is_file() and (dest / ".toy-key").read_text() == key:
        return dest, "reused"
    if dest.exists():
        shutil.rmtree(dest)
    cached = cache_root() / f"toy-{key}"
    if _is_toy(cached):
        shutil.copytree(cached, dest)
        return dest, "cache"
    from obliviate.toy import build_toy

    build_toy(dest, config)
    (dest / ".toy-key").write_text(key)
    with contextlib.suppress(OSError):  # a read-only home only costs the next run a rebuild
        tmp = cached.with_name(f"{cached.name}.tmp-{os.getpid()}")
        shutil.copytree(dest, tmp)
        tmp.rename(cached)
    return dest, "built"
