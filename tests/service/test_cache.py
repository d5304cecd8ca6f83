"""The model cache is bounded by the bytes its networks hold, not by how many there are."""

from __future__ import annotations

from gradwire.engine import Network, NetworkSpec
from gradwire.engine.spec import BatchNorm, Dense
from gradwire.service.usecases.cache import NetworkCache


def network(units: int, dtype: str = "float64") -> tuple[NetworkSpec, Network]:
    spec = NetworkSpec(10, (Dense(units, "tanh"), Dense(1, "identity")), loss="squared_error", dtype=dtype)
    return spec, Network(spec)


def network_bytes(net: Network) -> int:
    return net.nbytes


def test_a_network_counts_the_bytes_of_its_parameters_and_buffers() -> None:
    spec, net = network(100)
    assert net.nbytes == spec.parameter_count * 8
    spec, net = network(100, "float32")
    assert net.nbytes == spec.parameter_count * 4
    spec = NetworkSpec(10, (BatchNorm(), Dense(1, "identity")), loss="squared_error")
    assert Network(spec).nbytes == sum(a.nbytes for a in Network(spec).state_arrays().values())


def test_the_least_recently_used_leave_once_the_bytes_are_spent() -> None:
    small, large = network(10), network(1000)
    cache = NetworkCache(capacity=network_bytes(large[1]) + 2 * network_bytes(small[1]) - 1)
    cache.put(("a", 1), *small)
    cache.put(("b", 1), *small)
    assert cache.get(("a", 1)) is not None  # a is now the most recently used
    cache.put(("c", 1), *large)  # over the capacity by one small network: b leaves, not a
    assert cache.get(("b", 1)) is None
    assert cache.get(("a", 1)) is not None
    assert cache.get(("c", 1)) is not None
    assert cache.used <= cache.capacity
    assert cache.used == network_bytes(large[1]) + network_bytes(small[1])


def test_a_network_larger_than_the_cache_is_not_kept_and_evicts_nothing() -> None:
    small, large = network(10), network(1000)
    cache = NetworkCache(capacity=network_bytes(large[1]) - 1)
    cache.put(("a", 1), *small)
    cache.put(("big", 1), *large)
    assert cache.get(("big", 1)) is None
    assert cache.get(("a", 1)) is not None


def test_forgetting_a_model_drops_every_version_and_its_bytes() -> None:
    small = network(10)
    cache = NetworkCache(capacity=10 * network_bytes(small[1]))
    for version in (1, 2, 3):
        cache.put(("a", version), *small)
    cache.put(("b", 1), *small)
    cache.put(("a", 1), *small)  # put again: counted once
    assert cache.used == 4 * network_bytes(small[1])
    cache.forget("a")
    assert [cache.get(("a", v)) for v in (1, 2, 3)] == [None, None, None]
    assert cache.used == network_bytes(small[1])
