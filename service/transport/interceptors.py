"""Wrapping a grpc handler of any kind (the one table of which kinds answer with a stream), and
the notes an outer layer keeps of a call for inner layers to fill in."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Behaviour = Callable[..., Any]

STREAMS_RESPONSES = {
    "unary_unary": False,
    "stream_unary": False,
    "unary_stream": True,
    "stream_stream": True,
}
"""grpc's four handler kinds (the RpcMethodHandler field holding each), and whether the
behaviour returns one response (False) or yields many (True)."""


def rewrap(
    handler: Any, one: Callable[[Behaviour], Behaviour], many: Callable[[Behaviour], Behaviour]
) -> Any:
    """``handler`` (an RpcMethodHandler, or None) with its behaviour wrapped by ``one`` if it
    returns a response, by ``many`` if it yields them."""
    if handler is None:
        return None
    for kind, streams in STREAMS_RESPONSES.items():
        inner = getattr(handler, kind)
        if inner is not None:
            return handler._replace(**{kind: (many if streams else one)(inner)})
    return handler


class Wrapped:
    """A call's context with something added by a layer around the handler; everything else
    (abort, metadata, peer, ...) is the context's own."""

    def __init__(self, context: Any) -> None:
        self._context = context

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)


class Noted(Wrapped):
    """A call's context with ``notes``: fields an inner layer learns of the call (who made it)
    for the outer one that writes its access line."""

    def __init__(self, context: Any, notes: dict[str, Any]) -> None:
        super().__init__(context)
        self.notes = notes


def note(context: Any, **fields: Any) -> None:
    """Add ``fields`` to the call's notes, if an outer layer keeps them."""
    if isinstance(context, Noted):
        context.notes.update(fields)
