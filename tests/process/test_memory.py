"""A real ``gradwire serve`` whose address space is capped (``RLIMIT_AS``), so that running out of
memory is real and cannot take the machine down.

The cap is what an idle server reaches after a little of everything (a model, a Predict, a
GetGradients, a one-epoch run: thread stacks, glibc's arenas and NumPy's BLAS buffers count
against it), measured on a server started for that, plus :data:`MARGIN`. Where these tests were
written (2 cores) that server peaked at 408 MiB of address space with 13 threads (349 MiB
just started), so the cap was 664 MiB.

With a per-request budget above what the cap allows, the estimate lets a wide model's GetGradients
through and NumPy's allocation fails: the client must get RESOURCE_EXHAUSTED, not INTERNAL, a
run must fail as ``out_of_memory``, and the server must go on answering. With the budget below,
the same request is refused by the estimate, before any allocation.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from helpers import WIDE, ServerProcess

from gradwire.client import Client, ResourceExhaustedError
from gradwire.v1 import codec
from gradwire.v1 import gradwire_pb2 as pb

pytestmark = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)

MiB = 1 << 20
MARGIN = 256 * MiB
"""Room above the measured peak for the small calls the tests make; far below the 1 GiB the
first array of that request takes (8,192 rows × 16,384 units in float64)."""
X = np.linspace(-1.0, 1.0, 8192).reshape(-1, 1)
Y = np.abs(X)


def vm_peak(pid: int) -> int:
    """The most address space process ``pid`` has had mapped, in bytes (``VmPeak``)."""
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"^VmPeak:\s+(\d+) kB", status, re.MULTILINE)
    assert match, "no VmPeak in /proc/<pid>/status"
    return int(match.group(1)) * 1024


@pytest.fixture(scope="module")
def address_space(tmp_path_factory: pytest.TempPathFactory) -> int:
    """The cap: the peak of a server that has done a little of everything, plus the margin."""
    url = f"sqlite:///{tmp_path_factory.mktemp('measure') / 'gradwire.db'}"
    with ServerProcess(url) as server, Client(server.address, timeout=60) as client:
        model = client.create_model(WIDE)
        model.predict(X[:4])
        model.gradients(X[:4], Y[:4])
        model.fit(X[:8], Y[:8], epochs=1, batch_size=4)
        return vm_peak(server.process.pid) + MARGIN


Start = Callable[..., ServerProcess]


@pytest.fixture
def capped(database_url: str, address_space: int) -> Iterator[Start]:
    """Starts capped servers with the given settings (``GRADWIRE_*``); kills them at the end."""
    started: list[ServerProcess] = []

    def start(**settings: object) -> ServerProcess:
        started.append(ServerProcess(database_url, address_space=address_space, **settings))
        return started[-1]

    yield start
    for server in started:
        if server.process.poll() is None:
            server.kill()


def train_request(model_id: str, rows: int, batch_size: int) -> pb.TrainRequest:
    return pb.TrainRequest(
        model_id=model_id,
        inputs=codec.array_to_tensor(X[:rows]),
        targets=codec.array_to_tensor(Y[:rows]),
        options=codec.options_from_dict({"epochs": 1, "batch_size": batch_size}),
    )


def test_a_real_memory_error_is_resource_exhausted_and_the_server_goes_on(capped: Start) -> None:
    server = capped(max_request_mb=64 * 1024)  # 64 GiB: the estimate never stops anything here
    with Client(server.address, timeout=60) as client:
        model = client.create_model(WIDE)
        with pytest.raises(ResourceExhaustedError) as info:
            model.gradients(X, Y)  # about 3 GiB: well within the budget, far past the cap
        assert info.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "max_request_mb" not in info.value.message  # NumPy's MemoryError, not the estimate
        assert np.isfinite(model.predict(X[:4])).all()  # and answers the next call

        with pytest.raises(grpc.RpcError) as stream:  # the run's job runs out: Train says so
            list(client.stub.Train(train_request(model.id, 8192, 8192), timeout=60))
        assert stream.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        [run] = model.history()
        assert (run.status, run.stop_reason) == ("failed", "out_of_memory")

        assert model.gradients(X[:16], Y[:16]).gradients["0.W"].shape == (1, 16_384)
        assert model.fit(X[:64], Y[:64], epochs=1, batch_size=16).epochs  # and trains again
    assert server.process.poll() is None


def test_below_the_cap_the_budget_refuses_before_allocating(capped: Start) -> None:
    server = capped(max_request_mb=256)
    with Client(server.address, timeout=60) as client:
        model = client.create_model(WIDE)
        with pytest.raises(ResourceExhaustedError) as info:
            model.gradients(X, Y)
        assert info.value.message.startswith("inputs: GetGradients of 8192 rows needs about 3.0 GiB")
        assert "per-request budget of 256.0 MiB (max_request_mb)" in info.value.message
        with pytest.raises(grpc.RpcError) as stream:
            list(client.stub.Train(train_request(model.id, 8192, 8192), timeout=60))
        assert stream.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "(max_request_mb)" in (stream.value.details() or "")
        assert model.history() == []  # refused before a run existed
        assert model.predict(X[:4]).shape == (4, 1)
    assert server.process.poll() is None
