"""Registries: one name → one implementation, defined once, as timm does for models.

Every vocabulary of the product — objective types, pruning methods, datasets, evaluation attacks,
architectures — is a :class:`Registry`. The spec's enumerations (``objective.type``,
``pruning.methods``, ``dataset.name``) are built from the registries, so adding an entry is adding
one module that registers it (see CONTRIBUTING.md); nothing else lists the names.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Iterator
from typing import Any, Generic, Literal, TypeVar

from core.errors import CoreError

T = TypeVar("T")


class Registry(Generic[T]):
    """Named entries of one kind. ``field`` is the spec field a wrong name is reported against."""

    def __init__(self, kind: str, field: str) -> None:
        self.kind, self.field = kind, field
        self._entries: dict[str, T] = {}

    def register(self, name: str, entry: T) -> T:
        """Add ``entry`` under ``name``; a second entry under a taken name is a programming error."""
        if not name or not name.replace("_", "").replace("-", "").isalnum():
            raise ValueError(f"{self.kind} name {name!r} must be alphanumeric (with _ or -)")
        if name in self._entries and self._entries[name] is not entry:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._entries[name] = entry
        return entry

    def unregister(self, name: str) -> None:
        """Remove an entry (tests and plug-ins that add one temporarily)."""
        self._entries.pop(name, None)

    def decorator(self, name_of: Callable[[Any], str]) -> Callable[[T], T]:
        """A class decorator registering the class under ``name_of(cls)``."""

        def wrap(entry: T) -> T:
            return self.register(name_of(entry), entry)

        return wrap

    def get(self, name: str) -> T:
        try:
            return self._entries[name]
        except KeyError:
            raise CoreError(
                f"unknown_{self.kind.replace(' ', '_')}",
                self.field,
                f"unknown {self.kind} {name!r}; known: {', '.join(self.names())}",
            ) from None

    def names(self) -> list[str]:
        return sorted(self._entries)

    def literal(self) -> Any:
        """``Literal[<every name>]`` for a Pydantic field: the JSON schema lists the names."""
        return Literal[tuple(self.names())]  # type: ignore[valid-type]

    def items(self) -> list[tuple[str, T]]:
        return sorted(self._entries.items())

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)


def import_submodules(package: str, skip: tuple[str, ...] = ()) -> list[str]:
    """Import every module of ``package`` (their import registers their entries); returns their names.

    This is what makes "one module" enough to add an entry: dropping a file into the package is the
    whole registration."""
    pkg = importlib.import_module(package)
    names = []
    for info in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda i: i.name):
        if info.name.startswith("_") or info.name in skip:
            continue
        importlib.import_module(f"{package}.{info.name}")
        names.append(info.name)
    return names
