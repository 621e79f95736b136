"""One registry type for merge methods, reductions, inits and hub tasks: name -> entry, an
unknown name fails with a did-you-mean error, and an entry written as "module:attr" is
imported on first lookup (so listing and validating names imports no torch)."""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Iterator, Mapping
from typing import Any, Generic, TypeVar

T = TypeVar("T")


def did_you_mean(name: str, known: list[str]) -> str:
    close = difflib.get_close_matches(str(name), known, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return f"{hint}known: {', '.join(sorted(known)) or '(none)'}"


def load(ref: str) -> Any:
    """The object a "package.module:attr" reference names."""
    module, _, attr = ref.partition(":")
    return getattr(importlib.import_module(module), attr)


class Registry(Mapping[str, T], Generic[T]):
    """Ordered name -> entry. `lazy=True`: entries are "module:attr" references, imported
    and cached when first looked up."""

    def __init__(self, what: str, entries: dict[str, Any], error: type[Exception] = ValueError,
                 lazy: bool = False) -> None:
        self.what, self.error, self.lazy = what, error, lazy
        self._entries = dict(entries)
        self._loaded: dict[str, T] = {}

    def __getitem__(self, name: str) -> T:
        if name not in self._entries:
            raise self.error(f"unknown {self.what} {name!r}; {did_you_mean(name, list(self._entries))}")
        if not self.lazy:
            return self._entries[name]
        if name not in self._loaded:
            self._loaded[name] = load(self._entries[name])
        return self._loaded[name]

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)
