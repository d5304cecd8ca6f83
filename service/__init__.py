"""gradwire's gRPC service: the engine and the store behind the gradwire.v1 contract.

``gradwire serve`` runs it; :func:`create_server` builds one in-process (tests bind port 0).

The names below are imported when first used (PEP 562), so that a small module of this package,
such as the container's health probe (:mod:`.ops.probe`), starts without NumPy and SQLAlchemy.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # what type checkers see; at run time, __getattr__ below
    from .core.settings import Limits as Limits
    from .core.settings import Settings as Settings
    from .transport.server import create_server as create_server
    from .transport.server import stop_server as stop_server
    from .usecases.app import Gradwire as Gradwire

EXPORTS = {
    "create_server": ".transport.server",
    "stop_server": ".transport.server",
    "Limits": ".core.settings",
    "Settings": ".core.settings",
    "Gradwire": ".usecases.app",
}
"""Each public name, by the module that defines it."""

__all__ = sorted(EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(EXPORTS[name], __name__), name)
