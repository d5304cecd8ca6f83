"""A model as an ONNX graph that computes what Predict answers, built with onnx's own helpers.

The graph takes ``input`` ``[N, input_dim]`` and gives ``output`` ``[N, outputs]``, both of the
model's dtype; its initializers are the model's arrays under their own names (``"0.W"``,
``"1.running_mean"``), so the file reads like the model. Layer by layer:

==============  ==================================================================================
dense           ``Gemm(x, W, b)``, then the activation
batchnorm       inference mode on the running averages, as the engine computes it:
                ``((x − mean) · 1/√(var + ε)) · γ + β``, then the activation
residual        the inner layers, ``Add(x, f(x))``, then the activation
==============  ==================================================================================

Activations: identity (no node), ``Sigmoid``, ``Tanh``, ``Relu``, ``Softmax`` (over the units of
a row) and leaky relu, ``LeakyRelu`` in float32 and ``Max(z, 0.01·z)`` in float64. The output
layer's activation is the last node: a classifier's output is its probabilities, as Predict's.

Two ONNX operators are not used, on purpose:

- ``BatchNormalization`` takes ε as a float32 attribute (1e-5 becomes 9.99999975e-06 for a
  float64 model), and onnxruntime folds it into ``x·s + (β − mean·s)``, which cancels when the
  running mean is large against the spread: with means near 1000 and variances near 1e-3, its
  outputs were off by 4e-4 (float32) and 5e-10 (float64) relative to their scale. The four
  element-wise nodes round exactly as the engine does.
- ``LeakyRelu`` has no float64 kernel in onnxruntime (1.32), and its slope is a float32
  attribute; ``Max(z, 0.01·z)`` equals ``where(z > 0, z, 0.01·z)`` for a slope below 1.

No gRPC here: the use cases call :func:`to_onnx`, and the servicer streams its bytes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from gradwire.engine import NetworkSpec
from gradwire.engine.activations import LEAKY_SLOPE
from gradwire.engine.spec import BatchNorm, Dense, LayerSpec, Residual

OPSET = 21
"""The ONNX operator set the graph is written in (onnx 1.16, onnxruntime 1.18 and later)."""
IR_VERSION = 10
"""The ONNX IR version of the file (onnx 1.16's)."""
INPUT, OUTPUT = "input", "output"
BATCH = "N"
"""The symbolic name of the row dimension."""
MAX_BYTES = (2 << 30) - (64 << 20)
"""An ONNX model is one protobuf message, which cannot pass 2 GiB: the most bytes of arrays it
may hold, leaving room for the graph."""
COPIES = 4
"""The arrays' bytes :func:`to_onnx` holds at its peak: the arrays, their initializers, the
serialized model and the checker's parse of it."""
ELEMENT_TYPES = {"float32": onnx.TensorProto.FLOAT, "float64": onnx.TensorProto.DOUBLE}


class _Graph:
    """Nodes and initializers as they are added; every value gets a unique, readable name."""

    def __init__(self, dtype: np.dtype[Any], arrays: Mapping[str, np.ndarray]) -> None:
        self.dtype, self.arrays = dtype, arrays
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: dict[str, onnx.TensorProto] = {}
        self._outputs: set[str] = set()

    def array(self, name: str) -> str:
        """The model's array ``name`` as an initializer of that name."""
        if name not in self.initializers:
            value = np.ascontiguousarray(self.arrays[name], self.dtype)
            self.initializers[name] = numpy_helper.from_array(value, name)
        return name

    def constant(self, name: str, value: float) -> str:
        """A scalar of the model's dtype (broadcast by the element-wise nodes)."""
        if name not in self.initializers:
            self.initializers[name] = numpy_helper.from_array(np.array(value, self.dtype), name)
        return name

    def node(self, op: str, inputs: list[str], output: str, **attributes: Any) -> str:
        assert output not in self._outputs, f"{output} named twice"
        assert output not in self.initializers, f"{output} names an initializer"
        self._outputs.add(output)
        self.nodes.append(helper.make_node(op, inputs, [output], name=output, **attributes))
        return output


def _leaky_relu(graph: _Graph, z: str, path: str) -> str:
    if graph.dtype == np.float32:
        return graph.node("LeakyRelu", [z], f"{path}leaky_relu", alpha=LEAKY_SLOPE)
    sloped = graph.node("Mul", [z, graph.constant("leaky_slope", LEAKY_SLOPE)], f"{path}sloped")
    return graph.node("Max", [z, sloped], f"{path}leaky_relu")


def _unary(op: str, **attributes: Any) -> Callable[[_Graph, str, str], str]:
    return lambda graph, z, path: graph.node(op, [z], f"{path}{op.lower()}", **attributes)


ACTIVATIONS: dict[str, Callable[[_Graph, str, str], str]] = {
    "identity": lambda graph, z, path: z,
    "sigmoid": _unary("Sigmoid"),
    "tanh": _unary("Tanh"),
    "relu": _unary("Relu"),
    "leaky_relu": _leaky_relu,
    "softmax": _unary("Softmax", axis=1),
}
"""The nodes of each activation of :data:`gradwire.engine.ACTIVATIONS`, by name: value in, value out."""


def _dense(graph: _Graph, layer: Dense, x: str, path: str) -> str:
    z = graph.node("Gemm", [x, graph.array(f"{path}W"), graph.array(f"{path}b")], f"{path}z")
    return ACTIVATIONS[layer.activation](graph, z, path)


def _batchnorm(graph: _Graph, layer: BatchNorm, x: str, path: str) -> str:
    """``((x − mean) · 1/√(var + ε)) · γ + β``: the engine's inference mode, node for node."""
    shifted = graph.node(
        "Add",
        [graph.array(f"{path}running_var"), graph.constant(f"{path}epsilon", layer.epsilon)],
        f"{path}var_eps",
    )
    std = graph.node("Sqrt", [shifted], f"{path}std")
    inv_std = graph.node("Div", [graph.constant("one", 1.0), std], f"{path}inv_std")
    centred = graph.node("Sub", [x, graph.array(f"{path}running_mean")], f"{path}centred")
    xhat = graph.node("Mul", [centred, inv_std], f"{path}xhat")
    scaled = graph.node("Mul", [xhat, graph.array(f"{path}gamma")], f"{path}scaled")
    y = graph.node("Add", [scaled, graph.array(f"{path}beta")], f"{path}y")
    return ACTIVATIONS[layer.activation](graph, y, path)


def _residual(graph: _Graph, layer: Residual, x: str, path: str) -> str:
    h = _layers(graph, tuple(layer.layers), x, path)
    total = graph.node("Add", [x, h], f"{path}sum")
    return ACTIVATIONS[layer.activation](graph, total, path)


def _layers(graph: _Graph, layers: tuple[LayerSpec, ...], x: str, prefix: str) -> str:
    for i, layer in enumerate(layers):
        path = f"{prefix}{i}."
        if isinstance(layer, Dense):
            x = _dense(graph, layer, x, path)
        elif isinstance(layer, BatchNorm):
            x = _batchnorm(graph, layer, x, path)
        else:
            x = _residual(graph, layer, x, path)
    return x


def to_onnx(
    spec: Mapping[str, Any], arrays: Mapping[str, np.ndarray], metadata: Mapping[str, str] | None = None
) -> bytes:
    """The serialized ONNX model of a network of ``spec`` (the engine's JSON form) holding
    ``arrays`` (its parameters and buffers by name), checked by ``onnx.checker`` (shape inference
    included). The spec's JSON goes into the file's metadata properties as ``gradwire.spec``,
    beside ``metadata``."""
    network = NetworkSpec.from_dict(spec)
    graph = _Graph(np.dtype(network.dtype), arrays)
    last = _layers(graph, tuple(network.layers), INPUT, "")
    graph.node("Identity", [last], OUTPUT)
    element = ELEMENT_TYPES[network.dtype]
    model = helper.make_model(
        helper.make_graph(
            graph.nodes,
            "gradwire",
            [helper.make_tensor_value_info(INPUT, element, [BATCH, network.input_dim])],
            [helper.make_tensor_value_info(OUTPUT, element, [BATCH, network.output_dim])],
            initializer=list(graph.initializers.values()),
        ),
        opset_imports=[helper.make_opsetid("", OPSET)],
        ir_version=IR_VERSION,
        producer_name="gradwire",
        doc_string=f"A gradwire model: outputs as Predict answers them (loss {network.loss}).",
    )
    helper.set_model_props(model, {"gradwire.spec": network.to_json(), **(metadata or {})})
    data = model.SerializeToString()
    onnx.checker.check_model(data, full_check=True)  # the bytes: no second serialization
    return data
