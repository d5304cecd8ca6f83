"""Looking rather than reading, from the shell: ``gradwire history`` drawn (a PNG of the figure's
size), as CSV and as JSON (each parsed back to the epochs the server recorded); training progress
as one updating line on a terminal (a real pseudo-terminal, and a stream that says it is one) and a
plain line per epoch elsewhere; and every command's ``--help``, with its defaults."""

from __future__ import annotations

import argparse
import csv
import fcntl
import io
import json
import os
import pty
import struct
import subprocess
import sys
import termios
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers import Running

from gradwire.client import Client, History
from gradwire.client.cli import PLOT_INSTALL
from gradwire.client.views import DPI, FIGURE_INCHES, RUN_ID_SHOWN, plot_runs
from gradwire.service.ops.cli import build_parser, main

GRADWIRE = str(Path(sys.executable).with_name("gradwire"))
SPEC: dict[str, Any] = {
    "input_dim": 3,
    "layers": [
        {"kind": "dense", "units": 8, "activation": "tanh"},
        {"kind": "dense", "units": 2, "activation": "softmax"},
    ],
    "loss": "softmax_crossentropy",
    "seed": 3,
}
RNG = np.random.default_rng(7)
X = RNG.normal(size=(100, 3))
Y = np.eye(2)[(X[:, 0] > 0).astype(int)]
RUN_EPOCHS = (6, 4)
"""Two runs: the first with a validation set, the second without."""
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PLOT_PIXELS = (FIGURE_INCHES[1] * DPI, FIGURE_INCHES[0] * DPI)
"""The picture's (height, width)."""


@pytest.fixture
def trained(client: Client) -> tuple[str, list[History]]:
    """A model with two runs, and its history as the server gives it."""
    model = client.create_model(SPEC)
    model.fit(X, Y, epochs=RUN_EPOCHS[0], validation_split=0.2, optimizer="adam")
    model.fit(X, Y, epochs=RUN_EPOCHS[1], optimizer="adam")
    return model.id, model.history()


def _history(server: Running, *argv: str) -> int:
    return main(["history", *argv, "--server", server.address])


def _png_size(path: Path) -> tuple[int, int]:
    """A PNG's (height, width), from its IHDR chunk."""
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    width, height = struct.unpack(">II", data[16:24])
    return height, width


def test_history_plot_draws_the_last_run_or_the_one_named(
    server: Running, trained: tuple[str, list[History]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model_id, (first, last) = trained
    path = tmp_path / "last.png"
    assert _history(server, model_id, "--plot", str(path)) == 0
    assert capsys.readouterr().out == f"run {last.run_id} ({RUN_EPOCHS[1]} epochs) drawn in {path}\n"
    assert _png_size(path) == PLOT_PIXELS
    named = tmp_path / "first.png"
    assert _history(server, model_id, "--run", first.run_id, "--plot", str(named)) == 0
    assert f"run {first.run_id} ({RUN_EPOCHS[0]} epochs)" in capsys.readouterr().out
    assert _png_size(named) == PLOT_PIXELS
    assert path.read_bytes() != named.read_bytes()  # another run, another picture


def test_history_plot_together_draws_every_run_in_one_picture(
    server: Running, trained: tuple[str, list[History]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model_id, runs = trained
    path = tmp_path / "together.png"
    assert _history(server, model_id, "--plot", str(path), "--together") == 0
    assert capsys.readouterr().out == f"2 runs drawn in {path}\n"
    assert _png_size(path) == PLOT_PIXELS
    figure = plot_runs(runs)
    loss = figure.axes[0]
    labels = [line.get_label() for line in loss.get_lines()]
    first, last = (run.run_id[:RUN_ID_SHOWN] for run in runs)
    assert labels == [f"{first} train", f"{first} validation", f"{last} train"]  # the last had no validation
    assert len({line.get_color() for line in loss.get_lines()}) == 2  # a colour a run
    with pytest.raises(SystemExit) as done:
        _history(server, model_id, "--together")
    assert done.value.code == 2


def test_history_refuses_a_run_it_does_not_have_and_plot_with_format(
    server: Running, trained: tuple[str, list[History]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model_id, _ = trained
    with pytest.raises(SystemExit) as done:
        _history(server, model_id, "--run", "nope", "--plot", str(tmp_path / "x.png"))
    assert done.value.code == 1
    assert capsys.readouterr().err == f"gradwire: model {model_id} has no run nope\n"
    with pytest.raises(SystemExit) as done:
        _history(server, model_id, "--format", "csv", "--plot", str(tmp_path / "x.png"))
    assert done.value.code == 2
    assert not (tmp_path / "x.png").exists()


def test_history_as_csv_a_row_per_epoch_per_run(
    server: Running, trained: tuple[str, list[History]], capsys: pytest.CaptureFixture[str]
) -> None:
    model_id, runs = trained
    assert _history(server, model_id, "--format", "csv") == 0
    reader = csv.DictReader(io.StringIO(capsys.readouterr().out))
    assert reader.fieldnames == [
        "run_id",
        "epoch",
        "train_loss",
        "val_loss",
        "metric",
        "val_metric",
        "learning_rate",
        "grad_norm:0",
        "grad_norm:1",
    ]
    rows = list(reader)
    expected = [(run, epoch) for run in runs for epoch in run.epochs]
    assert len(rows) == sum(RUN_EPOCHS) == len(expected)
    for row, (run, epoch) in zip(rows, expected, strict=True):
        assert (row["run_id"], int(row["epoch"])) == (run.run_id, epoch["epoch"])
        assert float(row["train_loss"]) == epoch["train_loss"]  # every digit: repr round-trips
        assert float(row["metric"]) == epoch["train_metric"]
        assert float(row["learning_rate"]) == epoch["learning_rate"]
        for layer in ("0", "1"):
            assert float(row[f"grad_norm:{layer}"]) == epoch["grad_norms"][layer]
        if run is runs[0]:
            assert float(row["val_loss"]) == epoch["val_loss"]
        else:
            assert row["val_loss"] == row["val_metric"] == ""  # no validation set: empty cells


def test_history_as_json_the_runs_with_their_epochs(
    server: Running, trained: tuple[str, list[History]], capsys: pytest.CaptureFixture[str]
) -> None:
    model_id, runs = trained
    assert _history(server, model_id, "--format", "json") == 0
    shown = json.loads(capsys.readouterr().out)
    assert [(r["run_id"], r["status"], len(r["epochs"])) for r in shown] == [
        (run.run_id, "completed", n) for run, n in zip(runs, RUN_EPOCHS, strict=True)
    ]
    assert [r["epochs"] for r in shown] == [run.epochs for run in runs]
    assert shown[1]["epochs"][0]["val_loss"] is None
    assert _history(server, model_id) == 0  # the table, as before
    assert capsys.readouterr().out.count("epoch  train_loss") == 2


def test_plot_without_matplotlib_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib: ImportError
    with pytest.raises(SystemExit) as done:  # before any call: no server is asked
        main(["history", "m", "--plot", str(tmp_path / "x.png"), "--server", "127.0.0.1:9"])
    assert done.value.code == 2
    assert capsys.readouterr().err == f"gradwire: --plot needs matplotlib: {PLOT_INSTALL}\n"


def test_history_plot_and_to_frame_in_the_sdk(trained: tuple[str, list[History]], tmp_path: Path) -> None:
    _, (first, _) = trained
    figure = first.plot(tmp_path / "sdk.png")
    assert _png_size(tmp_path / "sdk.png") == PLOT_PIXELS
    assert figure.axes[0].get_title() == "loss"
    pytest.importorskip("pandas")
    frame = first.to_frame()
    assert list(frame.index) == list(range(1, RUN_EPOCHS[0] + 1))
    assert list(frame["grad_norm:1"]) == [epoch["grad_norms"]["1"] for epoch in first.epochs]


def test_the_sdk_and_the_command_import_neither_matplotlib_nor_pandas() -> None:
    probe = (
        "import sys, gradwire.client, gradwire.service.ops.cli; "
        "print([m for m in ('matplotlib', 'pandas') if m in sys.modules])"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "[]", done.stderr


# ------------------------------------------------------------------------------------ progress


@pytest.fixture
def data(tmp_path: Path) -> Path:
    np.savez(tmp_path / "data.npz", x=X, y=Y)
    return tmp_path / "data.npz"


def _train(server: Running, model_id: str, data: Path, epochs: int) -> list[str]:
    return [
        "train",
        model_id,
        "--data",
        str(data),
        "--epochs",
        str(epochs),
        "--validation-split",
        "0.2",
        "--server",
        server.address,
    ]


def test_progress_piped_is_a_plain_line_per_epoch(
    server: Running, client: Client, data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model_id = client.create_model(SPEC).id
    assert main(_train(server, model_id, data, 5)) == 0
    err = capsys.readouterr().err
    assert "\r" not in err
    lines = err.splitlines()
    assert [line.split("epoch ")[1].split()[0] for line in lines] == [f"{i}/5" for i in range(1, 6)]
    assert all("val_loss" in line and "accuracy" in line for line in lines)


def _read_all(fd: int) -> bytes:
    """Everything written to a pseudo-terminal until its last writer closes it (Linux: EIO)."""
    chunks = []
    while True:
        try:
            chunk = os.read(fd, 4096)
        except OSError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


def test_progress_on_a_terminal_is_one_line_updated_in_place(
    server: Running, client: Client, data: Path
) -> None:
    model_id = client.create_model(SPEC).id
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 160, 0, 0))
    with subprocess.Popen(
        [GRADWIRE, *_train(server, model_id, data, 5)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=follower,
    ) as process:
        os.close(follower)
        shown = _read_all(leader).decode()
        os.close(leader)
        assert process.stdout is not None
        out = process.stdout.read().decode()
    assert process.returncode == 0, shown
    assert "stopped: max_epochs" in out
    assert shown.count("\n") == 1  # the line, finished when the run ended (the tty writes \r\n)
    assert shown.count("\r") >= 3  # drawn at the start, redrawn in place, finished
    final = shown.rstrip().split("\r")[-1]
    assert final.startswith("epoch 5/5 |")
    assert all(f" {name}=" in final for name in ("loss", "val_loss", "accuracy"))
    assert "[####" not in shown  # not the plain lines


class Terminal(io.StringIO):
    """A stream that says it is a terminal, as tqdm and the command ask."""

    def isatty(self) -> bool:
        return True


def test_runs_watch_on_a_terminal_updates_one_line(
    server: Running,
    trained: tuple[str, list[History]],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _, (first, _) = trained
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)  # here: capsys puts its own back for the test's call
    assert main(["runs", "watch", first.run_id, "--after-epoch", "2", "--server", server.address]) == 0
    shown = terminal.getvalue()
    assert shown.count("\n") == 1
    draws = [draw for draw in shown.rstrip().split("\r") if draw]
    assert draws[0].startswith("epoch 2/6 |")  # from where it was asked to start
    assert draws[-1].startswith(f"epoch {RUN_EPOCHS[0]}/{RUN_EPOCHS[0]} |")
    assert "val_loss=" in draws[-1]
    assert f"run {first.run_id} completed" in capsys.readouterr().out


# ------------------------------------------------------------------------------------ help


def _commands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Every command's words and parser, groups (``runs``) and their commands (``runs start``)."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _commands(sub, (*path, name))


def test_every_command_has_help_with_its_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    commands = dict(_commands(build_parser()))
    for path in (("runs", "start"), ("datasets", "upload"), ("keys", "create"), ("tenants", "quota")):
        assert path in commands
    for path, parser in commands.items():
        with pytest.raises(SystemExit) as done:
            main([*path, "--help"])
        assert done.value.code == 0, path
        shown = " ".join(capsys.readouterr().out.split())  # one line: argparse wraps to the terminal
        assert shown.startswith(f"usage: {' '.join(('gradwire', *path))}")
        for action in parser._actions:
            if not action.option_strings or action.default in (None, False, "", argparse.SUPPRESS):
                continue
            said = "default" in (action.help or "") or f"(default: {action.default})" in shown
            assert said, f"{' '.join(path)} {action.option_strings[0]}: no default in its help"
        if not parser._subparsers:  # a command, not a group: each has options with defaults
            assert "default" in shown, path
    main_help = {("train",): "--epochs EPOCHS at most this many epochs (default: 100)"}
    main_help[("history",)] = "{table,csv,json} how runs are printed (default: table)"
    for path, text in main_help.items():
        with pytest.raises(SystemExit):
            main([*path, "--help"])
        assert text in " ".join(capsys.readouterr().out.split())
