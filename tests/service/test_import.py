"""ImportModel through live servers: a model leaves one server (database A) as an ``.npz`` and
enters another (database B) answering bit for bit as it did; bad weights are refused naming
every array, and never unpickled; the import is the caller's tenant's, charged to its quotas,
done once per request id and bounded in size and memory."""

from __future__ import annotations

import io
import json
import pickle
import uuid
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from helpers import Running
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from gradwire.client import (
    Client,
    InvalidArgumentError,
    NotFoundError,
    ResourceExhaustedError,
)
from gradwire.service import Settings, create_server, stop_server
from gradwire.service.core.settings import Limits
from gradwire.service.ops.cli import main
from gradwire.service.transport.auth import new_key
from gradwire.storage.database import normalise_url
from gradwire.v1 import codec
from gradwire.v1 import gradwire_pb2 as pb

SPEC: dict[str, Any] = {
    "input_dim": 3,
    "layers": [
        {"kind": "dense", "units": 6, "activation": "tanh"},
        {"kind": "batchnorm", "activation": "relu"},
        {"kind": "residual", "layers": [{"kind": "dense", "units": 6, "activation": "leaky_relu"}]},
        {"kind": "dense", "units": 2, "activation": "sigmoid"},
    ],
    "loss": "binary_crossentropy",
    "dtype": "float64",
    "seed": 4,
}
NAMES = [
    "0.W", "0.b", "1.gamma", "1.beta", "2.0.W", "2.0.b", "3.W", "3.b", "1.running_mean", "1.running_var",
]  # fmt: skip
"""SPEC's arrays, in the model's order."""
X = np.random.default_rng(0).normal(size=(80, 3))
Y = (X[:, :2] + X[:, 2:] > 0).astype(np.float64)


def npz(arrays: dict[str, Any]) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


@pytest.fixture
def other_database(database_url: str, tmp_path: Path) -> Iterator[str]:
    """A second empty database of the same kind as ``database_url``: another SQLite file, or
    another schema of the PostgreSQL test database."""
    if database_url.startswith("sqlite"):
        yield f"sqlite:///{tmp_path / 'other.db'}"
        return
    url = make_url(database_url)
    schema = f"test_{uuid.uuid4().hex[:16]}"
    admin = create_engine(normalise_url(url.difference_update_query(["options"]).render_as_string(False)))
    with admin.begin() as connection:
        connection.execute(text(f"CREATE SCHEMA {schema}"))
    try:
        yield url.update_query_dict({"options": f"-csearch_path={schema}"}).render_as_string(False)
    finally:
        with admin.begin() as connection:
            connection.execute(text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()


@pytest.fixture
def server_b(other_database: str) -> Iterator[Running]:
    settings = Settings(address="127.0.0.1:0", database_url=other_database, auth=False)
    server, port, app = create_server(settings)
    yield Running(f"127.0.0.1:{port}", app, settings)
    stop_server(server, app, grace=30)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_a_trained_model_exported_from_one_server_imports_into_another_answering_bit_for_bit(
    client: Client,
    server_b: Running,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    dtype: str,
) -> None:
    spec = {**SPEC, "dtype": dtype}
    original = client.create_model(spec, name="original")
    original.fit(X, Y, epochs=8, batch_size=16, optimizer="adam", learning_rate=0.01)
    a, b = ["--server", client.address], ["--server", server_b.address]

    assert main(["models", "show", original.id, *a]) == 0
    (tmp_path / "model.json").write_text(capsys.readouterr().out)  # the show's JSON holds the spec
    assert main(["export", original.id, "-o", str(tmp_path / "weights.npz"), *a]) == 0
    capsys.readouterr()
    assert main(["import", "--spec", str(tmp_path / "model.json"), "--weights", str(tmp_path / "weights.npz"),
                 "--name", "copy", *b]) == 0  # fmt: skip
    copy_id = capsys.readouterr().out.strip()

    with Client(server_b.address) as other:
        copy = other.model(copy_id)
        assert (copy.info.name, copy.info.version, copy.info.spec) == ("copy", 1, original.info.spec)
        assert copy.info.parameter_count == original.info.parameter_count
        mine, theirs = original.exported(), copy.exported()
        assert list(theirs.arrays) == list(mine.arrays) == NAMES
        assert theirs.sha256 == mine.sha256
        assert not np.array_equal(mine.arrays["1.running_mean"], 0)  # trained: the buffers moved too
        x = np.random.default_rng(9).normal(size=(500, 3)).astype(dtype)
        there, here = copy.predict_full(x), original.predict_full(x)
        assert there.outputs.dtype == np.dtype(dtype)
        assert there.outputs.tobytes() == here.outputs.tobytes()
        assert np.array_equal(there.labels, here.labels)  # type: ignore[arg-type]
        assert original.info.version == 2  # and the copy can train on from there
        copy.fit(X, Y, epochs=1, batch_size=16)
        assert copy.info.version == 2


def test_the_sdk_takes_arrays_npz_bytes_or_a_path(client: Client, tmp_path: Path) -> None:
    arrays = client.create_model(SPEC).export()
    arrays = {name: value + 0.25 for name, value in arrays.items()}  # not the spec's initial draw
    (tmp_path / "w.npz").write_bytes(npz(arrays))
    models = [
        client.import_model(SPEC, arrays, name="arrays"),
        client.import_model(SPEC, npz(arrays), name="bytes"),
        client.import_model(SPEC, tmp_path / "w.npz", name="path"),
        client.import_model(SPEC, str(tmp_path / "w.npz"), name="text path"),
    ]
    for model in models:
        got = model.export()
        assert list(got) == NAMES
        assert all(np.array_equal(got[name], arrays[name]) for name in NAMES)
    with pytest.raises(ValueError, match="expected numbers"):
        client.import_model(SPEC, {**arrays, "0.b": np.array(["a", "b"], dtype=object)})


def test_bad_weights_are_refused_naming_every_array_and_nothing_is_stored(client: Client) -> None:
    good = client.create_model(SPEC).export()
    bad = dict(good)
    del bad["3.b"]  # missing
    bad["4.W"] = np.ones((2, 2))  # extra
    bad["0.W"] = np.ones((6, 3))  # transposed
    bad["2.0.W"] = good["2.0.W"].astype(np.float32)  # another dtype
    bad["3.W"] = np.where(np.eye(6, 2) > 0, np.nan, good["3.W"])  # not finite
    bad["1.running_var"] = -good["1.running_var"]  # a variance below 0
    bad["1.gamma"] = good["1.gamma"].astype(">f8")  # the other byte order: accepted
    before = [m.id for m in client.list_models()]
    with pytest.raises(InvalidArgumentError) as refused:
        client.import_model(SPEC, bad, name="x" * 201)
    problems = dict(refused.value.field_violations)
    assert sorted(problems) == sorted(
        [
            "name",
            "weights.3.b",
            "weights.4.W",
            "weights.0.W",
            "weights.2.0.W",
            "weights.3.W",
            "weights.1.running_var",
        ]
    )
    assert problems["weights.3.b"] == "is missing: the spec has it, shape [2], float64"
    assert problems["weights.4.W"] == "is no array of this spec"
    assert problems["weights.0.W"] == "shape [6, 3], the spec's is [3, 6]"
    assert problems["weights.2.0.W"] == "dtype float32, the spec's is float64"
    assert problems["weights.3.W"] == "holds values that are not finite"
    assert problems["weights.1.running_var"] == "a running variance must be ≥ 0"
    assert [m.id for m in client.list_models()] == before


class Planted:
    """Unpickling one of these creates the file it names: the proof that something unpickled."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Callable[..., Any], tuple[str, str]]:
        return open, (str(self.path), "w")


def test_weights_that_are_no_plain_npz_are_refused_and_never_unpickled(
    client: Client, tmp_path: Path
) -> None:
    good = client.create_model(SPEC).export()
    marker = tmp_path / "unpickled"
    pickled = np.empty(6, dtype=object)
    pickled[:] = [Planted(marker)] * 6
    buffer = io.BytesIO()
    np.savez(buffer, **{**good, "0.b": pickled})
    cases = {
        "an object array": (buffer.getvalue(), "weights.0.b", "dtype object, the spec's is float64"),
        "a pickle": (pickle.dumps(good), "weights", "not an .npz archive (numpy.savez writes one)"),
        "a .npy": (_npy(good["0.W"]), "weights", "not an .npz archive (numpy.savez writes one)"),
        "nothing": (b"", "weights", "not an .npz archive (numpy.savez writes one)"),
        "a truncated archive": (npz(good)[:-30], "weights", "not a readable .npz archive: "),
    }
    for case, (data, field, description) in cases.items():
        with pytest.raises(InvalidArgumentError) as refused:
            client.import_model(SPEC, data)
        assert refused.value.field_violations[0][0] == field, case
        assert refused.value.field_violations[0][1].startswith(description), (case, refused.value)
    assert not marker.exists()

    padded = zipfile.ZipFile(buffer := io.BytesIO(), "w")
    for name, array in good.items():
        padded.writestr(f"{name}.npy", _npy(array))
    for i in range(2000):  # many entries: refused by size before the archive is opened
        padded.writestr(f"junk{i}", b"")
    padded.close()
    with pytest.raises(InvalidArgumentError) as refused:
        client.import_model(SPEC, buffer.getvalue())
    assert "more than an .npz of this spec's arrays takes" in refused.value.message


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def test_mutated_archives_get_a_clean_refusal_or_a_model(client: Client) -> None:
    """Flipped, dropped, inserted and cut bytes of a good ``.npz``: every answer is OK or
    INVALID_ARGUMENT (never INTERNAL), and an accepted one holds the spec's arrays."""
    data = npz(client.create_model(SPEC).export())
    compressed = io.BytesIO()
    np.savez_compressed(compressed, **client.create_model(SPEC).export())
    rng = np.random.default_rng(11)
    codes = []
    for i in range(300):
        mutant = bytearray(compressed.getvalue() if i % 3 == 0 else data)
        at = int(rng.integers(len(mutant)))
        kind = i % 4
        if kind == 0:
            mutant[at] ^= 1 << int(rng.integers(8))
        elif kind == 1:
            del mutant[at : at + int(rng.integers(1, 16))]
        elif kind == 2:
            mutant[at:at] = rng.bytes(int(rng.integers(1, 16)))
        else:
            mutant = mutant[:at]
        request = pb.ImportModelRequest(spec=codec.spec_from_dict(SPEC), weights=bytes(mutant))
        try:
            model = client.stub.ImportModel(request, timeout=30)
        except grpc.RpcError as error:
            codes.append(error.code())
            continue
        codes.append(grpc.StatusCode.OK)
        assert list(client.model(model.model_id).export()) == NAMES
    assert set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT}
    assert codes.count(grpc.StatusCode.INVALID_ARGUMENT) > 150


def test_a_request_id_imports_once_and_is_refused_for_other_weights(client: Client) -> None:
    arrays = client.create_model(SPEC).export()
    first = client.import_model(SPEC, arrays, name="once", request_id="import-1")
    again = client.import_model(SPEC, arrays, name="once", request_id="import-1")
    assert again.id == first.id
    other = {**arrays, "0.b": arrays["0.b"] + 1.0}
    with pytest.raises(InvalidArgumentError, match="first used to create another model"):
        client.import_model(SPEC, other, name="once", request_id="import-1")
    assert sum(m.name == "once" for m in client.list_models()) == 1


def test_an_import_or_onnx_export_past_the_memory_budget_or_the_message_limit_is_refused(
    start_server: Callable[..., Running],
) -> None:
    wide = {
        "input_dim": 64,
        "layers": [{"kind": "dense", "units": 2048, "activation": "relu"}, {"kind": "dense", "units": 1}],
        "loss": "squared_error",
    }  # 135,169 float64 parameters: about 1 MiB of weights
    arrays = {
        "0.W": np.zeros((64, 2048)),
        "0.b": np.zeros(2048),
        "1.W": np.zeros((2048, 1)),
        "1.b": np.zeros(1),
    }
    running = start_server(limits=Limits(max_request_mb=2), max_message_mb=4)
    with Client(running.address) as client:
        with pytest.raises(ResourceExhaustedError) as refused:
            client.import_model(wide, arrays)
        assert refused.value.message.startswith("weights: ImportModel of 135169 parameters needs about")
        assert "per-request budget of 2.0 MiB" in refused.value.message
        with pytest.raises(ResourceExhaustedError):  # grpc's own limit on the message
            client.import_model(SPEC, b"PK" + bytes(5 << 20))
        assert list(client.list_models()) == []
        created = client.create_model(wide)  # its ONNX build holds about four copies of its weights
        with pytest.raises(
            ResourceExhaustedError, match=r"format: an ONNX export of 1\.0 MiB of weights needs"
        ):
            created.export_onnx()


def test_imports_belong_to_the_callers_tenant_and_count_against_its_quotas(
    start_server: Callable[..., Running], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("GRADWIRE_TOKEN", raising=False)
    running = start_server(auth=True)
    keys = {}
    for name in ("acme", "other"):
        keys[name] = new_key()
        running.app.store.tenants.add_key(name, keys[name].id, keys[name].hash, name="test")
    running.app.store.tenants.set_quotas("acme", {"max_models": 1})
    arrays = npz({name: np.ones(shape) for name, shape in _shapes().items()})
    with (
        Client(running.address, token=keys["acme"].token) as acme,
        Client(running.address, token=keys["other"].token) as other,
    ):
        model = acme.import_model(SPEC, arrays, name="acme's")
        with pytest.raises(ResourceExhaustedError, match="quota max_models exceeded"):
            acme.import_model(SPEC, arrays)
        assert running.app.store.tenants.usage("acme")["max_models"] == 1
        assert running.app.store.tenants.usage("acme")["max_parameters"] == model.info.parameter_count
        for call in (lambda: other.model(model.id), lambda: other.model(model.id).export_onnx()):
            with pytest.raises(NotFoundError):
                call()
        stranger = pb.ExportModelRequest(model_id=model.id, format=pb.ONNX)
        with pytest.raises(grpc.RpcError) as refused:
            list(other.stub.ExportModel(stranger, timeout=30))
        assert refused.value.code() == grpc.StatusCode.NOT_FOUND
        assert [m.id for m in other.list_models()] == []
        assert other.import_model(SPEC, arrays).id != model.id  # its own quota


def _shapes() -> dict[str, tuple[int, ...]]:
    shapes = {"0.W": (3, 6), "0.b": (6,), "1.gamma": (6,), "1.beta": (6,), "2.0.W": (6, 6), "2.0.b": (6,)}
    return shapes | {"3.W": (6, 2), "3.b": (2,), "1.running_mean": (6,), "1.running_var": (6,)}


def test_import_spec_files_in_either_form(tmp_path: Path) -> None:
    """``gradwire import --spec`` reads a spec, or the JSON ``models show`` prints (which holds one)."""
    from gradwire.client.cli import read_spec

    (tmp_path / "spec.json").write_text(json.dumps(SPEC))
    (tmp_path / "show.json").write_text(json.dumps({"id": "m", "name": "n", "spec": SPEC}))
    assert read_spec(str(tmp_path / "spec.json")) == read_spec(str(tmp_path / "show.json")) == SPEC
