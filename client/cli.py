"""The client commands of ``gradwire``: the service used from a shell, over the SDK.

    gradwire models list | show ID | delete ID | create --spec spec.json [--name NAME]
    gradwire train ID DATA [--epochs N ...]                    attached: progress, then a summary
    gradwire predict ID --inputs x.csv --output out.csv [--version V]
    gradwire history ID [--format table|csv|json] [--run RUN_ID] [--plot FILE.png]
    gradwire export ID -o weights.npz [--format npz|onnx] [--version V]   (--output is -o)
    gradwire import --spec spec.json --weights weights.npz [--name NAME]  prints the new model id
    gradwire datasets upload FILE [--key x] [--name NAME] [--dtype float32|float64]
    gradwire datasets list | show ID | delete ID
    gradwire runs start ID DATA [--epochs N ...] [--request-id R]  detached: prints the run id
    gradwire runs list [--model ID] [--status S ...]
    gradwire runs show RUN_ID | cancel RUN_ID | resume RUN_ID
    gradwire runs watch RUN_ID [--after-epoch N]

DATA is ``--data data.npz`` (arrays ``x`` and ``y``), or the inputs and the targets each as a file
(``--inputs x.csv``) or as an uploaded dataset (``--inputs-dataset ID``). ``train`` and
``runs start`` take the same training flags (``--epochs``, ``--batch-size``, ``--optimizer``,
``--learning-rate``, ``--validation-split``, ``--patience``, ``--loss-threshold``,
``--clip-norm``, ``--seed``, ``--options JSON``). Their progress (``train``'s and ``runs
watch``'s), on stderr, is one line updated in place on a terminal, and a line per epoch elsewhere.
``history --plot`` draws a run (matplotlib: ``pip install 'gradwire[plot]'``). Every command's
``--help`` shows its options' defaults.

Client commands reach the server at ``--server`` (or ``GRADWIRE_SERVER``, default
127.0.0.1:50051), in plaintext unless ``--tls-ca FILE`` (``GRADWIRE_TLS_CA_FILE``) or a client
certificate, ``--tls-cert FILE --tls-key FILE`` (``GRADWIRE_CLIENT_CERT_FILE``,
``GRADWIRE_CLIENT_KEY_FILE``), is given; ``--token`` (``GRADWIRE_TOKEN``, better: it stays out of
the process list) goes with every call as a bearer token.

Data files are ``.csv`` (numbers, comma-separated, one row per line; a first
row that is not numbers is a header, and is skipped), ``.npy`` or ``.npz`` (both read without
pickles; from an ``.npz``, ``--inputs`` reads array ``x`` and ``--targets`` array ``y``, or the
only array of a file that holds one). A 1-D array is a column.

Every failure is one line on stderr, never a traceback. Exit codes: 0 done; 1 failed (refused by
the server, with the fields it names; a file unreadable or unwritable; the server or the
database unreachable); 2 usage (flags, ``--options``, settings or the database URL wrong, or a
database schema to upgrade); ``runs watch`` exits 0 when the run completed or was cancelled, 1
when it failed, 3 when it was interrupted (resume it). Ctrl-C exits 130; a reader of stdout that
went away (``| head``) ends the command quietly with 141, as SIGPIPE ends other tools.

:mod:`gradwire.service.ops.cli` builds the whole command: these commands, and the server's
(``serve``, ``db upgrade``, ``keys``, ``tenants``), which need the server's packages.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import io
import json
import math
import os
import signal
import sys
import warnings
import zipfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict
from datetime import datetime
from pathlib import Path
from typing import Any, NoReturn, TextIO, TypeAlias

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tqdm import tqdm  # type: ignore[import-untyped]  # no stubs installed

from gradwire.v1 import codec
from gradwire.v1 import gradwire_pb2 as pb
from gradwire.v1.vocabulary import OPTIMIZERS, RunStatus

from .errors import GradwireError, UnavailableError
from .sdk import (
    TLS,
    TLS_VARIABLES,
    TOKEN_VARIABLE,
    Client,
    History,
    ModelInfo,
    RunInfo,
    print_progress,
)
from .views import gradient_norms, history_table

DATASET_DTYPES = tuple(codec.FLOAT_DTYPES)
"""The dtypes a dataset may be stored in."""
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 3
EXIT_CTRL_C = 128 + signal.SIGINT
EXIT_BROKEN_PIPE = 128 + signal.SIGPIPE
WATCH_EXIT: dict[str, int] = {
    RunStatus.COMPLETED: 0,
    RunStatus.CANCELLED: 0,
    RunStatus.FAILED: 1,
    RunStatus.INTERRUPTED: EXIT_INTERRUPTED,
}
"""``runs watch``'s exit code by how the run ended."""
OPTION_FLAGS = ("seed", "patience", "loss_threshold", "clip_norm")
"""Training flags that go to TrainOptions only when given (the server's defaults otherwise)."""
CLIENT_TLS_FLAGS = {
    "ca_file": ("--tls-ca", "PEM root certificates that signed the server's; makes the channel TLS"),
    "cert_file": ("--tls-cert", "PEM client certificate, for a server that asks for one (mutual TLS)"),
    "key_file": ("--tls-key", "the client certificate's PEM key"),
}
"""The client commands' TLS flags, by the field of the SDK's TLS each fills."""
REACH_SECONDS = 5.0
"""How long a command that got UNAVAILABLE waits for a health check, to tell a server that cannot
be reached from one that answered UNAVAILABLE itself."""

ClientCommand = Callable[[argparse.Namespace, Client], int]
Subparsers: TypeAlias = "argparse._SubParsersAction[Parser]"  # argparse names it no better


class CommandError(SystemExit):
    """How a command fails: :func:`main` prints the message as one line on stderr, and the process
    exits with ``status``. A SystemExit, so that a function called without ``main`` stops alike."""

    def __init__(self, message: str, status: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.code = status


def one_line(text: str) -> str:
    return " ".join(text.split())


def reason(exc: BaseException) -> str:
    """Why ``exc`` happened, in one line: an OSError's words without its number and path, a
    database error's driver message, a missing key named as missing."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    if isinstance(exc, KeyError):
        return f"missing {exc}"
    return one_line(str(getattr(exc, "orig", None) or exc))


# ------------------------------------------------------------------------------------ files

DATA_FILES = ".csv (a first row that is not numbers is a header, skipped), .npy or .npz"
ROLE_ARRAYS = {"inputs": "x", "targets": "y"}
"""The ``.npz`` array each role reads (the names ``--data`` uses)."""
NUMBER_KINDS = "fiub"
READ_ERRORS = (OSError, ValueError, EOFError, zipfile.BadZipFile)
"""What reading a data file raises when it is missing, unreadable, or not what its name says."""
MALFORMED = (KeyError, TypeError, ValueError, AttributeError, RecursionError)
"""What building a message from JSON of the wrong shape raises (a key missing, a list for an
object, a name misspelt, a string for a number)."""
JSON_KINDS = {list: "an array", str: "a string", int: "a number", float: "a number", bool: "a boolean"}


def load_array(path: str, key: str = "x", *, sole: bool = False) -> np.ndarray:
    """A 2-D array of numbers from ``.npz`` (its array ``key``; with ``sole``, also the one array
    of a file that holds one, whatever its name), ``.npy``, or CSV (any other name); a 1-D
    array becomes a column. A file that cannot give one stops the command, naming the file."""
    try:
        array = _load_npz(path, key, sole) if path.endswith(".npz") else _load_single(path)
    except READ_ERRORS as exc:
        raise CommandError(f"cannot read {path}: {reason(exc)}") from None
    if array.dtype.kind not in NUMBER_KINDS or array.ndim not in (1, 2) or array.size == 0:
        raise CommandError(
            f"{path} holds {array.dtype} {array.shape}: expected numbers in rows and columns (a 1-D "
            "array is a column), at least one"
        )
    return array.reshape(-1, 1) if array.ndim == 1 else array


def _load_npz(path: str, key: str, sole: bool) -> np.ndarray:
    with open(path, "rb") as file:
        if not zipfile.is_zipfile(file):
            raise ValueError("not an .npz archive (np.savez writes one)")
        file.seek(0)
        with np.load(file, allow_pickle=False) as data:
            name = data.files[0] if sole and len(data.files) == 1 else key
            if name not in data.files:
                arrays = ", ".join(data.files) or "none"
                raise CommandError(f"{path} has no array {key!r} (it has {arrays})")
            return np.asarray(data[name])


def _load_single(path: str) -> np.ndarray:
    """A ``.npy`` file (without pickles), else CSV."""
    if path.endswith(".npy"):
        with open(path, "rb") as file:
            return np.lib.format.read_array(file, allow_pickle=False)
    return _load_csv(path)


def _load_csv(path: str) -> np.ndarray:
    """Numbers, comma-separated, one row per line; a first row that is not numbers is a header."""
    with open(path, encoding="utf-8-sig") as file:
        header = not _numbers(file.readline())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "input contained no data": load_array says so
        return np.loadtxt(path, delimiter=",", ndmin=2, skiprows=int(header), encoding="utf-8-sig")


def _numbers(line: str) -> bool:
    try:
        [float(value) for value in line.split(",")]
    except ValueError:
        return False
    return True


@contextmanager
def _writing(path: str) -> Iterator[None]:
    """A file written in the block; one that cannot be stops the command, naming it."""
    try:
        yield
    except OSError as exc:
        raise CommandError(f"cannot write {path}: {reason(exc)}") from None


def _save_csv(path: str, array: np.ndarray) -> None:
    np.savetxt(path, array, delimiter=",", fmt="%.8g")


def _save_npy(path: str, array: np.ndarray) -> None:
    with open(path, "wb") as file:  # np.save would add .npy to a name without it
        np.save(file, array, allow_pickle=False)


def _save_npz(path: str, array: np.ndarray) -> None:
    with open(path, "wb") as file:
        np.savez(file, outputs=array)


WRITERS = {".npy": _save_npy, ".npz": _save_npz}
"""How an output file is written, by its suffix; any other name is CSV, as the readers read it."""


def save_array(path: str, array: np.ndarray) -> None:
    """``array`` written in the format the file's name says (``.npy``, ``.npz``: array
    ``outputs``), else as CSV."""
    with _writing(path):
        WRITERS.get(Path(path).suffix, _save_csv)(path, array)


def json_object(text: str, where: str, status: int) -> dict[str, Any]:
    """``text`` parsed as a JSON object, else the command stops naming ``where`` it came from."""
    try:
        value = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise CommandError(f"{where} is not JSON: {reason(exc)}", status) from None
    if not isinstance(value, dict):
        kind = JSON_KINDS.get(type(value), "null")
        raise CommandError(f"{where} must be a JSON object, not {kind}", status)
    return value


def read_spec(path: str) -> dict[str, Any]:
    """The model spec in the JSON file ``path``, tried in the form the SDK sends it, so that a
    spec of the wrong shape is named here (the server judges its values)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, ValueError) as exc:
        raise CommandError(f"cannot read {path}: {reason(exc)}") from None
    spec = json_object(text, path, EXIT_FAILED)
    if isinstance(spec.get("spec"), dict) and "layers" not in spec:  # `gradwire models show`'s JSON
        spec = spec["spec"]
    try:
        codec.spec_from_dict(spec)
    except MALFORMED as exc:
        raise CommandError(f"{path} is not a model spec: {reason(exc)}") from None
    return spec


def _json(value: Any) -> str:
    """``value`` (dataclasses made dicts) as indented JSON; times in ISO 8601."""

    def default(item: object) -> str:
        if isinstance(item, datetime):
            return item.isoformat()
        raise TypeError(f"{type(item).__name__} is not JSON")

    return json.dumps(value, indent=2, default=default)


# ------------------------------------------------------------------------------------ models


def _shape(info: ModelInfo) -> str:
    layers = ", ".join(
        f"{layer['kind']}:{layer.get('units', '')}{layer.get('activation', '')}"
        for layer in info.spec["layers"]
    )
    return f"{info.spec['input_dim']} -> [{layers}]"


Column = tuple[str, Callable[[Any], object]]
"""A listing's column: its header, and its cell of a record."""
MODEL_COLUMNS: tuple[Column, ...] = (
    ("ID", lambda m: m.id),
    ("NAME", lambda m: m.name or "-"),
    ("VERSION", lambda m: m.version),
    ("PARAMS", lambda m: m.parameter_count),
    ("LOSS", lambda m: m.spec["loss"]),
    ("TRAINING", lambda m: "yes" if m.training else "no"),
    ("LAYERS", _shape),
)


def print_listing(records: Iterable[Any], columns: Sequence[Column], what: str, quiet: bool) -> None:
    """Records as an aligned table under a header (``--quiet``: their ids alone, one a line, for
    ``$(...)``); where there is none, stdout stays empty and stderr says so."""
    rows = [[str(cell(record)) for _, cell in columns] for record in records]
    if quiet:
        for row in rows:
            print(row[0])
        return
    if not rows:
        print(f"no {what}", file=sys.stderr)
        return
    table = [[header for header, _ in columns], *rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(columns))]
    print(
        "\n".join(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
            for row in table
        )
    )


def cmd_models(args: argparse.Namespace, client: Client) -> int:
    if args.action == "list":
        print_listing(client.list_models(), MODEL_COLUMNS, "models", args.quiet)
    elif args.action == "show":
        info = client.model(args.model_id).info
        print(
            json.dumps(
                {
                    "id": info.id,
                    "name": info.name,
                    "version": info.version,
                    "parameters": info.parameter_count,
                    "classifier": info.classifier,
                    "training": info.training,
                    "spec": info.spec,
                },
                indent=2,
            )
        )
    elif args.action == "delete":
        client.delete_model(args.model_id)
        print(f"deleted {args.model_id}")
    else:
        print(client.create_model(read_spec(args.spec), name=args.name).id)
    return 0


def cmd_predict(args: argparse.Namespace, client: Client) -> int:
    inputs = load_array(args.inputs, ROLE_ARRAYS["inputs"], sole=True)  # before any call: fail fast
    prediction = client.model(args.model_id).predict_full(inputs, args.version)
    save_array(args.output, prediction.outputs)
    print(f"{len(prediction.outputs)} rows written to {args.output} by version {prediction.version}")
    return 0


def runs_table(runs: Sequence[History]) -> str:
    """Each run's header line, then its epochs as the engine's history table."""
    return "\n".join(
        f"run {run.run_id}  {run.status}  {run.stop_reason}  best epoch {run.best_epoch}  "
        f"version {run.version or '-'}\n{history_table(run.epochs)}"
        for run in runs
    )


HISTORY_FORMATS = ("table", "csv", "json")
CSV_COLUMNS = {
    "epoch": "epoch",
    "train_loss": "train_loss",
    "val_loss": "val_loss",
    "metric": "train_metric",
    "val_metric": "val_metric",
    "learning_rate": "learning_rate",
}
"""``history --format csv``'s columns after ``run_id``, by the epoch record's key each holds
(then a ``grad_norm:<layer>`` column per layer)."""
PLOT_INSTALL = (
    "pip install 'gradwire[plot]' (in a checkout: .venv/bin/python -m pip install --require-hashes "
    "-r requirements/plot.txt)"
)


def runs_csv(runs: Sequence[History]) -> str:
    """One row per epoch per run, under a header: the run, the epoch, the losses, the metric, the
    learning rate, and each layer's gradient norm as ``grad_norm:<layer>`` (layers in the
    network's order); an empty cell where an epoch has no value (no validation set)."""
    layers = list(dict.fromkeys(name for run in runs for name in gradient_norms(run)[0]))
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["run_id", *CSV_COLUMNS, *(f"grad_norm:{layer}" for layer in layers)])
    for run in runs:
        for epoch in run.epochs:
            norms = epoch.get("grad_norms", {})
            writer.writerow(
                [
                    run.run_id,
                    *(_cell(epoch[key]) for key in CSV_COLUMNS.values()),
                    *(_cell(norms.get(layer)) for layer in layers),
                ]
            )
    return out.getvalue().rstrip("\n")


def _cell(value: Any) -> Any:
    return "" if value is None else value


def runs_json(runs: Sequence[History]) -> str:
    """The runs, oldest first, each with how it ended and its epochs as the SDK records them;
    a number that is not finite (a loss that diverged) is null, so that any JSON reader takes it."""
    return json.dumps(
        [
            {
                "run_id": run.run_id,
                "status": run.status,
                "stop_reason": run.stop_reason,
                "best_epoch": run.best_epoch,
                "version": run.version,
                "epochs": _finite(run.epochs),
            }
            for run in runs
        ],
        indent=2,
        allow_nan=False,
    )


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_finite(item) for item in value]
    return value


HISTORY_WRITERS: dict[str, Callable[[Sequence[History]], str]] = {
    "table": runs_table,
    "csv": runs_csv,
    "json": runs_json,
}


def cmd_history(args: argparse.Namespace, client: Client) -> int:
    """The model's runs (or the one ``--run`` names) printed as ``--format`` says; with
    ``--plot FILE``, the last of them drawn there instead (see client/views.py)."""
    if args.plot and importlib.util.find_spec("matplotlib") is None:  # before any call: fail fast
        raise CommandError(f"--plot needs matplotlib: {PLOT_INSTALL}", EXIT_USAGE)
    if args.plot and args.format != "table":
        raise CommandError("--plot draws the run, --format prints it: give one", EXIT_USAGE)
    if args.together and not args.plot:
        raise CommandError("--together draws runs together: give --plot FILE too", EXIT_USAGE)
    model = client.model(args.model_id)
    runs = model.history()
    if args.run:
        runs = [run for run in runs if run.run_id == args.run]
        if not runs:
            raise CommandError(f"model {args.model_id} has no run {args.run}")
    if not args.plot:
        print(HISTORY_WRITERS[args.format](runs))
        return 0
    if not runs:
        raise CommandError(f"model {args.model_id} has no runs to plot")
    from .views import plot_history, plot_runs  # matplotlib is imported there, when a plot is drawn

    with _writing(args.plot):
        if args.together:
            plot_runs(runs, args.plot)
        else:
            plot_history(runs[-1], args.plot, model.info.spec)
    drawn = f"{len(runs)} runs" if args.together else f"run {runs[-1].run_id} ({len(runs[-1].epochs)} epochs)"
    print(f"{drawn} drawn in {args.plot}")
    return 0


EXPORT_FORMATS = ("npz", "onnx")


def cmd_export(args: argparse.Namespace, client: Client) -> int:
    """A version's weights and buffers as ``.npz`` (numeric arrays, so no pickles), or the
    model as ONNX (the default for a file named ``*.onnx``)."""
    export_format = args.format or ("onnx" if args.output.endswith(".onnx") else "npz")
    if export_format == "onnx":
        data = client.model(args.model_id).export_onnx(version=args.version)
        with _writing(args.output):
            Path(args.output).write_bytes(data)
        print(f"ONNX model of {len(data)} bytes written to {args.output}")
        return 0
    exported = client.model(args.model_id).exported(args.version)
    path = args.output if args.output.endswith(".npz") else f"{args.output}.npz"  # as np.savez names it
    named: dict[str, Any] = dict(exported.arrays)  # names such as "0.W": never savez's own allow_pickle
    with _writing(path):
        np.savez(path, **named)
    print(
        f"version {exported.version}: {len(named)} arrays written to {path} "
        f"(weights_sha256 {exported.sha256})"
    )
    return 0


def cmd_import(args: argparse.Namespace, client: Client) -> int:
    """A model from a spec file (or ``models show``'s JSON, which holds one) and an ``.npz`` of
    its weights; prints the new model's id."""
    spec = read_spec(args.spec)
    try:
        weights = Path(args.weights).read_bytes()
    except OSError as exc:
        raise CommandError(f"cannot read {args.weights}: {reason(exc)}") from None
    print(client.import_model(spec, weights, name=args.name, request_id=args.request_id).id)
    return 0


# ------------------------------------------------------------------------------------ training


def _source(args: argparse.Namespace, role: str) -> np.ndarray | str | None:
    """One role's data: an array read from ``--ROLE``, or the id given as ``--ROLE-dataset``."""
    path, dataset_id = getattr(args, role), getattr(args, f"{role}_dataset")
    if path and dataset_id:
        raise CommandError(f"give --{role} or --{role}-dataset, not both", EXIT_USAGE)
    return load_array(path, ROLE_ARRAYS[role], sole=True) if path else (dataset_id or None)


def training_data(args: argparse.Namespace) -> tuple[np.ndarray | str, np.ndarray | str]:
    """``(x, y)`` from the data flags: arrays from files, or dataset ids (``start_run`` takes both)."""
    if args.data:
        if any(getattr(args, name) for name in ("inputs", "targets", "inputs_dataset", "targets_dataset")):
            raise CommandError("give --data, or the inputs and targets, not both", EXIT_USAGE)
        return load_array(args.data, ROLE_ARRAYS["inputs"]), load_array(args.data, ROLE_ARRAYS["targets"])
    x, y = _source(args, "inputs"), _source(args, "targets")
    if x is None or y is None:
        raise CommandError(
            "training needs --data FILE.npz, or --inputs (or --inputs-dataset) "
            "and --targets (or --targets-dataset)",
            EXIT_USAGE,
        )
    return x, y


def training_arguments(args: argparse.Namespace) -> dict[str, Any]:
    """``Model.start_run``'s keyword arguments (``fit`` takes the same) from the training flags."""
    arguments: dict[str, Any] = {
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "optimizer": args.optimizer,
        "learning_rate": args.learning_rate,
        "validation_split": args.validation_split,
    }
    arguments |= {name: getattr(args, name) for name in OPTION_FLAGS if getattr(args, name) is not None}
    extra = _options(args.options)
    if repeated := sorted(extra.keys() & arguments.keys()):
        hint = REPEATED_HINTS.get(repeated[0], "give each once, as a flag")
        raise CommandError(f"--options repeats {', '.join(repeated)}: {hint}", EXIT_USAGE)
    return arguments | extra


OPTION_MESSAGES = (pb.TrainOptions, pb.OptimizerOptions)
"""Where the names in ``--options`` belong: TrainOptions, or the optimiser's constants (the SDK
moves those into its OptimizerOptions)."""
OPTIONS_EXAMPLE = '{"schedule": {"name": "cosine"}, "momentum": 0.9}'
REPEATED_HINTS = {
    "optimizer": f"the optimiser is --optimizer and --learning-rate, its constants go in --options "
    f"by name, e.g. {OPTIONS_EXAMPLE}",
}


def _options(text: str | None) -> dict[str, Any]:
    """The ``--options`` object, each name and value tried in the message it goes to."""
    options = json_object(text, "--options", EXIT_USAGE) if text else {}
    for name, value in options.items():
        _check_option(name, value)
    return options


def _check_option(name: str, value: Any) -> None:
    message = next((m for m in OPTION_MESSAGES if name in m.DESCRIPTOR.fields_by_name), None)
    if message is None:
        known = sorted(field for m in OPTION_MESSAGES for field in m.DESCRIPTOR.fields_by_name)
        raise CommandError(f"--options: no option {name!r:.40} (known: {', '.join(known)})", EXIT_USAGE)
    try:
        message(**{name: value})
    except MALFORMED as exc:
        raise CommandError(f"--options: {name}: {reason(exc)}", EXIT_USAGE) from None


class Progress:
    """Training progress on ``stream`` (stderr), an epoch at a time. On a terminal, one line that
    updates in place (tqdm): ``epoch 7/100``, a bar, the time spent and left, and the loss,
    validation loss and metric of the last epoch. Elsewhere (a pipe, a file, a log), the SDK's
    plain line per epoch (:func:`print_progress`), which reads well after the fact.

    A context manager, so that the terminal's line is finished however the run ends; called with
    each epoch, it returns None (a callback's ``True`` would cancel the run)."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self.terminal = self.stream.isatty()
        self.bar: Any = None  # a tqdm, made at the first epoch

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.close()

    def __call__(self, epoch: dict[str, Any]) -> None:
        if not self.terminal:
            print_progress(epoch, self.stream)
            return
        if self.bar is None:  # at the first epoch seen, which is not the run's first when watched later
            self.bar = tqdm(
                total=epoch["epochs_planned"] or None,
                initial=epoch["epoch"] - 1,
                file=self.stream,
                desc="epoch",
                bar_format=PROGRESS_FORMAT,
                dynamic_ncols=True,
            )
        self.bar.set_postfix(_progress_postfix(epoch), refresh=False)
        self.bar.update(epoch["epoch"] - self.bar.n)


PROGRESS_FORMAT = "{desc} {n_fmt}/{total_fmt} |{bar}| {elapsed}<{remaining}{postfix}"
"""The terminal's progress line: ``epoch 7/100 |███     | 00:03<00:40, loss=0.31, ...``."""


def _progress_postfix(epoch: dict[str, Any]) -> dict[str, str]:
    """The loss, the validation loss (when the run has a validation set) and the metric (the
    validation set's, when it has one), as the plain line words them."""
    postfix = {"loss": f"{epoch['train_loss']:.4f}"}
    if epoch["val_loss"] is not None:
        postfix["val_loss"] = f"{epoch['val_loss']:.4f}"
    metric = epoch["val_metric"] if epoch["val_metric"] is not None else epoch["train_metric"]
    postfix[epoch["metric_name"] or "metric"] = f"{metric:.4f}"
    return postfix


def cmd_train(args: argparse.Namespace, client: Client) -> int:
    x, y = training_data(args)
    arguments = training_arguments(args)
    with Progress() as progress:
        callbacks = () if args.quiet else (progress,)
        history = client.model(args.model_id).fit(x, y, callbacks=callbacks, **arguments)
    print(
        f"stopped: {history.stop_reason}; best epoch {history.best_epoch} "
        f"(loss {history.best_loss:.6g}); model now at version {history.version}"
    )
    return 0


# ------------------------------------------------------------------------------------ datasets


def _as_dataset(array: np.ndarray, dtype: str | None) -> np.ndarray:
    """``array`` (numbers in rows and columns: see load_array) as the float dtype asked for,
    else its own float dtype, else float64."""
    own = array.dtype.name if array.dtype.name in DATASET_DTYPES else "float64"
    return array.astype(dtype or own, copy=False)


DATASET_COLUMNS: tuple[Column, ...] = (
    ("ID", lambda d: d.id),
    ("NAME", lambda d: d.name or "-"),
    ("DTYPE", lambda d: d.dtype),
    ("SHAPE", lambda d: "x".join(str(n) for n in d.shape)),
    ("BYTES", lambda d: d.nbytes),
    ("CREATED", lambda d: f"{d.created_at:%Y-%m-%d %H:%M:%S}"),
)


def cmd_datasets_upload(args: argparse.Namespace, client: Client) -> int:
    array = _as_dataset(load_array(args.file, args.key or "x", sole=args.key is None), args.dtype)
    print(client.upload_dataset(array, name=args.name).id)
    return 0


def cmd_datasets_list(args: argparse.Namespace, client: Client) -> int:
    print_listing(client.list_datasets(), DATASET_COLUMNS, "datasets", args.quiet)
    return 0


def cmd_datasets_show(args: argparse.Namespace, client: Client) -> int:
    print(_json(asdict(client.dataset(args.dataset_id))))
    return 0


def cmd_datasets_delete(args: argparse.Namespace, client: Client) -> int:
    client.delete_dataset(args.dataset_id)
    print(f"deleted {args.dataset_id}")
    return 0


# ------------------------------------------------------------------------------------ runs


RUN_COLUMNS: tuple[Column, ...] = (
    ("ID", lambda r: r.id),
    ("MODEL", lambda r: r.model_id),
    ("STATUS", lambda r: r.status),
    ("STOP REASON", lambda r: r.stop_reason or "-"),
    ("EPOCH", lambda r: f"{r.epochs_done}/{r.epochs_planned}"),
    ("BEST EPOCH", lambda r: r.best_epoch),
    ("VERSION", lambda r: r.version or "-"),
)


def _run_summary(info: RunInfo) -> str:
    loss = "-" if info.best_loss is None else f"{info.best_loss:.6g}"
    summary = (
        f"run {info.id} {info.status} ({info.stop_reason or '-'}); best epoch {info.best_epoch} "
        f"(loss {loss}); model {info.model_id} at version {info.version or '-'}"
    )
    return summary + (f"; error: {info.error}" if info.error else "")


def cmd_runs_start(args: argparse.Namespace, client: Client) -> int:
    x, y = training_data(args)
    arguments = training_arguments(args)
    model = client.model(args.model_id)
    print(model.start_run(x, y, request_id=args.request_id, **arguments).id)
    return 0


def cmd_runs_list(args: argparse.Namespace, client: Client) -> int:
    runs = client.list_runs(model_id=args.model, statuses=tuple(args.status or ()))
    print_listing(runs, RUN_COLUMNS, "runs", args.quiet)
    return 0


def cmd_runs_show(args: argparse.Namespace, client: Client) -> int:
    print(_json(asdict(client.run(args.run_id).info)))
    return 0


def cmd_runs_watch(args: argparse.Namespace, client: Client) -> int:
    """Progress (stderr, see Progress) until the run ends, then a summary; the exit code says how
    it ended."""
    run = client.run(args.run_id)
    with Progress() as progress:
        for epoch in run.epochs(args.after_epoch):
            progress(epoch)
    print(_run_summary(run.info))
    if run.info.status == RunStatus.INTERRUPTED:
        print(f"gradwire: continue it with: gradwire runs resume {run.id}", file=sys.stderr)
    return WATCH_EXIT.get(run.info.status, 1)


CANCEL_RUNNING = (
    "asked to stop: it ends at its next minibatch where its server sees the cancel at once, else "
    "within the server's heartbeat_seconds; the model keeps its version"
)
"""What a cancel of a running run does, as ``runs cancel`` says it (see docs/service.md)."""


def cmd_runs_cancel(args: argparse.Namespace, client: Client) -> int:
    info = client.run(args.run_id).cancel()
    asked = f" ({CANCEL_RUNNING})" if info.status == RunStatus.RUNNING else ""
    print(f"run {info.id} {info.status}{asked}")
    return 0


def cmd_runs_resume(args: argparse.Namespace, client: Client) -> int:
    info = client.run(args.run_id).resume()
    print(f"run {info.id} {info.status}")
    return 0


# ------------------------------------------------------------------------------------ parser


def _data_flags(parser: argparse.ArgumentParser) -> None:
    """Where ``train`` and ``runs start`` take their data from."""
    data = parser.add_argument_group("data: --data, or inputs and targets each as a file or a dataset")
    data.add_argument("--data", help=".npz with arrays x and y")
    for role, key in ROLE_ARRAYS.items():
        data.add_argument(f"--{role}", help=f"{DATA_FILES} (array {key}, or its only array)")
        data.add_argument(f"--{role}-dataset", metavar="ID", help="an uploaded dataset (datasets upload)")


def _training_flags(parser: argparse.ArgumentParser) -> None:
    """How ``train`` and ``runs start`` train: one definition for both (see training_arguments)."""
    training = parser.add_argument_group("training")
    training.add_argument("--epochs", type=int, default=100, help="at most this many epochs")
    training.add_argument("--batch-size", type=int, default=32, help="rows per minibatch")
    training.add_argument("--optimizer", default="sgd", help=f"one of {', '.join(OPTIMIZERS)}")
    training.add_argument("--learning-rate", type=float, help="default: the server's, 0.01")
    training.add_argument(
        "--validation-split", type=float, default=0.0, help="the fraction of rows held out for validation"
    )
    training.add_argument(
        "--patience", type=int, help="stop after this many epochs without improvement (default: never)"
    )
    training.add_argument(
        "--loss-threshold", type=float, help="stop once the training loss is at or below it (default: never)"
    )
    training.add_argument("--clip-norm", type=float, help="global gradient norm limit (default: no clipping)")
    training.add_argument("--seed", type=int, help="seeds the shuffling and the hold-out split (default: 0)")
    training.add_argument("--options", help=f"more TrainOptions as a JSON object, e.g. {OPTIONS_EXAMPLE}")


def _client_command(sub: Subparsers, path: str, help_text: str) -> argparse.ArgumentParser:
    """The parser of a client command; ``path`` (``"runs start"``) is its key in CLIENT_COMMANDS."""
    command = sub.add_parser(path.split()[-1], help=help_text)
    command.add_argument("--server", help="host:port (default: GRADWIRE_SERVER, else 127.0.0.1:50051)")
    for name, (flag, help_text) in CLIENT_TLS_FLAGS.items():
        variable_name = TLS_VARIABLES[name]
        default = os.environ.get(variable_name, "")
        command.add_argument(
            flag, dest=name, metavar="FILE", default=default, help=f"{help_text} (default: {variable_name})"
        )
    command.add_argument(  # its help says "default" in words: the token itself is never shown
        "--token",
        default=os.environ.get(TOKEN_VARIABLE, ""),
        help=f"bearer token sent with every call (default: {TOKEN_VARIABLE}, better: the variable stays "
        "out of the process list)",
    )
    command.set_defaults(client_command=path)
    return command


def _quiet_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-q", "--quiet", action="store_true", help="list: the ids alone, one a line")


def _group(sub: Subparsers, name: str, help_text: str) -> Subparsers:
    """A command whose actions are commands of their own (``runs start``, ``runs watch``, ...)."""
    return sub.add_parser(name, help=help_text).add_subparsers(dest="action", required=True)


def _model_parsers(sub: Subparsers) -> None:
    models = _client_command(sub, "models", "list, show, create or delete models")
    models.add_argument("action", choices=("list", "show", "delete", "create"))
    models.add_argument("model_id", nargs="?")
    models.add_argument("--spec", help="create: a JSON file with the spec (required)")
    models.add_argument("--name", default="")
    _quiet_flag(models)

    train = _client_command(
        sub, "train", "train a model, showing its progress (a line updated on a terminal, else one an epoch)"
    )
    train.add_argument("model_id")
    _data_flags(train)
    _training_flags(train)
    train.add_argument("--quiet", action="store_true", help="no progress")

    predict = _client_command(sub, "predict", "predict a file of inputs into a file of outputs")
    predict.add_argument("model_id")
    predict.add_argument("--inputs", required=True, help=f"{DATA_FILES} (array x, or its only array)")
    predict.add_argument("--output", required=True)
    predict.add_argument("--version", type=int, default=0)

    history = _client_command(
        sub, "history", "a model's training runs as tables, CSV or JSON, or the last one drawn"
    )
    history.add_argument("model_id")
    history.add_argument("--format", choices=HISTORY_FORMATS, default="table", help="how runs are printed")
    history.add_argument("--run", metavar="RUN_ID", help="only this run (default: every run of the model)")
    history.add_argument(
        "--plot",
        metavar="FILE",
        help="draw the last run (or --run's) into FILE, a .png, .svg or .pdf, instead of printing it: "
        f"the losses, the metric, the learning rate and each layer's gradient norm ({PLOT_INSTALL})",
    )
    history.add_argument(
        "--together",
        action="store_true",
        help="--plot: every run (or --run's) in one picture, loss and metric",
    )

    export = _client_command(
        sub, "export", "write a version's weights and buffers to .npz, or the model as ONNX"
    )
    export.add_argument("model_id")
    export.add_argument("-o", "--output", required=True, help="the file to write")
    export.add_argument(
        "--format",
        choices=EXPORT_FORMATS,
        help="npz: the arrays by name; onnx: a graph answering as Predict (default: onnx for a *.onnx "
        "file, else npz)",
    )
    export.add_argument("--version", type=int, default=0, help="default: the current version")

    imported = _client_command(sub, "import", "create a model from a spec and an .npz of its weights")
    imported.add_argument("--spec", required=True, help="a JSON file with the spec (or models show's JSON)")
    imported.add_argument("--weights", required=True, help="an .npz of every array (what export writes)")
    imported.add_argument("--name", default="")
    imported.add_argument("--request-id", help="importing again with the same id gives the same model")


def _dataset_parsers(sub: Subparsers) -> None:
    datasets = _group(sub, "datasets", "upload, list, show or delete stored training data")
    upload = _client_command(datasets, "datasets upload", "store a 2-D array once; prints its id")
    upload.add_argument("file", help=DATA_FILES)
    upload.add_argument("--key", help="the .npz array to upload (default x, or the file's only array)")
    upload.add_argument("--name", default="")
    upload.add_argument("--dtype", choices=DATASET_DTYPES, help="default: the file's, else float64")
    _quiet_flag(_client_command(datasets, "datasets list", "every dataset, oldest first"))
    for action, help_text in (("show", "one dataset as JSON"), ("delete", "delete a dataset")):
        _client_command(datasets, f"datasets {action}", help_text).add_argument("dataset_id")


def _run_parsers(sub: Subparsers) -> None:
    runs = _group(sub, "runs", "durable runs: start one detached, follow, cancel or resume it")
    start = _client_command(runs, "runs start", "queue a run; prints its id and returns at once")
    start.add_argument("model_id")
    _data_flags(start)
    _training_flags(start)
    start.add_argument("--request-id", help="starting again with the same id gives the same run")
    listing = _client_command(runs, "runs list", "runs, oldest first")
    _quiet_flag(listing)
    listing.add_argument("--model", default="", metavar="ID", help="only this model's runs")
    listing.add_argument(
        "--status", nargs="+", action="extend", metavar="STATUS", help="only these (queued, running, ...)"
    )
    for action, help_text in (
        ("show", "a run as JSON, its receipt included"),
        ("cancel", "cancel a queued, running or interrupted run"),
        ("resume", "queue an interrupted run again, from its checkpoint"),
    ):
        _client_command(runs, f"runs {action}", help_text).add_argument("run_id")
    watch = _client_command(
        runs, "runs watch", "its progress until the run ends; exit 0, 1 failed, 3 interrupted"
    )
    watch.add_argument("run_id")
    watch.add_argument("--after-epoch", type=int, default=0, metavar="N", help="only the epochs after N")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """``--help`` with each option's default, ``(default: 32)``, where it has one and its help
    does not already say it in words (``default: the current version``). An option without a
    value of its own (None, a switch off, an empty string, such as ``--token`` with no
    GRADWIRE_TOKEN) shows none: its help says what happens instead."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if "default" in (action.help or "") or action.default in (None, False, ""):
            return action.help
        return super()._get_help_string(action)


class Parser(argparse.ArgumentParser):
    """argparse, with a usage error in one line that points at ``--help`` (the full usage of
    ``serve`` alone is thirty lines, and would bury the error), and defaults shown in every
    command's ``--help``: subcommands' parsers are made of this class too (argparse makes them of
    the class of the parser they hang from), so each gets :class:`HelpFormatter`. A flag is
    taken only as spelt in full: a prefix (``--epoch`` for ``--epochs``) is refused, so a
    misspelt flag cannot pass for another."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        raise CommandError(f"{message} (see {self.prog} --help)", EXIT_USAGE)


CLIENT_COMMANDS: dict[str, ClientCommand] = {
    "models": cmd_models,
    "train": cmd_train,
    "predict": cmd_predict,
    "history": cmd_history,
    "export": cmd_export,
    "import": cmd_import,
    "datasets upload": cmd_datasets_upload,
    "datasets list": cmd_datasets_list,
    "datasets show": cmd_datasets_show,
    "datasets delete": cmd_datasets_delete,
    "runs start": cmd_runs_start,
    "runs list": cmd_runs_list,
    "runs show": cmd_runs_show,
    "runs watch": cmd_runs_watch,
    "runs cancel": cmd_runs_cancel,
    "runs resume": cmd_runs_resume,
}
"""Every client command by its words on the command line (each parser sets its own key)."""


MODEL_ACTION_NEEDS = {
    "show": ("model_id", "a model id"),
    "delete": ("model_id", "a model id"),
    "create": ("spec", "--spec FILE"),
}
"""What each ``models`` action needs that argparse cannot require of one action only."""


def run(args: argparse.Namespace) -> int:
    """A client command, parsed by a parser :func:`add_parsers` filled; its exit code."""
    if args.command == "models" and args.action in MODEL_ACTION_NEEDS:
        name, needed = MODEL_ACTION_NEEDS[args.action]
        if not getattr(args, name):
            raise CommandError(f"models {args.action} needs {needed}", EXIT_USAGE)
    with _client(args) as client:
        try:
            return CLIENT_COMMANDS[args.client_command](args, client)
        except UnavailableError as exc:
            if not _answers(client):
                raise CommandError(f"cannot reach the server at {client.address}: {exc.message}") from None
            return _refused(exc)
        except GradwireError as exc:
            return _refused(exc)
        except ValueError as exc:  # the SDK's own checks of arrays, before anything is sent
            print(f"gradwire: {one_line(str(exc))}", file=sys.stderr)
            return EXIT_FAILED


def add_parsers(sub: Subparsers) -> None:
    """Every client command's parser, under ``sub``."""
    _model_parsers(sub)
    _dataset_parsers(sub)
    _run_parsers(sub)


def _client(args: argparse.Namespace) -> Client:
    """The client the flags ask for: TLS if a TLS file is given (flag or variable), else
    plaintext. A file it cannot read, or a certificate without its key, is a usage error."""
    files = {name: getattr(args, name) for name in CLIENT_TLS_FLAGS}  # each flag's dest is its field
    try:
        return Client(args.server, tls=TLS(**files) if any(files.values()) else None, token=args.token)
    except ValueError as exc:
        raise CommandError(str(exc), EXIT_USAGE) from None


def _answers(client: Client) -> bool:
    """Whether a server answers at the client's address at all: a health check, whatever it says
    (a server whose database is down answers NOT_SERVING, and its UNAVAILABLE is its own)."""
    request = health_pb2.HealthCheckRequest()
    try:
        health_pb2_grpc.HealthStub(client.channel).Check(request, timeout=REACH_SECONDS)
    except grpc.RpcError as error:
        return error.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
    return True


def _refused(exc: GradwireError) -> int:
    """The server's refusal: its status and message, then each field it names (if not named there)."""
    message = one_line(str(exc))
    details = [f"  {field}: {text}" for field, text in exc.field_violations if text not in message]
    print("\n".join([f"gradwire: {message}", *details]), file=sys.stderr)
    return EXIT_FAILED
