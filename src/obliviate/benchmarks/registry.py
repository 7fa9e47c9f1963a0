"""The benchmark registry: recipe string -> :class:`~obliviate.benchmarks.base.UtilityBenchmark` class.

    python -c "from obliviate.benchmarks import BENCHMARKS; print(sorted(BENCHMARKS))"

A new benchmark is one small module with a class decorated ``@register_benchmark("name")``,
imported from ``obliviate/benchmarks/__init__.py`` (the way PEFT registers its tuners).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from obliviate.config import nearest

if TYPE_CHECKING:
    from obliviate.benchmarks.base import UtilityBenchmark

BENCHMARKS: dict[str, type[UtilityBenchmark]] = {}
"""Every registered benchmark class by the ``name`` a recipe uses."""


class UnknownBenchmarkError(ValueError):
    """A recipe named a benchmark that is not registered."""


def register_benchmark(name: str):
    """Class decorator registering a benchmark under ``name`` (also set as the class's ``name``).

    Args:
        name: the string recipes use in ``{name: ...}`` entries.

    Returns:
        The decorator; registering a second class under a taken name raises ``ValueError``.
    """

    def decorator(cls):
        if name in BENCHMARKS and BENCHMARKS[name] is not cls:
            raise ValueError(f"benchmark {name!r} is already registered by {BENCHMARKS[name].__qualname__}.")
        cls.name = name
        BENCHMARKS[name] = cls
        return cls

    return decorator


def get_benchmark(name: str) -> type[UtilityBenchmark]:
    """The class registered as ``name``.

    Raises:
        UnknownBenchmarkError: naming the known benchmarks and the nearest match.
    """
    if name not in BENCHMARKS:
        raise UnknownBenchmarkError(f"unknown benchmark {name!r}.{nearest(str(name), BENCHMARKS)} "
                                    f"Known benchmarks: {', '.join(sorted(BENCHMARKS))}.")
    return BENCHMARKS[name]
