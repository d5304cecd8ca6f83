"""Settings: environment, flags over environment, defaults, refusals."""

from __future__ import annotations

from pathlib import Path

import pytest

from gradwire.service import Settings


def test_environment_then_flags(tmp_path: Path) -> None:
    env = {
        "GRADWIRE_ADDRESS": "0.0.0.0:6000",
        "GRADWIRE_TRAIN_WORKERS": "3",
        "GRADWIRE_DATA_DIR": str(tmp_path),
    }
    settings = Settings.from_env(env, address="127.0.0.1:0")
    assert settings.address == "127.0.0.1:0"  # the flag wins
    assert settings.train_workers == 3
    assert settings.database_url == f"sqlite:///{tmp_path / 'gradwire.db'}"
    limited = Settings.from_env({"GRADWIRE_MAX_LAYERS": "7"}, max_epochs=9)
    assert (limited.limits.max_layers, limited.limits.max_epochs) == (7, 9)


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="train_workers"):
        Settings(train_workers=0)
    with pytest.raises(ValueError, match="checkpoint_interval"):
        Settings(checkpoint_interval=0)
    with pytest.raises(ValueError, match="heartbeat_seconds must be at most half of lease_seconds"):
        Settings(lease_seconds=3, heartbeat_seconds=2)


def test_fractional_seconds_parse_from_the_environment() -> None:
    settings = Settings.from_env({"GRADWIRE_CHECKPOINT_INTERVAL": "0.25", "GRADWIRE_AUTO_RESUME": "0"})
    assert (settings.checkpoint_interval, settings.auto_resume) == (0.25, 0)


def test_every_executor_named_in_the_settings_has_its_executor() -> None:
    from gradwire.service.core.settings import EXECUTORS
    from gradwire.service.usecases.app import EXECUTORS as BUILT

    assert set(BUILT) == set(EXECUTORS)
