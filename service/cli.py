"""The ``gradwire`` command: run the server, upgrade its database, and use it from a shell.

    gradwire serve [--address 127.0.0.1:50051] [--database-url URL] [--data-dir data]
    gradwire db upgrade [--database-url URL]
    gradwire models list | show ID | delete ID | create --spec spec.json [--name NAME]
    gradwire train ID DATA [--epochs N ...]                    attached: progress, then a summary
    gradwire predict ID --inputs x.csv --output out.csv [--version V]
    gradwire history ID
    gradwire export ID --output weights.npz [--version V]
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
``--clip-norm``, ``--seed``, ``--options JSON``).

Client commands reach the server at ``--server`` (or ``GRADWIRE_SERVER``, default
127.0.0.1:50051). Data files are ``.npz`` (read without pickles; a 1-D array is a column) or
``.csv`` (numbers, comma-separated, one row per line). Exit codes: 0 done, 1 refused by the
server (the error and the fields it names go to stderr), 2 usage; ``runs watch`` exits 0 when
the run completed or was cancelled, 1 when it failed, 3 when it was interrupted (resume it).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import asdict, fields
from datetime import datetime
from pathlib import Path
from typing import Any, TypeAlias

import numpy as np

from gradwire.client import Client, DatasetInfo, GradwireError, History, ModelInfo, RunInfo, print_progress
from gradwire.engine import history_table
from gradwire.storage import RUN_STATUSES, SchemaOutOfDate, Unavailable, make_engine, upgrade

from .datasets import DATASET_DTYPES
from .errors import StartupError
from .server import JsonFormatter, create_server, return_freed_memory, stop_server
from .settings import PARSERS, Limits, Settings

EXIT_USAGE = 2
EXIT_INTERRUPTED = 3
WATCH_EXIT = {"completed": 0, "cancelled": 0, "failed": 1, "interrupted": EXIT_INTERRUPTED}
"""``runs watch``'s exit code by how the run ended."""
OPTION_FLAGS = ("seed", "patience", "loss_threshold", "clip_norm")
SETTINGS_NOT_FLAGS = ("address", "database_url", "data_dir", "limits")
"""Settings given their own flags above (with help of their own), or not a value."""
"""Training flags that go to TrainOptions only when given (the server's defaults otherwise)."""

ClientCommand = Callable[[argparse.Namespace, Client], int]
Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"  # argparse names it no better


# ------------------------------------------------------------------------------------ files


def load_array(path: str, key: str = "x") -> np.ndarray:
    """A 2-D array from ``.npz`` (array ``key``; a 1-D one becomes a column) or ``.csv``."""
    try:
        array = _load_npz(path, key) if path.endswith(".npz") else np.loadtxt(path, delimiter=",", ndmin=2)
    except (OSError, ValueError) as exc:
        raise SystemExit(f"gradwire: cannot read {path}: {exc}") from None
    return array.reshape(-1, 1) if array.ndim == 1 else array


def _load_npz(path: str, key: str) -> np.ndarray:
    with np.load(path, allow_pickle=False) as data:
        if key not in data.files:
            raise SystemExit(f"{path} has no array {key!r} (it has {', '.join(data.files)})")
        return np.asarray(data[key])


def save_array(path: str, array: np.ndarray) -> None:
    if path.endswith(".npz"):
        np.savez(path, outputs=array)
    else:
        np.savetxt(path, array, delimiter=",", fmt="%.8g")


def _json(value: Any) -> str:
    """``value`` (dataclasses made dicts) as indented JSON; times in ISO 8601."""

    def default(item: object) -> str:
        if isinstance(item, datetime):
            return item.isoformat()
        raise TypeError(f"{type(item).__name__} is not JSON")

    return json.dumps(value, indent=2, default=default)


# ------------------------------------------------------------------------------------ server


def _settings(args: argparse.Namespace) -> Settings:
    names = [f.name for f in (*fields(Settings), *fields(Limits)) if f.name != "limits"]
    return Settings.from_env(**{name: getattr(args, name, None) for name in names})


def cmd_serve(args: argparse.Namespace) -> int:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter()
        if args.log_format == "json"
        else logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s")
    )
    logging.basicConfig(level=args.log_level.upper(), handlers=[handler], force=True)
    settings = _settings(args)
    return_freed_memory()
    try:
        server, port, app = create_server(settings)
    except (SchemaOutOfDate, Unavailable, StartupError) as exc:
        print(f"gradwire: {exc}", file=sys.stderr)
        return EXIT_USAGE
    host = settings.address.rsplit(":", 1)[0]
    print(f"gradwire listening on {host}:{port} (database {settings.database_url})", flush=True)
    stopping = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stopping.set())
    stopping.wait()
    print("gradwire stopping: runs stop at the end of their epoch and keep their checkpoints", flush=True)
    stop_server(server, app)
    return 0


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    settings = _settings(args)
    upgrade(make_engine(settings.database_url))
    print(f"database {settings.database_url} is at the current schema")
    return 0


# ------------------------------------------------------------------------------------ models


def _describe(info: ModelInfo) -> str:
    layers = ", ".join(
        f"{layer['kind']}:{layer.get('units', '')}{layer.get('activation', '')}"
        for layer in info.spec["layers"]
    )
    return (
        f"{info.id}  {info.name or '-'}  v{info.version}  {info.parameter_count} params  "
        f"{info.spec['input_dim']} -> [{layers}]  loss {info.spec['loss']}"
        + ("  (training)" if info.training else "")
    )


def cmd_models(args: argparse.Namespace, client: Client) -> int:
    if args.action == "list":
        for info in client.list_models():
            print(_describe(info))
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
        spec = json.loads(Path(args.spec).read_text())
        print(client.create_model(spec, name=args.name).id)
    return 0


def cmd_predict(args: argparse.Namespace, client: Client) -> int:
    prediction = client.model(args.model_id).predict_full(load_array(args.inputs), args.version)
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


def cmd_history(args: argparse.Namespace, client: Client) -> int:
    print(runs_table(client.model(args.model_id).history()))
    return 0


def cmd_export(args: argparse.Namespace, client: Client) -> int:
    """The weights and buffers of a version as ``.npz``: numeric arrays, so no pickles."""
    exported = client.model(args.model_id).exported(args.version)
    path = args.output if args.output.endswith(".npz") else f"{args.output}.npz"  # as np.savez names it
    named: dict[str, Any] = dict(exported.arrays)  # names such as "0.W": never savez's own allow_pickle
    np.savez(path, **named)
    print(
        f"version {exported.version}: {len(named)} arrays written to {path} "
        f"(weights_sha256 {exported.sha256})"
    )
    return 0


# ------------------------------------------------------------------------------------ training


def _source(args: argparse.Namespace, role: str) -> np.ndarray | str | None:
    """One role's data: an array read from ``--ROLE``, or the id given as ``--ROLE-dataset``."""
    path, dataset_id = getattr(args, role), getattr(args, f"{role}_dataset")
    if path and dataset_id:
        raise SystemExit(f"give --{role} or --{role}-dataset, not both")
    return load_array(path) if path else (dataset_id or None)


def training_data(args: argparse.Namespace) -> tuple[np.ndarray | str, np.ndarray | str]:
    """``(x, y)`` from the data flags: arrays from files, or dataset ids (``start_run`` takes both)."""
    if args.data:
        if any(getattr(args, name) for name in ("inputs", "targets", "inputs_dataset", "targets_dataset")):
            raise SystemExit("give --data, or the inputs and targets, not both")
        return load_array(args.data, "x"), load_array(args.data, "y")
    x, y = _source(args, "inputs"), _source(args, "targets")
    if x is None or y is None:
        raise SystemExit(
            "training needs --data FILE.npz, or --inputs (or --inputs-dataset) "
            "and --targets (or --targets-dataset)"
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
        raise SystemExit(f"--options repeats {', '.join(repeated)}: give each once, as a flag")
    return arguments | extra


def _options(text: str | None) -> dict[str, Any]:
    try:
        options = json.loads(text) if text else {}
    except json.JSONDecodeError as exc:
        raise SystemExit(f"--options is not JSON: {exc}") from None
    if not isinstance(options, dict):
        raise SystemExit('--options must be a JSON object, e.g. {"schedule": {"name": "cosine"}}')
    return options


def cmd_train(args: argparse.Namespace, client: Client) -> int:
    x, y = training_data(args)
    history = client.model(args.model_id).fit(x, y, progress=not args.quiet, **training_arguments(args))
    print(
        f"stopped: {history.stop_reason}; best epoch {history.best_epoch} "
        f"(loss {history.best_loss:.6g}); model now at version {history.version}"
    )
    return 0


# ------------------------------------------------------------------------------------ datasets


def _as_dataset(array: np.ndarray, dtype: str | None) -> np.ndarray:
    """``array`` as the float dtype asked for, else its own float dtype, else float64."""
    if array.ndim != 2 or array.dtype.kind not in "fiub":
        raise SystemExit(f"a dataset is a 2-D array of numbers, not {array.dtype} {array.shape}")
    own = array.dtype.name if array.dtype.name in DATASET_DTYPES else "float64"
    return array.astype(dtype or own, copy=False)


def _dataset_line(info: DatasetInfo) -> str:
    shape = "x".join(str(n) for n in info.shape)
    return (
        f"{info.id}  {info.name or '-'}  {info.dtype}  {shape}  {info.nbytes} bytes  "
        f"{info.created_at:%Y-%m-%d %H:%M:%S}"
    )


def cmd_datasets_upload(args: argparse.Namespace, client: Client) -> int:
    array = _as_dataset(load_array(args.file, args.key), args.dtype)
    print(client.upload_dataset(array, name=args.name).id)
    return 0


def cmd_datasets_list(args: argparse.Namespace, client: Client) -> int:
    for info in client.list_datasets():
        print(_dataset_line(info))
    return 0


def cmd_datasets_show(args: argparse.Namespace, client: Client) -> int:
    print(_json(asdict(client.dataset(args.dataset_id))))
    return 0


def cmd_datasets_delete(args: argparse.Namespace, client: Client) -> int:
    client.delete_dataset(args.dataset_id)
    print(f"deleted {args.dataset_id}")
    return 0


# ------------------------------------------------------------------------------------ runs


def _run_line(info: RunInfo) -> str:
    return (
        f"{info.id}  model {info.model_id}  {info.status}  {info.stop_reason or '-'}  "
        f"epoch {info.epochs_done}/{info.epochs_planned}  best epoch {info.best_epoch}  "
        f"version {info.version or '-'}"
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
    model = client.model(args.model_id)
    print(model.start_run(x, y, request_id=args.request_id, **training_arguments(args)).id)
    return 0


def cmd_runs_list(args: argparse.Namespace, client: Client) -> int:
    for info in client.list_runs(model_id=args.model, statuses=tuple(args.status or ())):
        print(_run_line(info))
    return 0


def cmd_runs_show(args: argparse.Namespace, client: Client) -> int:
    print(_json(asdict(client.run(args.run_id).info)))
    return 0


def cmd_runs_watch(args: argparse.Namespace, client: Client) -> int:
    """Progress lines (stderr) until the run ends, then a summary; the exit code says how it ended."""
    run = client.run(args.run_id)
    for epoch in run.epochs(args.after_epoch):
        print_progress(epoch)
    print(_run_summary(run.info))
    if run.info.status == "interrupted":
        print(f"gradwire: continue it with: gradwire runs resume {run.id}", file=sys.stderr)
    return WATCH_EXIT.get(run.info.status, 1)


def cmd_runs_cancel(args: argparse.Namespace, client: Client) -> int:
    info = client.run(args.run_id).cancel()
    asked = " (asked to stop: it ends within a minibatch)" if info.status == "running" else ""
    print(f"run {info.id} {info.status}{asked}")
    return 0


def cmd_runs_resume(args: argparse.Namespace, client: Client) -> int:
    info = client.run(args.run_id).resume()
    print(f"run {info.id} {info.status}")
    return 0


# ------------------------------------------------------------------------------------ parser


def _database_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--database-url", help="SQLAlchemy URL (default: a SQLite file in --data-dir)")
    parser.add_argument("--data-dir", help="folder of the default SQLite database (default: data)")


def _data_flags(parser: argparse.ArgumentParser) -> None:
    """Where ``train`` and ``runs start`` take their data from."""
    data = parser.add_argument_group("data: --data, or inputs and targets each as a file or a dataset")
    data.add_argument("--data", help=".npz with arrays x and y")
    for role in ("inputs", "targets"):
        data.add_argument(f"--{role}", help=".csv or .npz (array x)")
        data.add_argument(f"--{role}-dataset", metavar="ID", help="an uploaded dataset (datasets upload)")


def _training_flags(parser: argparse.ArgumentParser) -> None:
    """How ``train`` and ``runs start`` train: one definition for both (see training_arguments)."""
    training = parser.add_argument_group("training")
    training.add_argument("--epochs", type=int, default=100)
    training.add_argument("--batch-size", type=int, default=32)
    training.add_argument("--optimizer", default="sgd")
    training.add_argument("--learning-rate", type=float)
    training.add_argument("--validation-split", type=float, default=0.0)
    training.add_argument("--patience", type=int)
    training.add_argument("--loss-threshold", type=float)
    training.add_argument("--clip-norm", type=float)
    training.add_argument("--seed", type=int)
    training.add_argument(
        "--options", help='more TrainOptions as JSON, e.g. {"schedule": {"name": "cosine"}}'
    )


def _client_command(sub: Subparsers, path: str, help_text: str) -> argparse.ArgumentParser:
    """The parser of a client command; ``path`` (``"runs start"``) is its key in CLIENT_COMMANDS."""
    command = sub.add_parser(path.split()[-1], help=help_text)
    command.add_argument("--server", help="host:port (default: GRADWIRE_SERVER, else 127.0.0.1:50051)")
    command.set_defaults(client_command=path)
    return command


def _group(sub: Subparsers, name: str, help_text: str) -> Subparsers:
    """A command whose actions are commands of their own (``runs start``, ``runs watch``, ...)."""
    return sub.add_parser(name, help=help_text).add_subparsers(dest="action", required=True)


def _server_parsers(sub: Subparsers) -> None:
    serve = sub.add_parser("serve", help="run the gRPC server")
    serve.add_argument("--address", help="host:port to listen on (default 127.0.0.1:50051; port 0: any)")
    _database_flags(serve)
    for setting in (*fields(Settings), *fields(Limits)):  # every setting, each its flag (see docs/service.md)
        if setting.name not in SETTINGS_NOT_FLAGS:
            flag = f"--{setting.name.replace('_', '-')}"
            serve.add_argument(flag, type=PARSERS[str(setting.type)], help=f"default {setting.default}")
    serve.add_argument("--log-level", default=os.environ.get("GRADWIRE_LOG_LEVEL", "info"))
    serve.add_argument("--log-format", choices=("json", "text"), default="json")

    db = sub.add_parser("db", help="database schema")
    db.add_argument("action", choices=("upgrade",))
    _database_flags(db)


def _model_parsers(sub: Subparsers) -> None:
    models = _client_command(sub, "models", "list, show, create or delete models")
    models.add_argument("action", choices=("list", "show", "delete", "create"))
    models.add_argument("model_id", nargs="?")
    models.add_argument("--spec", help="create: a JSON file with the spec")
    models.add_argument("--name", default="")

    train = _client_command(sub, "train", "train a model on a data file, with a progress line per epoch")
    train.add_argument("model_id")
    _data_flags(train)
    _training_flags(train)
    train.add_argument("--quiet", action="store_true", help="no progress lines")

    predict = _client_command(sub, "predict", "predict a file of inputs into a file of outputs")
    predict.add_argument("model_id")
    predict.add_argument("--inputs", required=True)
    predict.add_argument("--output", required=True)
    predict.add_argument("--version", type=int, default=0)

    _client_command(sub, "history", "a model's training runs as tables").add_argument("model_id")

    export = _client_command(sub, "export", "write a version's weights and buffers to .npz")
    export.add_argument("model_id")
    export.add_argument("--output", required=True, help="the .npz file to write")
    export.add_argument("--version", type=int, default=0, help="default: the current version")


def _dataset_parsers(sub: Subparsers) -> None:
    datasets = _group(sub, "datasets", "upload, list, show or delete stored training data")
    upload = _client_command(datasets, "datasets upload", "store a 2-D array once; prints its id")
    upload.add_argument("file", help=".npz or .csv")
    upload.add_argument("--key", default="x", help="the .npz array to upload (default x)")
    upload.add_argument("--name", default="")
    upload.add_argument("--dtype", choices=DATASET_DTYPES, help="default: the file's, else float64")
    _client_command(datasets, "datasets list", "every dataset, oldest first")
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
    listing.add_argument("--model", default="", metavar="ID", help="only this model's runs")
    listing.add_argument("--status", nargs="+", action="extend", choices=RUN_STATUSES, help="only these")
    for action, help_text in (
        ("show", "a run as JSON, its receipt included"),
        ("cancel", "cancel a queued, running or interrupted run"),
        ("resume", "queue an interrupted run again, from its checkpoint"),
    ):
        _client_command(runs, f"runs {action}", help_text).add_argument("run_id")
    watch = _client_command(
        runs, "runs watch", "progress lines until the run ends; exit 0, 1 failed, 3 interrupted"
    )
    watch.add_argument("run_id")
    watch.add_argument("--after-epoch", type=int, default=0, metavar="N", help="only the epochs after N")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gradwire", description="Backpropagation as a training service.")
    sub = parser.add_subparsers(dest="command", required=True)
    _server_parsers(sub)
    _model_parsers(sub)
    _dataset_parsers(sub)
    _run_parsers(sub)
    return parser


CLIENT_COMMANDS: dict[str, ClientCommand] = {
    "models": cmd_models,
    "train": cmd_train,
    "predict": cmd_predict,
    "history": cmd_history,
    "export": cmd_export,
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


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "serve":
        return cmd_serve(args)
    if args.command == "db":
        return cmd_db_upgrade(args)
    if args.command == "models" and args.action in ("show", "delete") and not args.model_id:
        raise SystemExit(f"models {args.action} needs a model id")
    try:
        with Client(args.server) as client:
            return CLIENT_COMMANDS[args.client_command](args, client)
    except GradwireError as exc:
        detail = "".join(f"\n  {field}: {description}" for field, description in exc.field_violations)
        print(f"gradwire: {exc}{detail}", file=sys.stderr)
        return 1
    except ValueError as exc:  # the SDK's own checks of arrays, before anything is sent
        print(f"gradwire: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
