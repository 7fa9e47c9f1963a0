"""One registry shape for every extension point: erasure losses, weight selectors, utility benchmarks.

    python -c "from obliviate.erasure.losses import LOSSES; print(LOSSES.names())"

A component is a class registered under the string a recipe uses to name it::

    from obliviate.erasure.losses import LOSSES, EraseLoss

    @LOSSES.register("my_loss")  # same as @register_loss("my_loss")
    class MyLoss(EraseLoss):
        ...

The registry refuses a second class under a taken name (a silent overwrite would make a recipe's
meaning depend on import order) and answers an unknown name with the known ones and the nearest
match, so a typo in a recipe fails with the fix in the message (the way PEFT and transformers'
``AutoConfig`` name the valid model types).
"""

from __future__ import annotations

import difflib
import importlib
import pkgutil
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")

_MISSING = object()


class RegistryError(ValueError):
    """A registry was used wrongly: see :class:`UnknownNameError` and :class:`DuplicateNameError`."""


class UnknownNameError(RegistryError):
    """A name that no component of the registry's kind is registered under."""


class DuplicateNameError(RegistryError):
    """A second class registered under a name that is already taken."""


def import_package_modules(package: str, path, skip: tuple[str, ...] = ("base",)) -> None:
    """Import every module of ``package`` (its ``__path__``) but ``skip``, so each one's registration decorator
    runs: adding a component to a registry's package is then one new file."""
    for module in pkgutil.iter_modules(path):
        if module.name not in skip:
            importlib.import_module(f"{package}.{module.name}")


def nearest_name(name: str, names) -> str | None:
    """The registered name closest to ``name`` (difflib ratio >= 0.5), or None."""
    match = difflib.get_close_matches(str(name), list(names), n=1, cutoff=0.5)
    return match[0] if match else None


class Registry(Generic[T]):
    """Classes of one kind of component, by the name recipes use for them.

    Iterating, ``len``, ``in`` and ``registry[name]`` work as on a dict of name -> class (so
    ``sorted(LOSSES)`` lists the names); lookups of unknown names raise :class:`UnknownNameError`.

    Args:
        kind (`str`):
            What the components are, in messages: ``"loss"``, ``"selector"``, ``"benchmark"``.
        plural (`str`, *optional*):
            ``kind`` in the plural (default ``kind + "s"``), as in "Known losses: ...".
        key (`str`, *optional*):
            The recipe key whose value is looked up here (``"method"``), named in the error.
        hint (`str`, *optional*):
            Where to look or how to add one, appended to the unknown-name error, e.g.
            ``"Add one with @register_loss('name') in obliviate/erasure/losses/ (docs/erasure.md)."``.
        error (`type[UnknownNameError]`, *optional*):
            The exception raised for an unknown name (a subclass, for callers that catch a specific one).
        attribute (`str`, *optional*):
            Class attribute set to the registered name (default ``"name"``); None sets nothing.
    """

    def __init__(
        self,
        kind: str,
        *,
        plural: str | None = None,
        key: str | None = None,
        hint: str = "",
        error: type[UnknownNameError] = UnknownNameError,
        attribute: str | None = "name",
    ):
        if not issubclass(error, UnknownNameError):
            raise TypeError(f"error must subclass UnknownNameError, got {error.__qualname__}.")
        self.kind = kind
        self.plural = plural or f"{kind}s"
        self.key = key
        self.hint = hint
        self.error = error
        self.attribute = attribute
        self._entries: dict[str, type[T]] = {}

    def register(self, name: str) -> Callable[[type[T]], type[T]]:
        """Class decorator registering the class under ``name``.

        Args:
            name (`str`): the string recipes use for this component.

        Returns:
            The decorator, which returns the class unchanged apart from its ``name`` attribute.

        Raises:
            DuplicateNameError: ``name`` is taken by another class (registering the same class twice is
                allowed, so re-importing a module is harmless).
        """
        if not isinstance(name, str) or not name:
            raise TypeError(f"a {self.kind} is registered under a non-empty string, got {name!r}.")

        def decorator(cls: type[T]) -> type[T]:
            taken = self._entries.get(name)
            if taken is not None and taken is not cls:
                raise DuplicateNameError(
                    f"{self.kind} {name!r} is already registered by {taken.__module__}.{taken.__qualname__}; "
                    f"choose another name for {cls.__module__}.{cls.__qualname__}."
                )
            if self.attribute is not None:
                setattr(cls, self.attribute, name)
            self._entries[name] = cls
            return cls

        return decorator

    def get(self, name: str, default=_MISSING) -> type[T]:
        """The class registered as ``name``.

        Args:
            name (`str`): a registered name.
            default (*optional*): returned for an unknown name instead of raising (as ``dict.get``).

        Raises:
            UnknownNameError (or the registry's ``error``): naming the known names and the nearest match.
        """
        if name in self:
            return self._entries[name]
        if default is not _MISSING:
            return default
        raise self.error(self.unknown_message(name))

    def check(self, name: str, error: type[Exception] | None = None) -> None:
        """Raise ``error`` (default the registry's) with :meth:`unknown_message` when ``name`` is unknown."""
        if name not in self:
            raise (error or self.error)(self.unknown_message(name))

    def unknown_message(self, name) -> str:
        """What is wrong with ``name`` and what to write instead."""
        key = f" (recipe key `{self.key}`)" if self.key else ""
        match = nearest_name(name, self._entries)
        suggestion = f" Did you mean {match!r}?" if match else ""
        hint = f" {self.hint}" if self.hint else ""
        return f"unknown {self.kind} {name!r}{key}.{suggestion} Known {self.plural}: {', '.join(self.names())}.{hint}"

    def names(self) -> list[str]:
        """The registered names, sorted."""
        return sorted(self._entries)

    def items(self) -> list[tuple[str, type[T]]]:
        """``(name, class)`` pairs sorted by name."""
        return sorted(self._entries.items())

    def __getitem__(self, name: str) -> type[T]:
        return self.get(name)

    def __contains__(self, name: object) -> bool:
        # Only strings are names: a YAML list or mapping is unknown, not a TypeError on hashing.
        return isinstance(name, str) and name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}: {', '.join(self.names())})"
