"""Data generators shared by the tests (importable as ``helpers``: tests/ is on pytest's path)."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


@dataclass
class Running:
    """A started test server: its address and the application behind it."""

    address: str
    app: Any
    settings: Any
    server: Any = None  # the grpc.Server


class CallsEnded(logging.Handler):
    """Sees the one log line the server writes as each call ends (after its handler returned):
    a test waits on it for the server's side of a call to be over, instead of sleeping."""

    def __init__(self) -> None:
        super().__init__()
        self.ended: list[tuple[str, str]] = []
        self.changed = threading.Condition()

    def emit(self, record: logging.LogRecord) -> None:
        with self.changed:
            self.ended.append((getattr(record, "method", ""), getattr(record, "code", "")))
            self.changed.notify_all()

    def wait_for(self, method: str, timeout: float = 30.0) -> str:
        """The status code of the first ended call of ``method`` (e.g. "UploadDataset")."""

        def ended() -> str | None:
            return next((code for m, code in self.ended if m.endswith(f"/{method}")), None)

        with self.changed:
            assert self.changed.wait_for(ended, timeout), f"no {method} call ended within {timeout} s"
            return ended() or ""


def two_spirals(n_per_class: int, noise: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Two interleaved spirals in 2-D, labels 0 and 1: not separable by any line."""
    t = np.sqrt(rng.uniform(0.0, 1.0, n_per_class)) * 3 * np.pi
    arm = np.stack([t * np.cos(t), t * np.sin(t)], axis=1) / (3 * np.pi)
    X = np.concatenate([arm, -arm]) + rng.normal(0.0, noise, (2 * n_per_class, 2))
    labels = np.repeat([0, 1], n_per_class)
    return X, labels


WIDE: dict[str, Any] = {
    "input_dim": 1,
    "layers": [
        {"kind": "dense", "units": 16_384, "activation": "relu"},
        {"kind": "dense", "units": 1, "activation": "identity"},
    ],
    "loss": "squared_error",
    "dtype": "float64",
    "seed": 0,
}
"""A legal model whose width makes memory the limit: 49,153 parameters, 16,384 values a row in
its hidden layer (the memory-budget tests, in-process and under an address-space limit)."""


GRADWIRE = str(Path(sys.executable).with_name("gradwire"))


LIMITED = Path(__file__).with_name("limited.py")


class ServerProcess:
    """``gradwire serve`` as a real child process on a free port, over ``database_url``.

    ``settings`` become ``GRADWIRE_<NAME>`` environment variables; authentication is off unless
    ``auth`` says otherwise (the tests of keys turn it on). Its JSON log lines are read
    as they come, so a test can wait for one (:meth:`wait_for_log`) instead of sleeping.
    ``address_space`` caps the process's virtual memory (``RLIMIT_AS``, bytes), so that a test
    of memory limits cannot take the machine down; ``cpus`` is the CPUs it may run on.
    """

    def __init__(
        self,
        database_url: str,
        address: str = "127.0.0.1:0",
        address_space: int | None = None,
        cpus: set[int] | None = None,
        **settings: object,
    ) -> None:
        settings = {"auth": "off", **settings}
        env = {**os.environ, **{f"GRADWIRE_{k.upper()}": str(v) for k, v in settings.items()}}
        argv = [
            GRADWIRE,
            "serve",
            "--address",
            address,
            "--database-url",
            database_url,
            "--log-format",
            "json",
        ]
        if address_space is not None or cpus is not None:  # set in the child by limited.py (its docstring)
            limits = {"address_space": address_space, "cpus": None if cpus is None else sorted(cpus)}
            argv = [sys.executable, str(LIMITED), json.dumps(limits), *argv]
        self.process = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
        )
        self.logs: list[dict[str, Any]] = []
        self._logged = threading.Condition()
        threading.Thread(target=self._read_logs, daemon=True).start()
        assert self.process.stdout is not None
        line = self.process.stdout.readline()  # blocks until the server has bound its port
        match = re.search(r"listening on (\S+)", line)
        assert match, f"gradwire serve did not start: {line!r}; log: {self.logs[-5:]}"
        self.address = match.group(1)
        self.http_url = ""  # the HTTP port's, where it serves one (the tests' default: tests/conftest.py)
        if env.get("GRADWIRE_HTTP_ADDRESS"):
            line = self.process.stdout.readline()
            match = re.search(r"dashboard on (\S+)", line)
            assert match, f"gradwire serve said no HTTP port: {line!r}"
            self.http_url = match.group(1)

    def _read_logs(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                entry = {"message": line.rstrip()}
            with self._logged:
                self.logs.append(entry)
                self._logged.notify_all()

    def wait_for_log(self, message: str, timeout: float = 60.0) -> dict[str, Any]:
        """The first log entry whose message is ``message``, waiting for it if need be."""
        return self.wait_for_entry(lambda entry: entry.get("message") == message, timeout, repr(message))

    def wait_for_entry(
        self, match: Callable[[dict[str, Any]], bool], timeout: float = 60.0, what: str = "such log entry"
    ) -> dict[str, Any]:
        """The first log entry that ``match`` accepts, waiting for it if need be."""

        def found() -> dict[str, Any] | None:
            return next((e for e in self.logs if match(e)), None)

        with self._logged:
            assert self._logged.wait_for(found, timeout), (
                f"no {what} within {timeout} s; last: {self.logs[-5:]}"
            )
            return found() or {}

    def kill(self) -> None:
        """SIGKILL: no goodbye, no cleanup."""
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)

    def terminate(self, timeout: float = 60.0) -> int:
        """SIGTERM, then its exit status (it must exit within ``timeout``)."""
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=timeout)

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.process.poll() is None:
            self.kill()
