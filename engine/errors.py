"""The engine's error types.

Every error that bad input can cause names the offending field, so that the service can turn it
into a ``google.rpc.BadRequest`` field violation without parsing messages.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
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
        self.violations: tuple[InvalidArgument, ...] = (self,)
        super().__init__(f"{field}: {self.description}" if field else self.description)

    @property
    def description(self) -> str:
        """What is wrong, without the field's name: a field violation's own text."""
        if not self.allowed:
            return self.message
        return f"{self.message} (allowed: {', '.join(self.allowed)})"

    def under(self, prefix: str) -> InvalidArgument:
        """The same problems with their fields under ``prefix`` (``units`` → ``spec.layers[0].units``)."""
        if not prefix:
            return self
        moved = [
            InvalidArgument(f"{prefix}.{v.field}" if v.field else prefix, v.message, v.allowed)
            for v in self.violations
        ]
        return moved[0] if len(moved) == 1 else InvalidArgument.every(moved)

    @classmethod
    def every(cls, problems: Sequence[InvalidArgument]) -> InvalidArgument:
        """One error reporting every problem (each keeps its field), so a caller fixes all at once."""
        violations = tuple(v for problem in problems for v in problem.violations)
        if len(violations) == 1:
            return violations[0]
        summary = "; ".join(str(v) for v in violations[:3]) + ("; ..." if len(violations) > 3 else "")
        combined = cls("", f"{len(violations)} problems: {summary}")
        combined.field = violations[0].field
        combined.violations = violations
        return combined


class Problems:
    """Collects the problems of independent checks, then raises them together::

    problems = Problems()
    with problems.check():
        check_a()
    with problems.check("spec"):
        check_b()
    problems.raise_any()
    """

    def __init__(self) -> None:
        self.found: list[InvalidArgument] = []

    @contextmanager
    def check(self, prefix: str = "") -> Iterator[None]:
        try:
            yield
        except InvalidArgument as exc:
            self.found.append(exc.under(prefix))

    def raise_any(self) -> None:
        if self.found:
            raise InvalidArgument.every(self.found)


EXCERPT = 40
"""Characters of a caller's value quoted in an error message at most."""


def excerpt(value: object, limit: int = EXCERPT) -> str:
    """``repr(value)``, cut to ``limit`` characters: errors quote what the caller sent, never all of it."""
    try:
        return cut(repr(value), limit)
    except ValueError:  # an int of more digits than Python converts to text
        return f"<{type(value).__name__} too long to show>"


def cut(text: str, limit: int = EXCERPT) -> str:
    """``text`` if it is short, else its start and its length."""
    return text if len(text) <= limit else f"{text[: limit - 5]}…({len(text)} chars)"


def lookup(table: dict[str, V], name: str, field: str) -> V:
    """Return ``table[name]``, or raise :class:`InvalidArgument` listing the valid names."""
    try:
        return table[name]
    except (KeyError, TypeError):
        raise InvalidArgument(field, f"unknown value {excerpt(name)}", sorted(table)) from None


def require(condition: bool, field: str, message: str) -> None:
    """Raise :class:`InvalidArgument` for ``field`` unless ``condition`` holds."""
    if not condition:
        raise InvalidArgument(field, message)
