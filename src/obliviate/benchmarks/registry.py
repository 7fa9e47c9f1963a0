"""The benchmark registry: recipe string -> :class:`~obliviate.benchmarks.base.UtilityBenchmark` class.

    python -c "from obliviate.benchmarks import BENCHMARKS; print(BENCHMARKS.names())"

A new benchmark is one small module with a class decorated ``@register_benchmark("name")``,
imported from ``obliviate/benchmarks/__init__.py`` (the way PEFT registers its tuners). The
registry is the same :class:`~obliviate.registry.Registry` the erasure losses and selectors use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from obliviate.registry import Registry, UnknownNameError

if TYPE_CHECKING:
    from obliviate.benchmarks.base import UtilityBenchmark


class UnknownBenchmarkError(UnknownNameError):
    """A recipe named a benchmark that is not registered (a ``ValueError``)."""


BENCHMARKS: Registry[UtilityBenchmark] = Registry(
    "benchmark",
    key="name",
    error=UnknownBenchmarkError,
    hint="A new one is a UtilityBenchmark subclass decorated @register_benchmark('name') (docs/benchmarks.md).",
)
"""Every registered benchmark class by the ``name`` a recipe uses."""


def register_benchmark(name: str):
    """Class decorator registering a benchmark under ``name`` (also set as the class's ``name``).

    Args:
        name: the string recipes use in ``{name: ...}`` entries.

    Returns:
        The decorator; registering a second class under a taken name raises
        :class:`~obliviate.registry.DuplicateNameError` (a ``ValueError``).
    """
    return BENCHMARKS.register(name)


def get_benchmark(name: str) -> type[UtilityBenchmark]:
    """The class registered as ``name``.

    Raises:
        UnknownBenchmarkError: naming the known benchmarks and the nearest match.
    """
    return BENCHMARKS.get(name)
