"""Learning-rate schedules, applied per epoch.

``e`` is the 0-based index of the epoch about to run, counted over the model's whole training
(so a resumed run continues the curve), and ``η₀`` the optimiser's learning rate.

===============  ===============================================================================
``constant``     ``η₀``
``step``         ``η₀ · γ^⌊e / step_size⌋``
``exponential``  ``η₀ · γ^e``
``cosine``       ``η_min + (η₀ − η_min)(1 + cos(π·min(e, T)/T))/2`` with ``T = t_max``
``plateau``      starts at ``η₀``; after an epoch whose monitored loss is not below
                 ``best·(1 − threshold)`` for more than ``patience`` epochs in a row, becomes
                 ``max(η·factor, η_min)`` and the count restarts
===============  ===============================================================================
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from .config import ScheduleConfig

Formula = Callable[[ScheduleConfig, float, int], float]

FORMULAS: dict[str, Formula] = {
    "constant": lambda c, lr0, e: lr0,
    "step": lambda c, lr0, e: lr0 * c.gamma ** (e // c.step_size),
    "exponential": lambda c, lr0, e: lr0 * c.gamma**e,
    "cosine": lambda c, lr0, e: (
        c.min_lr + (lr0 - c.min_lr) * (1 + math.cos(math.pi * min(e, c.t_max) / c.t_max)) / 2
    ),
}


class Schedule:
    """A stateless schedule: the rate is a formula of the epoch index."""

    def __init__(self, config: ScheduleConfig, lr0: float) -> None:
        self.config, self.lr0 = config, float(lr0)

    def rate(self, epoch: int) -> float:
        return float(FORMULAS[self.config.name](self.config, self.lr0, epoch))

    def observe(self, loss: float) -> None:
        """Told the monitored loss after each epoch; only stateful schedules listen."""

    def export_state(self) -> dict[str, Any]:
        return {}

    def import_state(self, state: dict[str, Any]) -> None:
        """Nothing to restore for a formula."""


class Plateau(Schedule):
    """Reduce-on-plateau: the rate depends on the losses seen, so it is state."""

    def __init__(self, config: ScheduleConfig, lr0: float) -> None:
        super().__init__(config, lr0)
        self.lr = self.lr0
        self.best = math.inf
        self.bad_epochs = 0

    def rate(self, epoch: int) -> float:
        return self.lr

    def observe(self, loss: float) -> None:
        c = self.config
        if loss < self.best * (1.0 - c.threshold) or self.best == math.inf:
            self.best, self.bad_epochs = loss, 0
            return
        self.bad_epochs += 1
        if self.bad_epochs > c.patience:
            self.lr, self.bad_epochs = max(self.lr * c.factor, c.min_lr), 0

    def export_state(self) -> dict[str, Any]:
        return {
            "lr": self.lr,
            "best": self.best if math.isfinite(self.best) else None,
            "bad_epochs": self.bad_epochs,
        }

    def import_state(self, state: dict[str, Any]) -> None:
        self.lr = float(state["lr"])
        self.best = math.inf if state["best"] is None else float(state["best"])
        self.bad_epochs = int(state["bad_epochs"])


def make_schedule(config: ScheduleConfig, lr0: float) -> Schedule:
    """The schedule ``config.name`` starting from learning rate ``lr0``."""
    return Plateau(config, lr0) if config.name == "plateau" else Schedule(config, lr0)
