"""The service's settings: one frozen dataclass, from flags, then environment, then defaults."""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

DEFAULT_ADDRESS = "127.0.0.1:50051"
DEFAULT_HTTP_ADDRESS = "127.0.0.1:8080"
DEFAULT_DATA_DIR = "data"
MiB = 1 << 20
MAX_STATEMENT_SECONDS = 2_147_483
"""PostgreSQL's largest statement_timeout, in seconds (2³¹ − 1 ms)."""


LOCAL_EXECUTORS = ("process", "thread")
EXECUTORS = (*LOCAL_EXECUTORS, "ray")
"""Where runs execute (``executor``): worker processes of this server (the default), threads of
the server process itself (one interpreter: runs share one core's worth of Python), or actors on
a Ray cluster (``ray_address``)."""


def usable_cpus(root: Path = Path("/sys/fs/cgroup")) -> int:
    """The CPUs this process may use: those its affinity allows, fewer where its cgroup's CPU
    quota is smaller (rounded up; cgroup v2 ``cpu.max``, else v1 ``cpu.cfs_quota_us``)."""
    allowed = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    quota = cgroup_quota(root)
    return max(1, min(allowed, quota) if quota else allowed)


def cgroup_quota(root: Path) -> int | None:
    """The cgroup's CPU quota in whole CPUs, rounded up; None where it sets none or cannot be read."""
    for files in (("cpu.max",), ("cpu/cpu.cfs_quota_us", "cpu/cpu.cfs_period_us")):
        try:
            words = " ".join((root / name).read_text() for name in files).split()
        except OSError:
            continue
        if len(words) == 2 and all(w.isdigit() for w in words) and int(words[0]) > 0 and int(words[1]) > 0:
            return -(-int(words[0]) // int(words[1]))
        return None  # "max" or -1: no quota
    return None


class SettingError(ValueError):
    """A setting's value is refused: ``name`` is its field; the message says what it accepts."""

    def __init__(self, name: str, accepts: str) -> None:
        self.name = name
        super().__init__(f"{name} {accepts}")


@dataclass(frozen=True)
class Limits:
    """Past these a request gets RESOURCE_EXHAUSTED, naming the field and the limit."""

    max_layers: int = 64
    max_units: int = 16_384
    max_parameters: int = 50_000_000
    max_batch_size: int = 65_536
    max_epochs: int = 100_000
    max_gradcheck_parameters: int = 20_000
    max_gradcheck_rows: int = 256
    max_dataset_mb: int = 4096
    max_inline_mb: int = 64
    max_request_mb: int = 1024
    """The most memory one request may need (Predict, GetGradients, a run's training), as
    estimated from the model and the rows before the work starts."""


@dataclass(frozen=True)
class Settings:
    """Where to listen, where the data lives, how much work runs at once, how runs are kept.

    Every field reads from ``GRADWIRE_<FIELD>`` (``GRADWIRE_CHECKPOINT_INTERVAL``, ...) and from
    the ``gradwire serve`` flag of the same name.

    ``rpc_workers`` threads answer unary calls; ``max_streams`` more are kept for streams
    (WatchRun, Train, UploadDataset, ExportModel), whose number is capped there, so streams never
    starve a GetModel; ``health_streams`` more for health's Watch, which needs no key, so keyless
    watchers never take a stream from a tenant's work. ``train_workers`` runs (by default one per
    CPU this process may use) execute at once, each in a worker process of this server
    (``executor`` ``process``, run at ``worker_nice`` below the server's priority) or on a thread
    of it (``thread``); the others wait in the database, at most ``max_queued_runs`` of them (all
    processes together).

    Runs: epochs and checkpoints commit at most every ``checkpoint_interval`` seconds (and at
    every stop), so a crash loses at most that much work. A process holds a lease on each run it
    executes, renewed every ``heartbeat_seconds``; one not renewed for ``lease_seconds`` is
    interrupted by any process, and queued again up to ``auto_resume`` times in all (a graceful
    stop does not count: a run interrupted by SIGTERM is always queued again). Other
    processes' changes are seen within ``poll_seconds``. While the database cannot be reached,
    runs and watchers keep trying for ``db_retry_seconds`` before they give up; on PostgreSQL no
    statement (a wait for a lock included) runs past ``db_statement_seconds``. An upload whose
    client sends nothing for ``upload_idle_seconds`` is cancelled; one left unfinished for
    ``upload_ttl_seconds`` is deleted.

    Ray (``executor`` ``ray``): the cluster at ``ray_address`` (empty: the one this machine
    belongs to) trains ``ray_actors`` runs at once (0: as many as its CPUs hold), each with
    ``ray_cpus_per_run`` CPUs and as many BLAS threads (see :mod:`.ray_executor`).

    Access: with ``auth`` (the default) every call but health checking needs an API key
    (``gradwire keys create``); a key found is trusted for ``auth_cache_seconds``, so a revoked
    one stops working on every process within that bound. ``auth`` off makes every caller the
    tenant ``default``. A server refuses to listen on an address other than loopback without
    auth and TLS both, unless ``insecure`` says to anyway.

    Operations: ``metrics_address`` (``host:port``) serves Prometheus metrics there; empty: off.
    ``http_address`` is the HTTP port: the open inference protocol's REST endpoints (empty: off).
    ``tls_cert_file`` and ``tls_key_file`` (PEM) make the listener TLS; ``tls_client_ca_file``
    besides makes it mutual TLS (clients must present a certificate that CA signed).
    """

    address: str = DEFAULT_ADDRESS
    database_url: str = ""
    data_dir: str = DEFAULT_DATA_DIR
    rpc_workers: int = 16
    max_streams: int = 64
    health_streams: int = 8
    executor: str = "process"
    train_workers: int = field(default_factory=usable_cpus)
    worker_nice: int = 10
    ray_address: str = ""
    ray_cpus_per_run: float = 1.0
    ray_actors: int = 0
    max_queued_runs: int = 64
    max_message_mb: int = 512
    model_cache_mb: int = 256
    checkpoint_interval: float = 5.0
    lease_seconds: float = 30.0
    heartbeat_seconds: float = 2.0
    poll_seconds: float = 0.5
    auto_resume: int = 3
    db_retry_seconds: float = 30.0
    db_statement_seconds: float = 60.0
    upload_ttl_seconds: float = 3600.0
    upload_idle_seconds: float = 60.0
    auth: bool = True
    auth_cache_seconds: float = 5.0
    insecure: bool = False
    metrics_address: str = ""
    http_address: str = DEFAULT_HTTP_ADDRESS
    tls_cert_file: str = ""
    tls_key_file: str = ""
    tls_client_ca_file: str = ""
    limits: Limits = field(default_factory=Limits)

    def __post_init__(self) -> None:
        if not self.database_url:
            url = f"sqlite:///{Path(self.data_dir).absolute() / 'gradwire.db'}"
            object.__setattr__(self, "database_url", url)
        positive = (
            "rpc_workers",
            "max_streams",
            "health_streams",
            "train_workers",
            "max_message_mb",
            "model_cache_mb",
            "checkpoint_interval",
            "lease_seconds",
            "heartbeat_seconds",
            "poll_seconds",
            "db_retry_seconds",
            "db_statement_seconds",
            "upload_ttl_seconds",
            "upload_idle_seconds",
            "auth_cache_seconds",
        )
        for name in positive:
            if not getattr(self, name) > 0:
                raise SettingError(name, "must be greater than 0")
            if getattr(self, name) == math.inf:
                raise SettingError(name, "must be finite")
        if self.db_statement_seconds > MAX_STATEMENT_SECONDS:
            raise SettingError(
                "db_statement_seconds", f"must be at most {MAX_STATEMENT_SECONDS} (PostgreSQL's bound)"
            )
        for name in ("max_queued_runs", "auto_resume"):
            if getattr(self, name) < 0:
                raise SettingError(name, "must be at least 0")
        if self.executor not in EXECUTORS:
            raise SettingError("executor", f"must be one of {', '.join(EXECUTORS)}")
        if not 0 < self.ray_cpus_per_run < math.inf:
            raise SettingError("ray_cpus_per_run", "must be greater than 0")
        if self.ray_actors < 0:
            raise SettingError("ray_actors", "must be at least 0 (0: as many as the cluster's CPUs hold)")
        if not 0 <= self.worker_nice <= 19:
            raise SettingError("worker_nice", "must be from 0 (the server's priority) to 19 (the lowest)")
        if self.heartbeat_seconds * 2 > self.lease_seconds:
            raise SettingError("heartbeat_seconds", "must be at most half of lease_seconds")

    @property
    def max_message_bytes(self) -> int:
        return self.max_message_mb * MiB

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None, **overrides: Any) -> Settings:
        """Settings from ``GRADWIRE_*`` variables (limits too: ``GRADWIRE_MAX_LAYERS``, ...);
        ``overrides`` (e.g. command-line flags, limits included) win."""
        env = dict(os.environ) if env is None else env
        given = {k: v for k, v in overrides.items() if v is not None}
        values, limits = _read(cls, env, given), _read(Limits, env, given)
        return cls(**values, limits=Limits(**limits))


BOOLEANS = {
    "true": True,
    "on": True,
    "yes": True,
    "1": True,
    "false": False,
    "off": False,
    "no": False,
    "0": False,
}
"""The words a yes/no setting takes, either case."""


def parse_bool(raw: Any) -> bool:
    if isinstance(raw, bool):
        return raw
    try:
        return BOOLEANS[str(raw).strip().lower()]
    except KeyError:
        raise ValueError(raw) from None


PARSERS: dict[str, Callable[[Any], Any]] = {"int": int, "float": float, "str": str, "bool": parse_bool}
ACCEPTS = {"int": "a whole number", "float": "a number", "str": "text", "bool": "on or off (true/false)"}
"""What each parser takes, in words, for the message that refuses a value."""


def variable(name: str) -> str:
    """The environment variable a setting reads (``train_workers``: ``GRADWIRE_TRAIN_WORKERS``)."""
    return f"GRADWIRE_{name.upper()}"


def _read(cls: type, env: dict[str, str], given: dict[str, Any]) -> dict[str, Any]:
    """Values of ``cls``'s fields from ``given``, else from ``GRADWIRE_<FIELD>``, parsed by type."""
    values: dict[str, Any] = {}
    for f in fields(cls):
        raw = given.get(f.name, env.get(variable(f.name)))
        if raw is not None and f.name != "limits":
            values[f.name] = _parse(f.name, str(f.type), raw)
    return values


def _parse(name: str, kind: str, raw: Any) -> Any:
    try:
        return PARSERS[kind](raw)
    except (TypeError, ValueError):
        raise SettingError(name, f"must be {ACCEPTS[kind]}") from None
