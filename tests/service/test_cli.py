"""The gradwire command: database upgrade, refusals, and the client commands on a real server."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from collections.abc import Callable
from dataclasses import fields
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest
from helpers import Running
from sqlalchemy import text

from gradwire.client import Client
from gradwire.client.cli import CANCEL_RUNNING, load_array, training_arguments, training_data
from gradwire.service import Settings, create_server, stop_server
from gradwire.service.core.settings import Limits
from gradwire.service.ops.cli import SHOWN_DEFAULTS, build_parser, main
from gradwire.storage import make_engine, open_store
from gradwire.storage.database import current_revision, head_revision
from gradwire.v1.digest import array_id

GRADWIRE = str(Path(sys.executable).with_name("gradwire"))
SPEC = {
    "input_dim": 2,
    "layers": [{"kind": "dense", "units": 3, "activation": "identity", "init": "xavier_uniform"}],
    "loss": "squared_error",
}


def test_db_upgrade_creates_the_schema(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'fresh.db'}"
    assert main(["db", "upgrade", "--database-url", url]) == 0
    assert current_revision(make_engine(url)) == head_revision()


def test_serve_refuses_an_out_of_date_database_naming_the_upgrade(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    store = open_store(url)
    with store.engine.begin() as connection:
        connection.execute(text("UPDATE alembic_version SET version_num = '0000'"))
    done = subprocess.run(
        [GRADWIRE, "serve", "--address", "127.0.0.1:0", "--database-url", url, "--auth", "off"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert "gradwire db upgrade" in done.stderr


def test_client_commands(server: Running, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(json.dumps(SPEC))
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 2))
    y = x @ np.array([[1.0, -1.0, 0.5], [2.0, 0.0, -1.0]])
    np.savez(tmp_path / "data.npz", x=x, y=y)
    at = ["--server", server.address]

    assert main(["models", "create", "--spec", str(spec_file), "--name", "linear", *at]) == 0
    model_id = capsys.readouterr().out.strip()
    assert (
        main(
            [
                "train",
                model_id,
                "--data",
                str(tmp_path / "data.npz"),
                "--epochs",
                "40",
                "--optimizer",
                "adam",
                "--learning-rate",
                "0.05",
                "--validation-split",
                "0.25",
                *at,
            ]
        )
        == 0
    )
    captured = capsys.readouterr()
    assert "epoch 40/40" in captured.err  # the progress bar, one line per epoch
    assert "version 2" in captured.out
    assert (
        main(
            [
                "predict",
                model_id,
                "--inputs",
                str(tmp_path / "data.npz"),
                "--output",
                str(tmp_path / "out.npz"),
                *at,
            ]
        )
        == 0
    )
    with np.load(tmp_path / "out.npz", allow_pickle=False) as out:
        assert out["outputs"].shape == (64, 3)
        outputs = out["outputs"]
    for name, read in OUTPUT_READERS.items():  # each file in the format its name says
        predict = [
            "predict",
            model_id,
            "--inputs",
            str(tmp_path / "data.npz"),
            "--output",
            str(tmp_path / name),
        ]
        assert main([*predict, *at]) == 0
        np.testing.assert_allclose(read(tmp_path / name), outputs, rtol=1e-7)
    capsys.readouterr()
    assert main(["models", "list", *at]) == 0
    header, row = capsys.readouterr().out.splitlines()
    assert header.split() == ["ID", "NAME", "VERSION", "PARAMS", "LOSS", "TRAINING", "LAYERS"]
    assert row.split()[:6] == [model_id, "linear", "2", "9", "squared_error", "no"]
    assert main(["models", "list", "--quiet", *at]) == 0
    assert capsys.readouterr().out == f"{model_id}\n"  # for MODEL_ID=$(...)
    assert main(["models", "show", model_id, *at]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert (shown["name"], shown["version"], shown["spec"]["loss"]) == ("linear", 2, "squared_error")
    assert main(["history", model_id, *at]) == 0
    table = capsys.readouterr().out
    assert "completed" in table
    assert [line.split()[0] for line in table.splitlines()[2:]] == [str(e) for e in range(1, 41)]
    assert main(["models", "delete", model_id, *at]) == 0
    capsys.readouterr()
    assert main(["models", "show", model_id, *at]) == 1
    assert "NOT_FOUND" in capsys.readouterr().err


def test_bad_input_from_the_shell_prints_the_field(
    server: Running, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({**SPEC, "loss": "hinge"}))
    assert main(["models", "create", "--spec", str(bad), "--server", server.address]) == 1
    assert "spec.loss" in capsys.readouterr().err


# ------------------------------------------------------------------------------------ training flags

FLAGS = [
    "--epochs", "7", "--batch-size", "4", "--optimizer", "adam", "--learning-rate", "0.1",
    "--validation-split", "0.25", "--patience", "3", "--seed", "5",
    "--options", '{"schedule": {"name": "cosine"}, "momentum": 0.8}',
]  # fmt: skip


def test_train_and_runs_start_share_their_flags_and_options() -> None:
    parser = build_parser()
    train = parser.parse_args(["train", "m", "--data", "d.npz", *FLAGS])
    start = parser.parse_args(["runs", "start", "m", "--data", "d.npz", *FLAGS])
    expected = {
        "epochs": 7,
        "batch_size": 4,
        "optimizer": "adam",
        "learning_rate": 0.1,
        "validation_split": 0.25,
        "patience": 3,
        "seed": 5,
        "schedule": {"name": "cosine"},
        "momentum": 0.8,
    }
    assert training_arguments(train) == training_arguments(start) == expected
    # the same flags on both: only what belongs to one of them differs
    assert vars(train).keys() ^ vars(start).keys() == {"quiet", "request_id", "action"}


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--options", '{"epochs": 3}'], "--options repeats epochs"),
        (["--options", "[1, 2]"], "must be a JSON object"),
        (["--options", "{epochs"], "is not JSON"),
    ],
)
def test_training_options_that_contradict_the_flags_are_refused(arguments: list[str], message: str) -> None:
    args = build_parser().parse_args(["runs", "start", "m", "--data", "d.npz", *arguments])
    with pytest.raises(SystemExit, match=re.escape(message)):
        training_arguments(args)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ([], "training needs --data"),
        (["--inputs-dataset", "a"], "training needs --data"),
        (["--data", "d.npz", "--inputs-dataset", "a"], "give --data, or the inputs and targets, not both"),
        (["--inputs", "x.csv", "--inputs-dataset", "a"], "give --inputs or --inputs-dataset, not both"),
    ],
)
def test_training_data_is_one_source_per_role(arguments: list[str], message: str) -> None:
    args = build_parser().parse_args(["runs", "start", "m", *arguments])
    with pytest.raises(SystemExit, match=re.escape(message)):
        training_data(args)


def test_training_data_mixes_a_file_and_a_dataset(tmp_path: Path) -> None:
    np.savetxt(tmp_path / "x.csv", np.arange(6.0).reshape(3, 2), delimiter=",")
    args = build_parser().parse_args(
        ["train", "m", "--inputs", str(tmp_path / "x.csv"), "--targets-dataset", "abc"]
    )
    x, y = training_data(args)
    assert isinstance(x, np.ndarray)
    assert (x.shape, y) == ((3, 2), "abc")


# ------------------------------------------------------------------------------------ datasets and runs


def _out(capsys: pytest.CaptureFixture[str]) -> str:
    return capsys.readouterr().out.strip()


def _epochs_printed(err: str) -> list[int]:
    """The epoch numbers of the progress lines."""
    return [int(n) for n in re.findall(r"epoch (\d+)/\d+", err)]


def _listed(capsys: pytest.CaptureFixture[str]) -> list[str]:
    """The ids (first column) of a listing: a header and a row each, or, empty, nothing on stdout
    and what is not there on stderr."""
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    if not lines:
        assert re.fullmatch(r"no (models|datasets|runs)\n", captured.err)
        return []
    assert lines[0].split()[0] == "ID"
    return [line.split()[0] for line in lines[1:]]


def _model(tmp_path: Path, at: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(json.dumps(SPEC))
    assert main(["models", "create", "--spec", str(spec_file), *at]) == 0
    return _out(capsys)


def _data(tmp_path: Path, rows: int = 64) -> Path:
    """Linear data for SPEC in ``data.npz`` (arrays x and y)."""
    x = np.random.default_rng(0).normal(size=(rows, 2))
    np.savez(tmp_path / "data.npz", x=x, y=x @ np.array([[1.0, -1.0, 0.5], [2.0, 0.0, -1.0]]))
    return tmp_path / "data.npz"


def test_datasets_upload_list_show_delete(
    server: Running, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    at = ["--server", server.address]
    x = np.random.default_rng(1).normal(size=(20, 2))
    np.savez(tmp_path / "d.npz", x=x, labels=np.arange(20))
    np.savetxt(tmp_path / "x.csv", x, delimiter=",", fmt="%.17g")  # every bit of each number

    ids = []
    for upload in (["d.npz", "--name", "train-x"], ["d.npz", "--name", "again"], ["x.csv"]):
        assert main(["datasets", "upload", str(tmp_path / upload[0]), *upload[1:], *at]) == 0
        ids.append(_out(capsys))
    assert ids == [array_id(x)] * 3  # one content address: .npz, again, or .csv
    assert main(["datasets", "upload", str(tmp_path / "d.npz"), "--dtype", "float32", *at]) == 0
    single = _out(capsys)
    assert main(["datasets", "upload", str(tmp_path / "d.npz"), "--key", "labels", *at]) == 0
    labels = _out(capsys)
    assert single == array_id(x.astype(np.float32))
    assert labels == array_id(np.arange(20.0).reshape(-1, 1))  # integers as float64, 1-D as a column
    with pytest.raises(SystemExit, match="has no array 'nope'"):
        main(["datasets", "upload", str(tmp_path / "d.npz"), "--key", "nope", *at])

    assert main(["datasets", "list", *at]) == 0
    assert sorted(_listed(capsys)) == sorted([ids[0], single, labels])
    assert main(["datasets", "show", ids[0], *at]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert {k: shown[k] for k in ("id", "name", "dtype", "shape", "nbytes")} == {
        "id": ids[0],
        "name": "train-x",  # the first upload's: the later ones found it stored
        "dtype": "float64",
        "shape": [20, 2],
        "nbytes": 320,
    }
    assert shown["created_at"].startswith("20")

    assert main(["datasets", "delete", single, *at]) == 0
    assert _out(capsys) == f"deleted {single}"
    assert main(["datasets", "show", single, *at]) == 1
    assert "NOT_FOUND" in capsys.readouterr().err
    assert main(["datasets", "list", *at]) == 0
    assert sorted(_listed(capsys)) == sorted([ids[0], labels])


def test_a_detached_run_on_datasets_watched_shown_and_exported(
    server: Running, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    at = ["--server", server.address]
    model_id = _model(tmp_path, at, capsys)
    data = _data(tmp_path)
    dataset = {}
    for key, role in (("x", "inputs"), ("y", "targets")):
        assert main(["datasets", "upload", str(data), "--key", key, *at]) == 0
        dataset[role] = _out(capsys)
    start = ["runs", "start", model_id, "--inputs-dataset", dataset["inputs"]]
    start += ["--targets-dataset", dataset["targets"], "--epochs", "30", "--optimizer", "adam"]
    assert main([*start, "--learning-rate", "0.05", "--seed", "7", *at]) == 0
    run_id = _out(capsys)

    assert main(["runs", "watch", run_id, *at]) == 0
    watched = capsys.readouterr()
    assert _epochs_printed(watched.err) == list(range(1, 31))
    assert watched.out.startswith(f"run {run_id} completed (max_epochs); best epoch ")
    assert watched.out.rstrip().endswith(f"model {model_id} at version 2")
    assert main(["runs", "watch", run_id, "--after-epoch", "25", *at]) == 0
    assert _epochs_printed(capsys.readouterr().err) == [26, 27, 28, 29, 30]

    assert main(["runs", "show", run_id, *at]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert (shown["id"], shown["model_id"], shown["status"]) == (run_id, model_id, "completed")
    assert (shown["epochs_done"], shown["epochs_planned"], shown["version"]) == (30, 30, 2)
    assert shown["datasets"] == shown["receipt"]["datasets"] == dataset
    assert (shown["receipt"]["seed"], shown["receipt"]["base_version"]) == (7, 1)
    digest = shown["receipt"]["weights_sha256"]
    assert re.fullmatch("[0-9a-f]{64}", digest)

    assert main(["runs", "resume", run_id, *at]) == 1  # only an interrupted run resumes
    assert "gradwire: FAILED_PRECONDITION" in capsys.readouterr().err
    assert main(["runs", "show", "no-such-run", *at]) == 1
    assert "NOT_FOUND" in capsys.readouterr().err

    with Client(server.address) as client:
        model = client.model(model_id)
        expected = {version: model.export(version) for version in (1, 2)}
    for version in (2, 1):
        output = tmp_path / f"v{version}.npz"
        assert main(["export", model_id, "--output", str(output), "--version", str(version), *at]) == 0
        printed = _out(capsys)
        with np.load(output, allow_pickle=False) as exported:
            assert sorted(exported.files) == sorted(expected[version])
            for name, array in expected[version].items():
                assert exported[name].dtype == array.dtype
                np.testing.assert_array_equal(exported[name], array)
        assert printed.startswith(f"version {version}: {len(expected[version])} arrays written to {output}")
        assert (digest in printed) == (version == 2)  # the receipt names the weights the run made
    assert main(["export", model_id, "--output", str(tmp_path / "current"), *at]) == 0
    current = _out(capsys)  # version 0: the current one, named
    assert current.startswith("version 2: ")
    assert current.endswith(f"(weights_sha256 {digest})")
    assert (tmp_path / "current.npz").exists()


def test_runs_list_filters_cancel_and_a_repeated_start(
    server: Running, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    at = ["--server", server.address]
    quick_model, long_model = _model(tmp_path, at, capsys), _model(tmp_path, at, capsys)
    data = str(_data(tmp_path, rows=256))
    assert main(["runs", "start", quick_model, "--data", data, "--epochs", "3", *at]) == 0
    quick = _out(capsys)
    assert main(["runs", "watch", quick, *at]) == 0
    capsys.readouterr()

    # batches of one row for 100000 epochs: running (or queued) until cancelled
    long = ["runs", "start", long_model, "--data", data, "--epochs", "100000", "--batch-size", "1"]
    assert main([*long, "--request-id", "cli-long", *at]) == 0
    long_run = _out(capsys)
    assert main([*long, "--request-id", "cli-long", *at]) == 0
    assert _out(capsys) == long_run  # the same request: the same run, not a second
    assert main([*long, *at]) == 1
    assert "gradwire: ABORTED" in capsys.readouterr().err  # one active run per model

    assert main(["runs", "list", "--status", "queued", "running", *at]) == 0
    assert _listed(capsys) == [long_run]
    assert main(["runs", "cancel", long_run, *at]) == 0
    assert re.fullmatch(
        f"run {long_run} (cancelled|running \\({re.escape(CANCEL_RUNNING)}\\))",
        _out(capsys),
    )
    assert main(["runs", "watch", long_run, *at]) == 0  # a cancelled run ends the watch with 0
    assert f"run {long_run} cancelled (cancelled)" in capsys.readouterr().out

    listings = {
        (): [quick, long_run],
        ("--model", quick_model): [quick],
        ("--model", long_model): [long_run],
        ("--status", "cancelled"): [long_run],
        ("--status", "completed", "--status", "failed"): [quick],
        ("--model", quick_model, "--status", "cancelled"): [],
        ("--status", "running", "queued"): [],
    }
    for flags, expected in listings.items():
        assert main(["runs", "list", *flags, *at]) == 0
        assert _listed(capsys) == expected, flags
    assert main(["runs", "list", "--status", "finished", *at]) == 1  # not a status: the server says so
    refused = capsys.readouterr().err
    assert "unknown statuses ['finished']" in refused
    assert "interrupted" in refused  # with the statuses there are


def test_an_interrupted_run_watches_to_exit_3_and_resumes(
    database_url: str,
    start_server: Callable[..., Running],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    settings = Settings(
        address="127.0.0.1:0",
        database_url=database_url,
        checkpoint_interval=0.05,
        poll_seconds=0.1,
        auth=False,
    )
    server, port, app = create_server(settings)
    at = ["--server", f"127.0.0.1:{port}"]
    try:
        model_id = _model(tmp_path, at, capsys)
        data = str(_data(tmp_path, rows=256))
        start = ["runs", "start", model_id, "--data", data, "--epochs", "100000", "--batch-size", "1"]
        assert main([*start, *at]) == 0
        run_id = _out(capsys)
        with Client(f"127.0.0.1:{port}") as client:
            next(client.run(run_id).epochs())  # an epoch came: it is running
    finally:
        stop_server(server, app, grace=60)  # runs executing stop at an epoch's end: interrupted

    second = start_server(auto_resume=0)  # the same database; resumes nothing by itself
    at = ["--server", second.address]
    assert main(["runs", "list", "--status", "interrupted", *at]) == 0
    assert _listed(capsys) == [run_id]
    assert main(["runs", "watch", run_id, *at]) == 3
    watched = capsys.readouterr()
    assert _epochs_printed(watched.err)[0] == 1  # the epochs it committed before it stopped
    assert f"gradwire runs resume {run_id}" in watched.err
    assert watched.out.startswith(f"run {run_id} interrupted (")

    assert main(["runs", "resume", run_id, *at]) == 0
    assert _out(capsys) == f"run {run_id} queued"
    assert main(["runs", "cancel", run_id, *at]) == 0
    capsys.readouterr()
    assert main(["runs", "watch", run_id, *at]) == 0
    assert f"run {run_id} cancelled (cancelled)" in capsys.readouterr().out


# ------------------------------------------------------------------------------------ failing, Unix-like


def _closed_address() -> str:
    """host:port where nothing listens: a port bound, read and closed again."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{probe.getsockname()[1]}"


@pytest.fixture
def hostile(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The working folder: files a user may hand the command by mistake, and data.npz to train on."""
    typo = {**SPEC, "layers": [{"kind": "dense", "unitz": 3, "activation": "identity"}]}
    texts = {
        "header.csv": "a,b\n1,2\n3,4\n",
        "bad.json": '{"input_dim": 2,',
        "list.json": json.dumps([SPEC]),
        "typo.json": json.dumps(typo),
        "corrupt.npz": "not a zip archive",
    }
    for name, content in texts.items():
        (tmp_path / name).write_text(content)
    np.save(tmp_path / "cube.npy", np.ones((2, 2, 2)))
    np.savez(tmp_path / "ab.npz", a=np.ones((2, 1)), b=np.ones((2, 1)))
    _data(tmp_path)
    monkeypatch.chdir(tmp_path)
    return tmp_path


PREDICT = ["predict", "m", "--output", "out.csv", "--inputs"]
TRAIN = ["train", "m", "--data", "data.npz", "--options"]
LOCAL_FAILURES = [
    ([*PREDICT, "missing.csv"], 1, "cannot read missing.csv: No such file or directory"),
    ([*PREDICT, "corrupt.npz"], 1, "cannot read corrupt.npz: not an .npz archive"),
    ([*PREDICT, "cube.npy"], 1, "cube.npy holds float64 (2, 2, 2): expected numbers in rows and columns"),
    (["models", "create", "--spec", "bad.json"], 1, "bad.json is not JSON: "),
    (["models", "create", "--spec", "list.json"], 1, "list.json must be a JSON object, not an array"),
    (["models", "create", "--spec", "typo.json"], 1, 'typo.json is not a model spec: '),
    (["models", "create"], 2, "models create needs --spec FILE"),
    ([*TRAIN, '{"optimizer": {"name": "adam"}}'], 2, "--options repeats optimizer: the optimiser is "),
    ([*TRAIN, "nope"], 2, "--options is not JSON: "),
    ([*TRAIN, '{"schedule": 3}'], 2, "--options: schedule: "),
    ([*TRAIN, '{"shedule": {}}'], 2, "--options: no option 'shedule' (known: batch_size, "),
    (["train", "m", "--inputs", "header.csv", "--targets", "ab.npz"], 1, "ab.npz has no array 'y' (it has"),
    (["runs", "start", "m", "--data", "ab.npz"], 1, "ab.npz has no array 'x' (it has a, b)"),
]  # fmt: skip
"""(arguments, exit code, words of the line): problems found before the server is called."""


@pytest.mark.parametrize(("arguments", "code", "words"), LOCAL_FAILURES)
def test_a_local_problem_is_one_line_and_an_exit_code(
    arguments: list[str], code: int, words: str, hostile: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as stopped:
        main([*arguments, "--server", _closed_address()])  # never called: the problem is found first
    assert stopped.value.code == code
    err = capsys.readouterr().err
    assert err.startswith(f"gradwire: {words}")
    assert err.count("\n") == 1, err


def test_the_console_script_fails_in_one_line_with_its_exit_code(hostile: Path) -> None:
    cases = [([*PREDICT, "missing.csv"], 1), (["models", "create"], 2), (["models", "list"], 1)]
    env = {**os.environ, "GRADWIRE_SERVER": _closed_address()}
    started = [  # at once: each takes seconds to import
        subprocess.Popen([GRADWIRE, *arguments], stderr=subprocess.PIPE, text=True, env=env)
        for arguments, _ in cases
    ]
    for process, (arguments, code) in zip(started, cases, strict=True):
        _, err = process.communicate(timeout=120)
        assert process.returncode == code, (arguments, err)
        assert err.startswith("gradwire: ")
        assert err.count("\n") == 1, (arguments, err)


def test_a_server_that_is_not_listening_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    address = _closed_address()
    with pytest.raises(SystemExit) as stopped:
        main(["models", "list", "--server", address])
    assert stopped.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith(f"gradwire: cannot reach the server at {address}: ")
    assert err.count("\n") == 1, err


def test_a_reader_that_goes_away_ends_the_command_quietly(server: Running) -> None:
    with Client(server.address) as client:
        model_id = client.create_model(SPEC).id
    read, write = os.pipe()
    os.close(read)  # the reader is gone before the command writes a byte: its first write fails
    try:
        done = subprocess.run(
            [GRADWIRE, "models", "show", model_id, "--server", server.address],
            stdout=write,
            stderr=subprocess.PIPE,
            text=True,
            timeout=120,
        )
    finally:
        os.close(write)
    assert (done.returncode, done.stderr) == (141, "")  # as SIGPIPE ends other tools: no traceback


def test_a_csv_header_row_is_skipped_and_the_help_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    files = {
        "plain.csv": "1,2\n3,4\n",
        "header.csv": "a,b\n1,2\n3,4\n",
        "quoted.csv": '"a", "b"\n1,2\n3,4\n',
        "bom.csv": "\ufeff1,2\n3,4\n",  # a byte-order mark, as spreadsheets write it: not a header
    }
    for name, content in files.items():
        (tmp_path / name).write_text(content, encoding="utf-8")
        np.testing.assert_array_equal(load_array(str(tmp_path / name)), [[1.0, 2.0], [3.0, 4.0]])
    (tmp_path / "only-header.csv").write_text("a,b\n")
    with pytest.raises(SystemExit, match=r"only-header.csv holds float64 \(0, 1\)"):
        load_array(str(tmp_path / "only-header.csv"))
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    assert "a first row that is not numbers is a header, skipped" in " ".join(capsys.readouterr().out.split())


def test_targets_read_array_y_or_the_only_array_of_a_file(tmp_path: Path) -> None:
    x, y = np.arange(6.0).reshape(3, 2), np.arange(3.0).reshape(3, 1)
    np.savez(tmp_path / "xy.npz", x=x, y=y)
    np.savez(tmp_path / "labels.npz", labels=y[:, 0])
    for targets in ("xy.npz", "labels.npz"):
        flags = ["--inputs", str(tmp_path / "xy.npz"), "--targets", str(tmp_path / targets)]
        inputs, outputs = training_data(build_parser().parse_args(["train", "m", *flags]))
        np.testing.assert_array_equal(inputs, x)
        np.testing.assert_array_equal(outputs, y)


SETTING_REFUSALS = [
    ({"GRADWIRE_LEASE_SECONDS": "abc"}, [], "GRADWIRE_LEASE_SECONDS='abc': lease_seconds must be a number"),
    ({"GRADWIRE_LEASE_SECONDS": "0"}, [], "GRADWIRE_LEASE_SECONDS='0': lease_seconds must be greater than 0"),
    ({"GRADWIRE_MAX_LAYERS": "1.5"}, [], "GRADWIRE_MAX_LAYERS='1.5': max_layers must be a whole number"),
    (
        {"GRADWIRE_TRAIN_WORKERS": "2"},
        ["--train-workers", "0"],
        "--train-workers 0: train_workers must be greater than 0",  # the flag wins, and is named
    ),
    ({}, ["--max-layers", "x"], "argument --max-layers: invalid int value: 'x' (see gradwire serve --help)"),
    (
        {"GRADWIRE_LOG_LEVEL": "loud"},
        [],
        "GRADWIRE_LOG_LEVEL='loud': must be one of debug, info, warning, error, critical",
    ),
    (
        {"GRADWIRE_LEASE_SECONDS": "3"},
        [],
        "heartbeat_seconds (the default; set --heartbeat-seconds or GRADWIRE_HEARTBEAT_SECONDS): "
        "heartbeat_seconds must be at most half of lease_seconds",
    ),
]  # fmt: skip
"""(environment, flags, the line): each refused before anything starts, naming where it came from."""


OUTPUT_READERS = {
    "out.npy": lambda path: np.load(path, allow_pickle=False),
    "out.csv": lambda path: np.loadtxt(path, delimiter=",", ndmin=2),
    "out.txt": lambda path: np.loadtxt(path, delimiter=",", ndmin=2),  # any other name: CSV
}


SWITCHES = [
    ([], {"auth": None, "insecure": None}),  # not given: the variable, else the default, decides
    (["--insecure"], {"insecure": True}),  # as the refusal to listen unprotected says to pass it
    (["--no-auth"], {"auth": False}),
    (["--auth", "off"], {"auth": False}),  # make run's words
    (["--auth"], {"auth": True}),
    (["--insecure", "false", "--auth", "on"], {"insecure": False, "auth": True}),
]


def test_a_flag_is_taken_only_as_spelt_in_full() -> None:
    """``--epoch 500`` was taken for ``--epochs 500``: a prefix passed for the flag."""
    assert build_parser().parse_args(["train", "m", "--data", "d.npz", "--epochs", "5"]).epochs == 5
    with pytest.raises(SystemExit, match="unrecognized arguments: --epoch 5"):
        build_parser().parse_args(["train", "m", "--data", "d.npz", "--epoch", "5"])


@pytest.mark.parametrize(("flags", "parsed"), SWITCHES)
def test_a_switch_is_a_flag_alone_and_takes_on_or_off_too(flags: list[str], parsed: dict[str, bool]) -> None:
    args = build_parser().parse_args(["serve", *flags])
    assert {name: getattr(args, name) for name in parsed} == parsed


@pytest.mark.parametrize(("env", "flags", "line"), SETTING_REFUSALS)
def test_a_refused_setting_names_its_variable_or_flag(
    env: dict[str, str],
    flags: list[str],
    line: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SystemExit) as stopped:
        main(["serve", "--address", "127.0.0.1:0", "--data-dir", str(tmp_path), *flags])
    assert stopped.value.code == 2
    assert capsys.readouterr().err == f"gradwire: {line}\n"
    assert not list(tmp_path.iterdir())  # nothing made, nothing started


def test_version_is_the_installed_distribution_s(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out == f"gradwire {metadata.version('gradwire')}\n"


def test_serve_help_lists_every_variable_with_its_default(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main(["serve", "--help"])
    assert done.value.code == 0
    shown = " ".join(capsys.readouterr().out.split())  # as one line: argparse wraps to the terminal
    assert "--lease-seconds LEASE_SECONDS GRADWIRE_LEASE_SECONDS, default 30.0" in shown
    assert "--tls-cert-file TLS_CERT_FILE GRADWIRE_TLS_CERT_FILE, default none" in shown
    for setting in (*fields(Settings), *fields(Limits)):
        if setting.name not in ("limits", *SHOWN_DEFAULTS):  # defaults computed: in words
            default = setting.default if setting.default != "" else "none"
            assert f"GRADWIRE_{setting.name.upper()}, default {default}" in shown
    assert "GRADWIRE_DATABASE_URL, default a SQLite file in the data dir" in shown
    assert "GRADWIRE_TRAIN_WORKERS, default the CPUs this process may use" in shown
