"""The ``gradwire`` command: run the server, upgrade its database, and use it from a shell.

    gradwire serve [--address 127.0.0.1:50051] [--database-url URL] [--data-dir data]
    gradwire db upgrade [--database-url URL]
    gradwire models list | show ID | delete ID | create --spec spec.json [--name NAME]
    gradwire train ID --data data.npz | --inputs x.csv --targets y.csv [--epochs N ...]
    gradwire predict ID --inputs x.csv --output out.csv [--version V]
    gradwire history ID

Client commands reach the server at ``--server`` (or ``GRADWIRE_SERVER``, default
127.0.0.1:50051). Data files are ``.npz`` (arrays ``x`` and ``y``; read without pickles) or
``.csv`` (numbers, comma-separated, one row per line).
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
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np

from gradwire.client import Client, GradwireError, History, ModelInfo
from gradwire.engine import history_table
from gradwire.storage import SchemaOutOfDate, make_engine, upgrade

from .server import JsonFormatter, create_server, stop_server
from .settings import Limits, Settings

EXIT_USAGE = 2


# ------------------------------------------------------------------------------------ files


def load_array(path: str, key: str = "x") -> np.ndarray:
    """A 2-D array from ``.npz`` (array ``key``) or ``.csv``."""
    if path.endswith(".npz"):
        with np.load(path, allow_pickle=False) as data:
            if key not in data.files:
                raise SystemExit(f"{path} has no array {key!r} (it has {', '.join(data.files)})")
            return np.asarray(data[key])
    return np.loadtxt(path, delimiter=",", ndmin=2)


def save_array(path: str, array: np.ndarray) -> None:
    if path.endswith(".npz"):
        np.savez(path, outputs=array)
    else:
        np.savetxt(path, array, delimiter=",", fmt="%.8g")


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
    try:
        server, port, app = create_server(settings)
    except SchemaOutOfDate as exc:
        print(f"gradwire: {exc}", file=sys.stderr)
        return EXIT_USAGE
    host = settings.address.rsplit(":", 1)[0]
    print(f"gradwire listening on {host}:{port} (database {settings.database_url})", flush=True)
    stopping = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stopping.set())
    stopping.wait()
    print("gradwire stopping: trainings commit their best weights", flush=True)
    stop_server(server, app)
    return 0


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    settings = _settings(args)
    upgrade(make_engine(settings.database_url))
    print(f"database {settings.database_url} is at the current schema")
    return 0


# ------------------------------------------------------------------------------------ client


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


def cmd_train(args: argparse.Namespace, client: Client) -> int:
    if args.data:
        x, y = load_array(args.data, "x"), load_array(args.data, "y")
    elif args.inputs and args.targets:
        x, y = load_array(args.inputs), load_array(args.targets)
    else:
        raise SystemExit("train needs --data FILE.npz, or --inputs and --targets")
    options: dict[str, Any] = json.loads(args.options) if args.options else {}
    for name in ("seed", "patience", "loss_threshold", "clip_norm"):
        if getattr(args, name) is not None:
            options[name] = getattr(args, name)
    history = client.model(args.model_id).fit(
        x,
        y,
        epochs=args.epochs,
        batch_size=args.batch_size,
        optimizer=args.optimizer,
        learning_rate=args.learning_rate,
        validation_split=args.validation_split,
        progress=not args.quiet,
        **options,
    )
    print(
        f"stopped: {history.stop_reason}; best epoch {history.best_epoch} "
        f"(loss {history.best_loss:.6g}); model now at version {history.version}"
    )
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


# ------------------------------------------------------------------------------------ parser


def _database_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--database-url", help="SQLAlchemy URL (default: a SQLite file in --data-dir)")
    parser.add_argument("--data-dir", help="folder of the default SQLite database (default: data)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gradwire", description="Backpropagation as a training service.")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the gRPC server")
    serve.add_argument("--address", help="host:port to listen on (default 127.0.0.1:50051; port 0: any)")
    _database_flags(serve)
    serve.add_argument("--rpc-workers", type=int)
    serve.add_argument("--train-workers", type=int)
    serve.add_argument("--max-message-mb", type=int)
    for limit in fields(Limits):
        serve.add_argument(
            f"--{limit.name.replace('_', '-')}", type=int, help=f"limit (default {limit.default})"
        )
    serve.add_argument("--log-level", default=os.environ.get("GRADWIRE_LOG_LEVEL", "info"))
    serve.add_argument("--log-format", choices=("json", "text"), default="json")

    db = sub.add_parser("db", help="database schema")
    db.add_argument("action", choices=("upgrade",))
    _database_flags(db)

    def client_command(name: str, help_text: str) -> argparse.ArgumentParser:
        command = sub.add_parser(name, help=help_text)
        command.add_argument("--server", help="host:port (default: GRADWIRE_SERVER, else 127.0.0.1:50051)")
        return command

    models = client_command("models", "list, show, create or delete models")
    models.add_argument("action", choices=("list", "show", "delete", "create"))
    models.add_argument("model_id", nargs="?")
    models.add_argument("--spec", help="create: a JSON file with the spec")
    models.add_argument("--name", default="")

    train = client_command("train", "train a model on a data file, with a progress line per epoch")
    train.add_argument("model_id")
    train.add_argument("--data", help=".npz with arrays x and y")
    train.add_argument("--inputs", help=".csv or .npz (array x)")
    train.add_argument("--targets", help=".csv or .npz (array x)")
    train.add_argument("--epochs", type=int, default=100)
    train.add_argument("--batch-size", type=int, default=32)
    train.add_argument("--optimizer", default="sgd")
    train.add_argument("--learning-rate", type=float)
    train.add_argument("--validation-split", type=float, default=0.0)
    train.add_argument("--patience", type=int)
    train.add_argument("--loss-threshold", type=float)
    train.add_argument("--clip-norm", type=float)
    train.add_argument("--seed", type=int)
    train.add_argument("--options", help='more TrainOptions as JSON, e.g. {"schedule": {"name": "cosine"}}')
    train.add_argument("--quiet", action="store_true", help="no progress lines")

    predict = client_command("predict", "predict a file of inputs into a file of outputs")
    predict.add_argument("model_id")
    predict.add_argument("--inputs", required=True)
    predict.add_argument("--output", required=True)
    predict.add_argument("--version", type=int, default=0)

    history = client_command("history", "a model's training runs as tables")
    history.add_argument("model_id")
    return parser


CLIENT_COMMANDS: dict[str, Callable[[argparse.Namespace, Client], int]] = {
    "models": cmd_models,
    "train": cmd_train,
    "predict": cmd_predict,
    "history": cmd_history,
}


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
            return CLIENT_COMMANDS[args.command](args, client)
    except GradwireError as exc:
        detail = "".join(f"\n  {field}: {description}" for field, description in exc.field_violations)
        print(f"gradwire: {exc}{detail}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
