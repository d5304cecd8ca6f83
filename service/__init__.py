"""gradwire's gRPC service: the engine and the store behind the gradwire.v1 contract.

``gradwire serve`` runs it; :func:`create_server` builds one in-process (tests bind port 0).
"""

from .server import create_server, stop_server
from .settings import Limits, Settings
from .usecases import Gradwire

__all__ = ["Gradwire", "Limits", "Settings", "create_server", "stop_server"]
