"""Optimisers: each turns gradients into parameter updates and keeps only its own state.

The base class owns the plumbing (L2 weight decay, the step counter, state export); each
optimiser writes one method, :meth:`Optimizer.updates`, returning the arrays ``u`` that the
trainer subtracts, ``w ← w − u``. Parameters are passed in, never captured. ``η`` is the
learning rate of the current epoch, ``g`` the gradient (plus ``λw`` for L2 decay), ``t`` the
1-based step count.

=============  =========================================================================
``sgd``        ``u = ηg``
``momentum``   ``v ← μv + ηg``; ``u = v``   (Polyak 1964, heavy ball)
``nesterov``   ``v ← μv + ηg``; ``u = μv + ηg``   (Sutskever et al. 2013)
``adam``       ``m ← β₁m + (1−β₁)g``; ``s ← β₂s + (1−β₂)g²``;
               ``u = η m̂ / (√ŝ + ε)`` with ``m̂ = m/(1−β₁ᵗ)``, ``ŝ = s/(1−β₂ᵗ)``   (Kingma & Ba 2015)
``adamw``      Adam's ``u`` plus ``ηλw``, the decay decoupled from ``g``   (Loshchilov & Hutter 2019)
``rmsprop``    ``s ← ρs + (1−ρ)g²``; ``u = ηg / (√s + ε)``   (Tieleman & Hinton 2012)
=============  =========================================================================

All arithmetic stays in the parameters' dtype: scalars enter as Python floats.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from .config import OptimizerConfig
from .errors import InvalidArgument

Array = np.ndarray


class Optimizer:
    """Plumbing shared by every optimiser; subclasses implement :meth:`updates`."""

    slots: ClassVar[tuple[str, ...]] = ()
    decoupled_decay: ClassVar[bool] = False

    def __init__(self, config: OptimizerConfig, params: list[Array], decays: list[bool]) -> None:
        self.config = config
        self.decays = decays
        self.t = 0
        self.state: dict[str, list[Array]] = {s: [np.zeros_like(p) for p in params] for s in self.slots}

    def step(self, params: list[Array], grads: list[Array], lr: float) -> list[Array]:
        """Updates ``u`` for one minibatch (the caller applies ``w ← w − u``); consumes ``grads``."""
        self.t += 1
        lr = float(lr)
        wd = float(self.config.weight_decay)
        if wd and not self.decoupled_decay:
            for p, g, decays in zip(params, grads, self.decays, strict=True):
                if decays:
                    g += wd * p
        updates = self.updates(grads, lr)
        if wd and self.decoupled_decay:
            for p, u, decays in zip(params, updates, self.decays, strict=True):
                if decays:
                    u += (lr * wd) * p
        return updates

    def updates(self, grads: list[Array], lr: float) -> list[Array]:
        raise NotImplementedError

    # ------------------------------------------------------------------ state

    def export_state(self, names: list[str]) -> tuple[dict[str, Array], dict[str, Any]]:
        arrays = {
            f"{slot}/{name}": a.copy()
            for slot in self.slots
            for name, a in zip(names, self.state[slot], strict=True)
        }
        return arrays, {"name": self.config.name, "t": self.t}

    def import_state(self, names: list[str], arrays: dict[str, Array], meta: dict[str, Any]) -> None:
        if meta.get("name") != self.config.name:
            raise InvalidArgument(
                "optimizer.name", f"state is for {meta.get('name')!r}, not {self.config.name!r}"
            )
        for slot in self.slots:
            for name, target in zip(names, self.state[slot], strict=True):
                np.copyto(target, arrays[f"{slot}/{name}"])
        self.t = int(meta["t"])


class SGD(Optimizer):
    def updates(self, grads: list[Array], lr: float) -> list[Array]:
        return [g * lr for g in grads]


class Momentum(Optimizer):
    slots = ("velocity",)

    def updates(self, grads: list[Array], lr: float) -> list[Array]:
        mu = float(self.config.momentum)
        for v, g in zip(self.state["velocity"], grads, strict=True):
            v *= mu
            v += lr * g
        return [v.copy() for v in self.state["velocity"]]


class Nesterov(Optimizer):
    slots = ("velocity",)

    def updates(self, grads: list[Array], lr: float) -> list[Array]:
        mu = float(self.config.momentum)
        out = []
        for v, g in zip(self.state["velocity"], grads, strict=True):
            g *= lr
            v *= mu
            v += g
            g += mu * v
            out.append(g)
        return out


class Adam(Optimizer):
    slots = ("m", "s")

    def updates(self, grads: list[Array], lr: float) -> list[Array]:
        c = self.config
        b1, b2, eps = float(c.beta1), float(c.beta2), float(c.epsilon)
        step = lr / (1.0 - b1**self.t)  # η / (1 − β₁ᵗ): the bias correction of m
        root = 1.0 / (1.0 - b2**self.t) ** 0.5  # 1 / √(1 − β₂ᵗ): the bias correction of √s
        out = []
        for m, s, g in zip(self.state["m"], self.state["s"], grads, strict=True):
            m *= b1
            m += (1.0 - b1) * g
            s *= b2
            g *= g
            g *= 1.0 - b2
            s += g
            denom = np.sqrt(s, out=g)
            denom *= root
            denom += eps
            u = m * step
            u /= denom
            out.append(u)
        return out


class AdamW(Adam):
    decoupled_decay = True


class RMSprop(Optimizer):
    slots = ("s",)

    def updates(self, grads: list[Array], lr: float) -> list[Array]:
        rho, eps = float(self.config.rho), float(self.config.epsilon)
        out = []
        for s, g in zip(self.state["s"], grads, strict=True):
            s *= rho
            s += (1.0 - rho) * (g * g)
            denom = np.sqrt(s)
            denom += eps
            g *= lr
            g /= denom
            out.append(g)
        return out


OPTIMIZERS: dict[str, type[Optimizer]] = {
    "sgd": SGD,
    "momentum": Momentum,
    "nesterov": Nesterov,
    "adam": Adam,
    "adamw": AdamW,
    "rmsprop": RMSprop,
}


def make_optimizer(config: OptimizerConfig, params: list[Array], decays: list[bool]) -> Optimizer:
    """The optimiser ``config.name`` for ``params``; ``decays[i]`` says whether ``params[i]`` decays."""
    return OPTIMIZERS[config.name](config, params, decays)
