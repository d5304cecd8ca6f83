"""Datasets through the wire: streamed uploads, content addresses, checks, and nothing half-stored."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from itertools import pairwise
from typing import Any

import grpc
import numpy as np
import pytest
from helpers import CallsEnded, Running
from sqlalchemy import func, select

from gradwire.client import (
    Client,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    ResourceExhaustedError,
)
from gradwire.service import Limits
from gradwire.storage import CHUNK_BYTES
from gradwire.storage import DEFAULT_TENANT as T
from gradwire.storage.schema import ChunkRow, UploadRow
from gradwire.v1 import gradwire_pb2 as pb
from gradwire.v1.digest import array_id

SPEC: dict[str, Any] = {
    "input_dim": 3,
    "layers": [{"kind": "dense", "units": 1, "activation": "identity", "init": "xavier_uniform"}],
    "loss": "squared_error",
    "dtype": "float64",
    "seed": 0,
}


def upload(client: Client, header: pb.DatasetHeader, chunks: list[bytes]) -> pb.Dataset:
    def messages() -> Iterator[pb.UploadDatasetRequest]:
        yield pb.UploadDatasetRequest(header=header)
        yield from (pb.UploadDatasetRequest(chunk=c) for c in chunks)

    try:
        return client.stub.UploadDataset(messages(), timeout=60)
    except grpc.RpcError as error:
        from gradwire.client.errors import from_rpc_error

        raise from_rpc_error(error) from error


def stored_pieces(server: Running) -> tuple[int, int]:
    """(chunk rows, uploads in progress) in the server's database."""
    with server.app.store.db.read() as s:
        chunks = s.scalar(select(func.count()).select_from(ChunkRow)) or 0
        uploads = s.scalar(select(func.count()).select_from(UploadRow)) or 0
    return chunks, uploads


def test_an_upload_is_stored_once_under_its_content_address(server: Running, client: Client) -> None:
    data = np.random.default_rng(0).normal(size=(1000, 3))
    first = client.upload_dataset(data, name="first")
    assert first.id == array_id(data)  # the client can compute the id the server gives
    assert (first.name, first.dtype, first.shape, first.nbytes) == (
        "first",
        "float64",
        (1000, 3),
        data.nbytes,
    )
    header = pb.DatasetHeader(name="again", dtype=pb.FLOAT64, shape=[1000, 3])
    raw = data.tobytes()
    again = upload(client, header, [raw[i : i + 777] for i in range(0, len(raw), 777)])  # odd chunk sizes
    assert (again.dataset_id, again.name) == (first.id, "first")
    np.testing.assert_array_equal(server.app.store.datasets.load(T, first.id), data)
    assert [d.id for d in client.list_datasets()] == [first.id]
    assert client.dataset(first.id) == first


def test_a_dataset_larger_than_the_message_limit_uploads_in_chunks(
    start_server: Callable[..., Running],
) -> None:
    running = start_server(max_message_mb=1)
    data = np.random.default_rng(1).normal(size=(400_000, 3)).astype(np.float32)  # 4.6 MiB
    with Client(running.address, max_message_mb=1) as client:
        dataset = client.upload_dataset(data)
        assert dataset.nbytes == data.nbytes
    np.testing.assert_array_equal(running.app.store.datasets.load(T, dataset.id), data)


def test_bytes_sent_in_pieces_of_any_size_are_stored_exactly(server: Running, client: Client) -> None:
    """Messages smaller than, across and larger than the storage chunks all land byte for byte
    (each storage chunk is filled from them, written while the next fills)."""
    data = np.random.default_rng(2).normal(size=((2 * CHUNK_BYTES + 40) // 8, 1))
    raw = data.tobytes()
    cuts = [0, 12, CHUNK_BYTES - 4, CHUNK_BYTES + 4, 2 * CHUNK_BYTES + 1, len(raw)]
    pieces = [raw[a:b] for a, b in pairwise(cuts)]
    dataset = upload(client, pb.DatasetHeader(dtype=pb.FLOAT64, shape=list(data.shape)), pieces)
    np.testing.assert_array_equal(server.app.store.datasets.load(T, dataset.dataset_id), data)
    assert stored_pieces(server) == (3, 0)  # two full storage chunks and the rest; no upload left


@pytest.mark.parametrize(
    ("header", "chunks", "field"),
    [
        (pb.DatasetHeader(dtype=pb.FLOAT32, shape=[4, 2]), [b"\x00" * 31], "chunk"),  # truncated
        (
            pb.DatasetHeader(dtype=pb.FLOAT32, shape=[4, 2]),
            [b"\x00" * 32, b"\x00"],
            "chunk",
        ),  # one byte too many
        (pb.DatasetHeader(dtype=pb.INT64, shape=[4, 2]), [b"\x00" * 64], "header.dtype"),
        (pb.DatasetHeader(dtype=pb.FLOAT32, shape=[8]), [b"\x00" * 32], "header.shape"),
        (pb.DatasetHeader(dtype=pb.FLOAT32, shape=[0, 2]), [], "header.shape"),
        (
            pb.DatasetHeader(dtype=pb.FLOAT32, shape=[2, 2]),
            [np.array([1, np.nan, 2, 3], "<f4").tobytes()],
            "chunk",
        ),
        (pb.DatasetHeader(dtype=pb.FLOAT32, shape=[1, 1], name="x" * 201), [b"\x00" * 4], "header.name"),
    ],
)
def test_an_inconsistent_upload_is_refused_and_stores_nothing(
    server: Running, client: Client, header: pb.DatasetHeader, chunks: list[bytes], field: str
) -> None:
    with pytest.raises(InvalidArgumentError) as info:
        upload(client, header, chunks)
    assert field in info.value.fields, info.value.field_violations
    assert stored_pieces(server) == (0, 0)
    assert list(client.list_datasets()) == []


def test_a_header_must_come_first_and_only_once(server: Running, client: Client) -> None:
    with pytest.raises(grpc.RpcError) as info:
        client.stub.UploadDataset(iter([pb.UploadDatasetRequest(chunk=b"\x00" * 8)]), timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    header = pb.DatasetHeader(dtype=pb.FLOAT32, shape=[1, 2])
    twice = [pb.UploadDatasetRequest(header=header), pb.UploadDatasetRequest(header=header)]
    with pytest.raises(grpc.RpcError) as info:
        client.stub.UploadDataset(iter(twice), timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert stored_pieces(server) == (0, 0)


def test_a_client_that_leaves_mid_upload_leaves_nothing(
    server: Running, client: Client, calls_ended: CallsEnded
) -> None:
    header = pb.DatasetHeader(dtype=pb.FLOAT64, shape=[1000, 1000])

    def messages() -> Iterator[pb.UploadDatasetRequest]:
        yield pb.UploadDatasetRequest(header=header)
        yield pb.UploadDatasetRequest(chunk=b"\x00" * (5 << 20))  # more than one storage chunk
        raise RuntimeError("the client gives up")

    with pytest.raises(grpc.RpcError):
        client.stub.UploadDataset(messages(), timeout=30)
    assert calls_ended.wait_for("UploadDataset") == "CANCELLED"
    assert server.app.store.datasets.page(T, 10) == []
    assert stored_pieces(server) == (0, 0)


def test_datasets_past_the_size_limit_are_refused_before_any_byte(
    start_server: Callable[..., Running],
) -> None:
    running = start_server(limits=Limits(max_dataset_mb=1))
    with Client(running.address) as client, pytest.raises(ResourceExhaustedError):
        client.upload_dataset(np.zeros((200_000, 2), np.float32))  # 1.5 MiB


def test_a_dataset_a_run_needs_cannot_be_deleted(server: Running, client: Client) -> None:
    X = np.random.default_rng(2).normal(size=(64, 3))
    inputs, targets = client.upload_dataset(X), client.upload_dataset(X[:, :1])
    model = client.create_model(SPEC)
    run = model.start_run(inputs.id, targets, epochs=100_000, batch_size=1)
    with pytest.raises(FailedPreconditionError, match=run.id):
        client.delete_dataset(inputs.id)
    run.cancel()
    run.wait()
    client.delete_dataset(inputs.id)
    with pytest.raises(NotFoundError):
        client.dataset(inputs.id)
    with pytest.raises(NotFoundError) as info:
        model.start_run(inputs.id, targets.id, epochs=1)
    assert info.value.code == grpc.StatusCode.NOT_FOUND


def test_uploads_retried_with_one_request_id_make_one_dataset(client: Client) -> None:
    data = np.ones((3, 3))
    first = client.upload_dataset(data, request_id="upload-1")
    again = client.upload_dataset(data, request_id="upload-1")
    assert first.id == again.id
    header = pb.DatasetHeader(dtype=pb.FLOAT64, shape=[3, 3], request_id="upload-1")
    with pytest.raises(InvalidArgumentError) as info:  # the same id with other content is a client bug
        upload(client, header, [np.zeros((3, 3)).tobytes()])
    assert info.value.fields == ("request_id",)
    assert [d.id for d in client.list_datasets()] == [first.id]


def test_an_upload_whose_client_stalls_is_cancelled_and_leaves_nothing(
    start_server: Callable[..., Running], calls_ended: CallsEnded
) -> None:
    running = start_server(upload_idle_seconds=0.5)
    release = threading.Event()

    def stalling() -> Iterator[pb.UploadDatasetRequest]:
        yield pb.UploadDatasetRequest(header=pb.DatasetHeader(dtype=pb.FLOAT64, shape=[1000, 1000]))
        yield pb.UploadDatasetRequest(chunk=b"\x00" * (5 << 20))
        release.wait(60)  # the client holds the stream open and sends nothing

    with Client(running.address) as client, pytest.raises(grpc.RpcError) as info:
        client.stub.UploadDataset(stalling(), timeout=60)  # no deadline would end it this soon
    release.set()
    assert info.value.code() == grpc.StatusCode.CANCELLED
    assert calls_ended.wait_for("UploadDataset") == "CANCELLED"
    assert stored_pieces(running) == (0, 0)
