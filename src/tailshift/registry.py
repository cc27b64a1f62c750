"""Name -> class registries, so configs pick components by name and nothing branches on names."""
from __future__ import annotations

from typing import Callable, Generic, TypeVar

T = TypeVar("T")


class UnknownNameError(ValueError):
    """A config named something no registry knows."""


class Registry(Generic[T]):
    """Maps names to factories; an unknown name lists the known ones."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, T] = {}
        self._families: dict[str, Callable[[str], T]] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def add(obj: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._entries[name] = obj
            return obj

        return add

    def register_family(self, prefix: str, resolve: Callable[[str], T]) -> None:
        """Names ``prefix:MEMBER`` (e.g. torchvision:resnet50) answered by ``resolve(MEMBER)``, which
        refuses a member it does not know by naming the ones it does."""
        self._families[prefix] = resolve

    def get(self, name: str) -> T:
        prefix, colon, member = name.partition(":")
        if colon and prefix in self._families:
            return self._families[prefix](member)
        try:
            return self._entries[name]
        except KeyError:
            known = ", ".join(self.names())
            raise UnknownNameError(f"unknown {self.kind} {name!r}; known: {known}") from None

    def names(self) -> list[str]:
        return sorted(self._entries) + [f"{prefix}:NAME" for prefix in sorted(self._families)]

    def __contains__(self, name: str) -> bool:
        return name in self._entries
