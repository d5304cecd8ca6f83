"""Wrapping a grpc handler of any kind: the one table of which kinds answer with a stream."""

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
