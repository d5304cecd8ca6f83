"""The engine's error types.

Every error that bad input can cause names the offending field, so that the service can turn it
into a ``google.rpc.BadRequest`` field violation without parsing messages.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TypeVar

V = TypeVar("V")


class EngineError(Exception):
    """Base class of everything the engine raises on purpose."""


class InvalidArgument(EngineError, ValueError):
    """A field of a spec, a configuration or a data array is not acceptable.

    Parameters
    ----------
    field:
        Dotted path of the offending field, e.g. ``"layers[2].activation"``.
    message:
        What is wrong, in a sentence.
    allowed:
        The valid values, when they form a short list.
    """

    def __init__(self, field: str, message: str, allowed: Iterable[str] = ()) -> None:
        self.field = field
        self.message = message
        self.allowed = tuple(allowed)
        text = f"{field}: {message}"
        if self.allowed:
            text += f" (allowed: {', '.join(self.allowed)})"
        super().__init__(text)


def lookup(table: dict[str, V], name: str, field: str) -> V:
    """Return ``table[name]``, or raise :class:`InvalidArgument` listing the valid names."""
    try:
        return table[name]
    except (KeyError, TypeError):
        raise InvalidArgument(field, f"unknown value {name!r}", sorted(table)) from None


def require(condition: bool, field: str, message: str) -> None:
    """Raise :class:`InvalidArgument` for ``field`` unless ``condition`` holds."""
    if not condition:
        raise InvalidArgument(field, message)
