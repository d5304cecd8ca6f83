"""Optimisers: each turns gradients into parameter updates and keeps only its own state.

The base class owns the plumbing (L2 weight decay, the step counter, state export); each
optimiser writes one method, :meth:`Optimizer.updates`, returning the array ``u`` that the
trainer subtracts, ``w ← w − u``. The parameter is passed in, never captured: the network's
flat parameter buffer, so one step is a handful of whole-buffer operations. ``η`` is the
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

All arithmetic stays in the parameters' dtype: scalars enter as Python floats (an array keeps its
dtype beside them), or as 0-d arrays of that dtype where a step is short enough for the
conversion to show (SGD's rate, made once per rate: :mod:`.scalars`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from .config import OPTIMIZER_NAMES, OptimizerConfig
from .errors import InvalidArgument
from .scalars import scalar

Array = np.ndarray


@dataclass(frozen=True)
class OptimizerState:
    """A copy of an optimiser's state: which optimiser, its step count and its slot arrays."""

    name: str
    t: int
    slots: dict[str, Array]

    @property
    def meta(self) -> dict[str, Any]:
        """The JSON part, as :meth:`Optimizer.export_state` gives it."""
        return {"name": self.name, "t": self.t}


class Optimizer:
    """Plumbing shared by every optimiser; subclasses implement :meth:`updates`.

    ``decay_mask`` (shaped like the parameter, 1 where weight decay applies, 0 elsewhere) limits
    the decay to some entries; ``None`` decays all of them.
    """

    slots: ClassVar[tuple[str, ...]] = ()
    decoupled_decay: ClassVar[bool] = False
    plain_sgd: ClassVar[bool] = False

    def __init__(self, config: OptimizerConfig, param: Array, decay_mask: Array | None = None) -> None:
        self.config = config
        self.weight_decay = float(config.weight_decay)
        self._rate_of: tuple[float, Array] = (float("nan"), scalar(0.0, param.dtype))
        self.scales_gradient = self.plain_sgd and not config.weight_decay
        """``u = ηg`` exactly: the update's norm is ``η`` times the gradient's."""
        self.decay_mask = decay_mask
        self.t = 0
        self.state: dict[str, Array] = {slot: np.zeros_like(param) for slot in self.slots}

    def step(self, param: Array, grad: Array, lr: float) -> Array:
        """The update ``u`` for one minibatch (the caller applies ``w ← w − u``).

        Consumes ``grad``. The result may be the optimiser's own state: read it, never write it.
        """
        self.t += 1
        lr, wd = float(lr), self.weight_decay
        if wd and not self.decoupled_decay:
            grad += wd * self._decaying(param)
        update = self.updates(grad, lr)
        if wd and self.decoupled_decay:
            update = update + (lr * wd) * self._decaying(param)
        return update

    def _rate(self, lr: float) -> Array:
        """``η`` as a 0-d array of the parameters' dtype (:mod:`.scalars`), made once per rate."""
        if lr != self._rate_of[0]:
            self._rate_of = (lr, scalar(lr, self._rate_of[1].dtype))
        return self._rate_of[1]

    def _decaying(self, param: Array) -> Array:
        return param if self.decay_mask is None else param * self.decay_mask

    def updates(self, grad: Array, lr: float) -> Array:
        raise NotImplementedError

    # ------------------------------------------------------------------ state

    def snapshot(self) -> OptimizerState:
        """A copy of the state, to :meth:`restore` later."""
        return OptimizerState(self.config.name, self.t, {slot: a.copy() for slot, a in self.state.items()})

    def restore(self, state: OptimizerState) -> None:
        """Go back to a :meth:`snapshot` of this optimiser."""
        self.import_state(state.slots, state.meta)

    def export_state(self) -> tuple[dict[str, Array], dict[str, Any]]:
        """Copies of the slot arrays, and the JSON part (name, step count)."""
        state = self.snapshot()
        return state.slots, state.meta

    def import_state(self, arrays: dict[str, Array], meta: dict[str, Any]) -> None:
        if meta.get("name") != self.config.name:
            raise InvalidArgument(
                "optimizer.name", f"state is for {meta.get('name')!r}, not {self.config.name!r}"
            )
        for slot, target in self.state.items():
            np.copyto(target, arrays[slot])
        self.t = int(meta["t"])


class SGD(Optimizer):
    plain_sgd = True

    def updates(self, grad: Array, lr: float) -> Array:
        grad *= self._rate(lr)
        return grad


class Momentum(Optimizer):
    slots = ("velocity",)

    def updates(self, grad: Array, lr: float) -> Array:
        v = self.state["velocity"]
        v *= float(self.config.momentum)
        grad *= lr
        v += grad
        return v


class Nesterov(Optimizer):
    slots = ("velocity",)

    def updates(self, grad: Array, lr: float) -> Array:
        mu, v = float(self.config.momentum), self.state["velocity"]
        grad *= lr
        v *= mu
        v += grad
        grad += mu * v
        return grad


class Adam(Optimizer):
    slots = ("m", "s")

    def updates(self, grad: Array, lr: float) -> Array:
        c = self.config
        b1, b2, eps = float(c.beta1), float(c.beta2), float(c.epsilon)
        step = lr / (1.0 - b1**self.t)  # η / (1 − β₁ᵗ): the bias correction of m
        root = 1.0 / (1.0 - b2**self.t) ** 0.5  # 1 / √(1 − β₂ᵗ): the bias correction of √s
        m, s = self.state["m"], self.state["s"]
        m *= b1
        m += (1.0 - b1) * grad
        s *= b2
        grad *= grad
        grad *= 1.0 - b2
        s += grad
        denom = np.sqrt(s, out=grad)
        denom *= root
        denom += eps
        u = m * step
        u /= denom
        return u


class AdamW(Adam):
    decoupled_decay = True


class RMSprop(Optimizer):
    slots = ("s",)

    def updates(self, grad: Array, lr: float) -> Array:
        rho, eps, s = float(self.config.rho), float(self.config.epsilon), self.state["s"]
        s *= rho
        s += (1.0 - rho) * (grad * grad)
        denom = np.sqrt(s)
        denom += eps
        grad *= lr
        grad /= denom
        return grad


OPTIMIZERS: dict[str, type[Optimizer]] = dict(
    zip(OPTIMIZER_NAMES, (SGD, Momentum, Nesterov, Adam, AdamW, RMSprop), strict=True)
)
"""Each optimiser by its name (the names :class:`.config.OptimizerConfig` accepts, in their order)."""


def make_optimizer(config: OptimizerConfig, param: Array, decay_mask: Array | None = None) -> Optimizer:
    """The optimiser ``config.name`` for ``param``, decaying where ``decay_mask`` is 1."""
    return OPTIMIZERS[config.name](config, param, decay_mask)
