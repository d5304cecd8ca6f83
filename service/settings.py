"""The service's settings: one frozen dataclass, from flags, then environment, then defaults."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

DEFAULT_ADDRESS = "127.0.0.1:50051"
DEFAULT_DATA_DIR = "data"
MiB = 1 << 20


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


@dataclass(frozen=True)
class Settings:
    """Where to listen, where the data lives, how much work runs at once.

    Environment: ``GRADWIRE_ADDRESS``, ``GRADWIRE_DATABASE_URL``, ``GRADWIRE_DATA_DIR``,
    ``GRADWIRE_RPC_WORKERS``, ``GRADWIRE_TRAIN_WORKERS``, ``GRADWIRE_MAX_MESSAGE_MB``.
    """

    address: str = DEFAULT_ADDRESS
    database_url: str = ""
    data_dir: str = DEFAULT_DATA_DIR
    rpc_workers: int = 16
    train_workers: int = 2
    max_queued_trainings: int = 8
    max_message_mb: int = 512
    model_cache_size: int = 32
    limits: Limits = field(default_factory=Limits)

    def __post_init__(self) -> None:
        if not self.database_url:
            url = f"sqlite:///{Path(self.data_dir).absolute() / 'gradwire.db'}"
            object.__setattr__(self, "database_url", url)
        for name in ("rpc_workers", "train_workers", "max_message_mb", "model_cache_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if self.rpc_workers < self.train_workers + 2:
            raise ValueError("rpc_workers must exceed train_workers by 2: each Train holds an RPC thread")

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


def _read(cls: type, env: dict[str, str], given: dict[str, Any]) -> dict[str, Any]:
    """Values of ``cls``'s fields from ``given``, else from ``GRADWIRE_<FIELD>``; ints parsed."""
    values: dict[str, Any] = {}
    for f in fields(cls):
        raw = given.get(f.name, env.get(f"GRADWIRE_{f.name.upper()}"))
        if raw is not None and f.name != "limits":
            values[f.name] = int(raw) if f.type == "int" else raw
    return values
