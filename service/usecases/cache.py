"""A least-recently-used cache of built networks, bounded by the bytes their arrays hold."""

from __future__ import annotations

import threading
from collections import OrderedDict

from gradwire.engine import Network, NetworkSpec

Key = tuple[str, int]
"""(model id, version): versions never change, so an entry is never stale."""


class NetworkCache:
    """At most ``capacity`` bytes of networks; the least recently used leave first. A network
    larger than the whole capacity is served but not kept."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.used = 0
        self._lock = threading.Lock()
        self._entries: OrderedDict[Key, tuple[NetworkSpec, Network, int]] = OrderedDict()

    def get(self, key: Key) -> tuple[NetworkSpec, Network] | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            self._entries.move_to_end(key)
            return entry[0], entry[1]

    def put(self, key: Key, spec: NetworkSpec, network: Network) -> None:
        size = network.nbytes
        if size > self.capacity:
            return
        with self._lock:
            self._remove(key)
            self._entries[key] = (spec, network, size)
            self.used += size
            while self.used > self.capacity:
                self._remove(next(iter(self._entries)))

    def forget(self, model_id: str) -> None:
        """Drop every version of a model (it was deleted)."""
        with self._lock:
            for key in [k for k in self._entries if k[0] == model_id]:
                self._remove(key)

    def _remove(self, key: Key) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self.used -= entry[2]
