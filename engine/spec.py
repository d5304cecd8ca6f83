"""The architecture spec: a plain, JSON-serialisable description of a network.

A spec is data, not behaviour: input width, a list of layers, the loss, the dtype and the seed
that draws the initial weights. It is validated when constructed; every error names its field
(``layers[2].activation``) and, where they form a list, the allowed values.

Layer kinds
-----------
``dense``      ``a = g(x W + b)`` with ``units``, ``activation`` and ``init``.
``batchnorm``  ``a = g(γ x̂ + β)`` with ``x̂`` standardised by the batch statistics in training
               and by running averages in inference (Ioffe & Szegedy 2015).
``residual``   ``a = g(x + f(x))`` where ``f`` is its own list of layers and keeps the width
               (He et al. 2016): a skip connection that lets gradients bypass ``f``.

The last layer is dense; its activation is the output activation, paired with the loss as
:data:`gradwire.engine.losses.LOSSES` allows.

Example
-------
>>> spec = NetworkSpec(2, (Dense(4, "tanh"), Dense(1, "sigmoid")), loss="binary_crossentropy")
>>> NetworkSpec.from_json(spec.to_json()) == spec
True
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import MISSING, dataclass, field, fields
from typing import Any, ClassVar

from .activations import ACTIVATIONS, HIDDEN_ACTIVATIONS
from .errors import InvalidArgument, Problems, cut, excerpt, lookup, require
from .initializers import check_initializer
from .losses import check_pair, get_loss

DTYPES = ("float32", "float64")


@dataclass(frozen=True)
class Dense:
    """A fully connected layer ``g(x W + b)``."""

    units: int
    activation: str = "relu"
    init: str = "he_normal"


@dataclass(frozen=True)
class BatchNorm:
    """Batch normalisation over the features, followed by ``activation``."""

    MIN_TRAINING_ROWS: ClassVar[int] = 2
    """One row is its own mean: x̂ = 0 and a variance of 0 (a training batch needs two)."""

    activation: str = "identity"
    momentum: float = 0.9
    epsilon: float = 1e-5


@dataclass(frozen=True)
class Residual:
    """A skip connection ``g(x + f(x))`` around ``layers``, which must keep the width."""

    layers: Sequence[LayerSpec]
    activation: str = "identity"


LayerSpec = Dense | BatchNorm | Residual

LAYER_KINDS: dict[str, type[Dense] | type[BatchNorm] | type[Residual]] = {
    "dense": Dense,
    "batchnorm": BatchNorm,
    "residual": Residual,
}
KIND_OF = {cls: kind for kind, cls in LAYER_KINDS.items()}


@dataclass(frozen=True)
class NetworkSpec:
    """The whole network: ``input_dim`` features in, the last dense layer's units out."""

    input_dim: int
    layers: Sequence[LayerSpec]
    loss: str
    dtype: str = "float64"
    seed: int = 0
    output_dim: int = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "layers", tuple(self.layers))
        problems = Problems()
        with problems.check():
            _check_int(self.input_dim, "input_dim", minimum=1)
        with problems.check():
            require(bool(self.layers), "layers", "a network needs at least one layer")
        width = _check_layers(self.layers, "layers", self.input_dim, problems)
        with problems.check():
            self._check_output(problems)
        with problems.check():
            if self.dtype not in DTYPES:
                raise InvalidArgument("dtype", f"unknown value {excerpt(self.dtype)}", DTYPES)
        with problems.check():
            _check_int(self.seed, "seed", minimum=0)
        problems.raise_any()
        object.__setattr__(self, "output_dim", width)

    def _check_output(self, problems: Problems) -> None:
        """The last layer is dense and its activation suits the loss (once both are known good)."""
        if not self.layers:
            return
        last = self.layers[-1]
        require(isinstance(last, Dense), f"layers[{len(self.layers) - 1}]", "the last layer must be dense")
        assert isinstance(last, Dense)
        if isinstance(last.activation, str) and last.activation in ACTIVATIONS:
            check_pair(last.activation, self.loss, "loss")
        else:
            get_loss(self.loss, "loss")  # the activation's own problem is reported already

    def walk(self) -> Iterator[tuple[LayerSpec, int, int]]:
        """Every layer, depth first, as ``(layer, width in, width out)``; a residual block comes
        before its inner layers."""
        return _walk(self.layers, self.input_dim)

    @property
    def layer_count(self) -> int:
        """Every layer, those inside residual blocks included (a block counts as one more)."""
        return sum(1 for _ in self.walk())

    @property
    def widths(self) -> tuple[int, ...]:
        """The width every layer outputs, in order, inner layers of blocks included."""
        return tuple(out for _, _, out in self.walk())

    @property
    def max_width(self) -> int:
        """The widest array any layer takes or gives, per row (the input included)."""
        return max(self.input_dim, *self.widths)

    @property
    def min_training_rows(self) -> int:
        """The fewest rows a training batch may have: 2 with batch normalisation, else 1."""
        return max(getattr(layer, "MIN_TRAINING_ROWS", 1) for layer, _, _ in self.walk())

    @property
    def parameter_count(self) -> int:
        """Trainable values: dense weights and biases, batch-norm scales and shifts."""
        return sum(_PARAMETERS[type(layer)](layer, width) for layer, width, _ in self.walk())

    @property
    def output_activation(self) -> str:
        last = self.layers[-1]
        assert isinstance(last, Dense)
        return last.activation

    def to_dict(self) -> dict[str, Any]:
        return {
            "input_dim": self.input_dim,
            "layers": [_layer_to_dict(layer) for layer in self.layers],
            "loss": self.loss,
            "dtype": self.dtype,
            "seed": self.seed,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> NetworkSpec:
        problems = Problems()
        with problems.check():
            _check_keys(
                data, "", {"input_dim", "layers", "loss", "dtype", "seed"}, {"input_dim", "layers", "loss"}
            )
        layers: tuple[LayerSpec, ...] = ()
        with problems.check():
            layers = _layers_from_list(data.get("layers"), "layers")
        problems.raise_any()  # the structure first: the values are checked once it is whole
        return cls(
            input_dim=data["input_dim"],
            layers=layers,
            loss=data["loss"],
            dtype=data.get("dtype", "float64"),
            seed=data.get("seed", 0),
        )

    @classmethod
    def from_json(cls, text: str) -> NetworkSpec:
        try:
            data = json.loads(text)
        except (json.JSONDecodeError, RecursionError) as exc:
            raise InvalidArgument("spec", f"not valid JSON: {cut(str(exc) or 'nested too deeply')}") from None
        require(isinstance(data, dict), "spec", "must be a JSON object")
        return cls.from_dict(data)


# ----------------------------------------------------------------------------- validation


def _check_int(value: object, name: str, minimum: int) -> None:
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= minimum
    require(ok, name, f"must be an integer ≥ {minimum}, got {excerpt(value)}")


def _check_activation(name: str, path: str, allowed: tuple[str, ...]) -> None:
    require(isinstance(name, str), f"{path}.activation", f"must be a name, got {excerpt(name)}")
    if name not in allowed:
        known = "unknown value" if name not in ACTIVATIONS else "not allowed here"
        raise InvalidArgument(f"{path}.activation", f"{known} {excerpt(name)}", allowed)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _check_dense(
    layer: Dense, path: str, width: int | None, is_output: bool, problems: Problems
) -> int | None:
    with problems.check():
        _check_int(layer.units, f"{path}.units", minimum=1)
    with problems.check():
        _check_activation(layer.activation, path, tuple(ACTIVATIONS) if is_output else HIDDEN_ACTIVATIONS)
    with problems.check():
        check_initializer(layer.init, f"{path}.init")
    return layer.units if isinstance(layer.units, int) and layer.units >= 1 else None


def _check_batchnorm(
    layer: BatchNorm, path: str, width: int | None, is_output: bool, problems: Problems
) -> int | None:
    with problems.check():
        _check_activation(layer.activation, path, HIDDEN_ACTIVATIONS)
    with problems.check():
        ok = _is_number(layer.momentum) and 0.0 <= layer.momentum < 1.0
        require(ok, f"{path}.momentum", f"must be in [0, 1), got {excerpt(layer.momentum)}")
    with problems.check():
        ok = _is_number(layer.epsilon) and layer.epsilon > 0.0
        require(ok, f"{path}.epsilon", f"must be a finite number > 0, got {excerpt(layer.epsilon)}")
    return width


def _check_residual(
    layer: Residual, path: str, width: int | None, is_output: bool, problems: Problems
) -> int | None:
    object.__setattr__(layer, "layers", tuple(layer.layers))
    with problems.check():
        _check_activation(layer.activation, path, HIDDEN_ACTIVATIONS)
    with problems.check():
        require(bool(layer.layers), f"{path}.layers", "a residual block needs at least one layer")
    out = _check_layers(layer.layers, f"{path}.layers", width, problems, inside_block=True)
    with problems.check():
        if layer.layers and None not in (width, out):
            require(
                out == width,
                f"{path}.layers",
                f"a skip connection adds its input to its output: width {width} in, {out} out",
            )
    return width


_CHECKS: dict[type, Callable[[Any, str, int | None, bool, Problems], int | None]] = {
    Dense: _check_dense,
    BatchNorm: _check_batchnorm,
    Residual: _check_residual,
}


def _check_layers(
    layers: Sequence[LayerSpec], path: str, width: int | None, problems: Problems, inside_block: bool = False
) -> int | None:
    """Validate ``layers`` fed ``width`` features, recording every problem; return the width they
    output (None once a width is unknown, so that no follow-on problem is made up)."""
    for i, layer in enumerate(layers):
        here = f"{path}[{i}]"
        check = _CHECKS.get(type(layer))
        if check is None:
            problems.found.append(
                InvalidArgument(here, f"not a layer spec: {excerpt(layer)}", sorted(LAYER_KINDS))
            )
            width = None
            continue
        is_output = not inside_block and i == len(layers) - 1
        width = check(layer, here, width, is_output, problems)
    return width


def _walk(layers: Sequence[LayerSpec], width: int) -> Iterator[tuple[LayerSpec, int, int]]:
    """Every layer, depth first, as ``(layer, width in, width out)``; a residual block comes
    before its inner layers."""
    for layer in layers:
        out = layer.units if isinstance(layer, Dense) else width
        yield layer, width, out
        if isinstance(layer, Residual):
            yield from _walk(layer.layers, width)
        width = out


_PARAMETERS: dict[type, Callable[[Any, int], int]] = {
    Dense: lambda layer, width: (width + 1) * layer.units,
    BatchNorm: lambda layer, width: 2 * width,
    Residual: lambda layer, width: 0,
}
"""Trainable values of one layer, by its kind, given the width it takes."""


# ----------------------------------------------------------------------------- JSON


def _layer_to_dict(layer: LayerSpec) -> dict[str, Any]:
    out: dict[str, Any] = {"kind": KIND_OF[type(layer)]}
    for f in fields(layer):
        value = getattr(layer, f.name)
        out[f.name] = [_layer_to_dict(x) for x in value] if f.name == "layers" else value
    return out


def _check_keys(data: object, path: str, known: set[str], required: set[str]) -> None:
    """Every unknown and every missing key of ``data`` at once."""
    require(isinstance(data, Mapping), path or "spec", "must be an object")
    assert isinstance(data, Mapping)
    prefix = f"{path}." if path else ""
    problems = [
        InvalidArgument(f"{prefix}{cut(str(key))}", "unknown field", sorted(known))
        for key in data
        if key not in known
    ]
    problems += [InvalidArgument(f"{prefix}{key}", "is required") for key in sorted(required - set(data))]
    if problems:
        raise InvalidArgument.every(problems)


def _layers_from_list(items: object, path: str) -> tuple[LayerSpec, ...]:
    """The layers of a list, every layer's problems reported together."""
    require(isinstance(items, list), path, "must be a list of layer objects")
    assert isinstance(items, list)
    problems, layers = Problems(), []
    for i, item in enumerate(items):
        with problems.check():
            layers.append(_layer_from_dict(item, f"{path}[{i}]"))
    problems.raise_any()
    return tuple(layers)


def _layer_from_dict(data: Mapping[str, Any], path: str) -> LayerSpec:
    require(isinstance(data, Mapping), path, "must be an object with a 'kind'")
    cls = lookup(LAYER_KINDS, data.get("kind"), f"{path}.kind")  # type: ignore[arg-type]
    names = {f.name for f in fields(cls)}
    required = {f.name for f in fields(cls) if f.default is MISSING}
    _check_keys(data, path, names | {"kind"}, required)
    kwargs = {k: v for k, v in data.items() if k != "kind"}
    if cls is Residual:
        kwargs["layers"] = _layers_from_list(kwargs.get("layers"), f"{path}.layers")
    return cls(**kwargs)
