"""The per-request memory budget, through a real server on both databases: Predict, GetGradients,
StartRun and Train estimate what they will need before doing anything, and refuse past
``max_request_mb`` with RESOURCE_EXHAUSTED naming the field and the budget.

The model is a wide one: one input, 16,384 relu units, one output (49,153 parameters, legal
under every architecture limit). Its requests are tiny on the wire (one input and one target a
row) while its hidden layer makes every row cost 128 KiB an array in float64, 384 KiB for gradients.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import grpc
import numpy as np
import pytest
from helpers import WIDE, Running

from gradwire.client import Client, GradwireError, ResourceExhaustedError
from gradwire.engine import NetworkSpec
from gradwire.service import Limits
from gradwire.service.usecases.memory import gradients_bytes, predict_bytes
from gradwire.v1 import codec
from gradwire.v1 import gradwire_pb2 as pb

WIDE_SPEC = NetworkSpec.from_dict(WIDE)
BUDGET_MB = 64
"""Small enough that these requests need many times it, large enough for their small
counterparts (16 rows of gradients take about 8 MiB)."""
GiB = 1 << 30


@pytest.fixture(autouse=True)
def _refusals_stay_refusals() -> None:
    """Were the estimates of these requests ever to drop, these tests would do the work in
    this very process: stop first."""
    assert gradients_bytes(WIDE_SPEC, 8192, numerical_check=False) > 2 * GiB
    assert predict_bytes(WIDE_SPEC, 65_536) > GiB


def rows(n: int) -> tuple[np.ndarray, np.ndarray]:
    x = np.linspace(-1.0, 1.0, n).reshape(-1, 1)
    return x, np.abs(x)


def refused(call: Callable[[], Any], field: str, budget: str) -> GradwireError:
    """The call fails with RESOURCE_EXHAUSTED, about ``field``, naming the budget and its setting."""
    with pytest.raises(ResourceExhaustedError) as info:
        call()
    error = info.value
    assert error.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error.message.startswith(f"{field}: "), error.message
    assert error.fields in ((), (field,))  # a BadRequest, if the server sends one, names the same field
    assert f"per-request budget of {budget} (max_request_mb)" in error.message
    return error


@pytest.fixture
def budgeted(start_server: Callable[..., Running]) -> Running:
    return start_server(limits=Limits(max_request_mb=BUDGET_MB))


def test_the_default_budget_refuses_a_wide_models_gradients(client: Client) -> None:
    """8,192 rows through 16,384 units need about 3 GiB in float64 (2.3 GB resident, measured)."""
    model = client.create_model(WIDE)
    error = refused(lambda: model.gradients(*rows(8192)), "inputs", "1.0 GiB")
    assert "GetGradients of 8192 rows needs about 3.0 GiB" in error.message


def test_gradients_past_the_budget_are_refused_and_below_it_answered(budgeted: Running) -> None:
    with Client(budgeted.address, timeout=60) as client:
        model = client.create_model(WIDE)
        refused(lambda: model.gradients(*rows(8192)), "inputs", f"{BUDGET_MB}.0 MiB")
        refused(lambda: model.gradients(*rows(256), inference_mode=True), "inputs", f"{BUDGET_MB}.0 MiB")
        answer = model.gradients(*rows(16))
        assert sorted(answer.gradients) == ["0.W", "0.b", "1.W", "1.b"]
        assert answer.gradients["0.W"].shape == (1, 16_384)
        assert np.isfinite(answer.loss)


def test_predict_past_the_budget_is_refused_and_below_it_answered(budgeted: Running) -> None:
    with Client(budgeted.address, timeout=60) as client:
        model = client.create_model(WIDE)
        x, _ = rows(65_536)  # 512 KiB on the wire; one chunk of 8,192 rows takes 1 GiB inside
        error = refused(lambda: model.predict(x), "inputs", f"{BUDGET_MB}.0 MiB")
        assert "Predict of 65536 rows needs about 1.0 GiB" in error.message
        assert model.predict(x[:32]).shape == (32, 1)


def test_a_run_whose_batch_is_past_the_budget_is_refused_before_anything_is_stored(
    budgeted: Running,
) -> None:
    """256 rows in batches of 65,536: one batch of all 256 rows takes about 99 MiB; batches of 16
    take under 10 MiB. The batch size is what weighs most, so it is the field named."""
    with Client(budgeted.address, timeout=60) as client:
        model = client.create_model(WIDE)
        x, y = rows(256)
        refused(
            lambda: model.start_run(x, y, epochs=1, batch_size=65_536),
            "options.batch_size",
            f"{BUDGET_MB}.0 MiB",
        )
        assert list(client.list_datasets()) == []  # refused before its inline data was stored
        assert model.history() == []
        history = model.fit(x, y, epochs=1, batch_size=16)
        assert [run.status for run in model.history()] == ["completed"]
        assert len(history.epochs) == 1


def test_a_run_on_stored_datasets_is_estimated_from_their_records(budgeted: Running) -> None:
    with Client(budgeted.address, timeout=60) as client:
        model = client.create_model(WIDE)
        x, y = rows(256)
        inputs, targets = client.upload_dataset(x), client.upload_dataset(y)
        refused(
            lambda: model.start_run(inputs, targets, epochs=1, batch_size=1024),
            "options.batch_size",
            f"{BUDGET_MB}.0 MiB",
        )
        run = model.start_run(inputs.id, targets.id, epochs=1, batch_size=8)
        assert run.wait().status == "completed"


def test_train_past_the_budget_ends_its_stream_with_resource_exhausted(budgeted: Running) -> None:
    with Client(budgeted.address, timeout=60) as client:
        model = client.create_model(WIDE)
        x, y = rows(512)
        request = pb.TrainRequest(
            model_id=model.id,
            inputs=codec.array_to_tensor(x),
            targets=codec.array_to_tensor(y),
            options=codec.options_from_dict({"epochs": 1, "batch_size": 65_536}),
        )
        with pytest.raises(grpc.RpcError) as info:
            list(client.stub.Train(request, timeout=60))
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert (info.value.details() or "").startswith("options.batch_size: ")
        assert model.history() == []


def test_the_numerical_check_counts_its_float64_copy(start_server: Callable[..., Running]) -> None:
    """A float32 model whose gradients fit the budget, but whose check (a float64 copy of the
    model and float64 passes over the rows) does not."""
    spec = {
        "input_dim": 16,
        "layers": [
            {"kind": "dense", "units": 1000, "activation": "tanh"},
            {"kind": "dense", "units": 1, "activation": "identity"},
        ],
        "loss": "squared_error",
        "dtype": "float32",
    }
    checked = NetworkSpec.from_dict(spec)
    assert checked.parameter_count <= Limits().max_gradcheck_parameters
    budget = math.ceil(gradients_bytes(checked, 256, numerical_check=False) / (1 << 20))
    assert gradients_bytes(checked, 256, numerical_check=True) > budget << 20
    with Client(start_server(limits=Limits(max_request_mb=budget)).address, timeout=60) as client:
        model = client.create_model(spec)
        x = np.random.default_rng(0).normal(size=(256, 16)).astype(np.float32)
        y = np.tanh(x[:, :1])
        assert model.gradients(x, y).loss >= 0.0
        refused(lambda: model.gradients(x, y, numerical_check=True), "inputs", f"{budget}.0 MiB")
