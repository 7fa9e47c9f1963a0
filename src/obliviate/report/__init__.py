"""Run reports: ``report.md`` and a self-contained ``report.html`` with PNG plots.

obliviate report runs/demo
python -c "from obliviate.report import write_report; print(write_report('runs/demo'))"
"""

from __future__ import annotations

import importlib

# Lazy, so `obliviate.report.tables` (used by every command's terminal output) does not import matplotlib.
_EXPORTS = {
    "write_report": "build",
    "group_table": "build",
    "utility_rows": "build",
    "collect_run": "collect",
    "RunDirError": "collect",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"obliviate.report.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'obliviate.report' has no attribute {name!r}")
