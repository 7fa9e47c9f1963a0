"""``evaluate`` metric modules shipped with obliviate, loadable by path with no network.

    HF_EVALUATE_OFFLINE=1 python -c "import evaluate, obliviate.evaluate_metrics as m; print(evaluate.load(m.path('token_f1')))"

Each lives in ``<name>/<name>.py`` (the layout ``evaluate.load(directory)`` expects).
"""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).parent
SHIPPED = tuple(sorted(p.name for p in ROOT.iterdir() if (p / f"{p.name}.py").is_file()))
"""Names of the metric modules shipped with the package."""


def path(name: str) -> str:
    """Filesystem path of the shipped metric ``name`` (``evaluate.load`` accepts it offline)."""
    if name not in SHIPPED:
        raise ValueError(f"no shipped evaluate metric {name!r}; shipped: {', '.join(SHIPPED)}.")
    return str(ROOT / name / f"{name}.py")
