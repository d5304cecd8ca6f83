"""Telling every server process that something it may cache has changed: PostgreSQL's
LISTEN/NOTIFY.

A change that servers cache (an API key revoked) is announced inside the transaction that makes
it (:func:`announce`), so PostgreSQL delivers the notice to every listening connection when, and
only if, that transaction commits. A :class:`Listener` is one server's ear: a thread on a
connection of its own, calling ``heard()`` for every notice, and once more each time it
(re)connects, since what was said while it was not listening is unknown. SQLite has no notices:
there the caches' own time bounds stay the only bound.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from sqlalchemy import Engine, text
from sqlalchemy.orm import Session

log = logging.getLogger(__name__)

KEYS = "gradwire_keys"
"""The channel of API key changes (a key revoked)."""
CHANNELS = (KEYS,)


def announce(s: Session, channel: str) -> None:
    """Have ``channel``'s listeners hear of this transaction's change once it commits."""
    if s.get_bind().dialect.name == "postgresql":
        s.execute(text("SELECT pg_notify(:channel, '')"), {"channel": channel})


STOP_SECONDS = 0.1
"""How long a listener waits for notices at a time (on its socket: nothing is sent), so that a
stop is heard that soon."""


class Listener:
    """Calls ``heard()`` for every notice on ``channel`` (see the module's docstring); tries again
    every ``wait_seconds`` while the database cannot be reached, and stops within
    :data:`STOP_SECONDS` of :meth:`stop`."""

    def __init__(self, engine: Engine, channel: str, heard: Callable[[], None], wait_seconds: float) -> None:
        if channel not in CHANNELS:
            raise ValueError(f"unknown channel {channel!r}: one of {', '.join(CHANNELS)}")
        self.engine, self.channel, self.heard, self.wait_seconds = engine, channel, heard, wait_seconds
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"gradwire-listen-{channel}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self._listen()
            except Exception as exc:  # the database went away: listen again once it is back
                log.warning(
                    "not hearing notices; listening again", extra={"channel": self.channel, "error": str(exc)}
                )
                self._stop.wait(self.wait_seconds)

    def _listen(self) -> None:
        pooled = self.engine.raw_connection()
        pooled.detach()  # a connection of its own for as long as it listens, never back in the pool
        connection = pooled.dbapi_connection
        assert connection is not None
        try:
            connection.autocommit = True
            connection.execute(f"LISTEN {self.channel}")
            self.heard()
            while not self._stop.is_set():
                for _ in connection.notifies(timeout=STOP_SECONDS):
                    self.heard()
        finally:
            connection.close()
