"""The exported graph: a layer list recorded from the model itself.

Running the Flax model with ``Quant(mode="export")`` inside ``record()`` makes every
block append one ``Node`` instead of computing: its op, the names of its inputs, the
quantization parameters of its output, and its parameters in two forms, float (BN
folded, for FP32 runtimes such as ONNX) and integer (int8 weights, int32 biases,
fixed-point requantization multipliers). The integer parameters are derived by the
functions the fake-quant forward uses (``quant.integer_ops``), and that forward computes
its codes with the integer runtime's own kernels, so the integer graph is the fake-quant
graph by construction.

Ops (NHWC): ``input_rgb``, ``input_sparse``, ``split``, ``conv``, ``add``, ``fusion``,
``concat``, ``max_pool``, ``upsample``, ``sigmoid``. ``docs/export_format.md`` gives each
op's attributes, parameters and integer semantics.
"""
from __future__ import annotations

import contextlib
import contextvars
from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np

from jaxdepth.quant.numerics import Format


@dataclass
class SymTensor:
    """A tensor of the graph being recorded: a name, a shape and its quantization."""

    name: str
    shape: tuple[int, ...]
    scale: float
    zero_point: int
    fmt: Format


@dataclass
class Node:
    op: str
    name: str
    inputs: list[str]
    output: str
    attrs: dict[str, Any] = field(default_factory=dict)
    float_params: dict[str, np.ndarray] = field(default_factory=dict)
    int_params: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass
class Graph:
    nodes: list[Node] = field(default_factory=list)
    tensors: dict[str, SymTensor] = field(default_factory=dict)
    inputs: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)

    def add(self, op: str, name: str, inputs: list[SymTensor], shape: tuple[int, ...],
            scale: float, zero_point: int, fmt: Format, attrs: dict | None = None,
            float_params: dict | None = None, int_params: dict | None = None) -> SymTensor:
        if name in self.tensors:
            raise ValueError(f"duplicate graph tensor {name!r}")
        out = SymTensor(name, tuple(int(s) for s in shape), float(scale), int(zero_point), fmt)
        self.tensors[name] = out
        self.nodes.append(Node(op, name, [t.name for t in inputs], name, attrs or {},
                               {k: np.asarray(v) for k, v in (float_params or {}).items()},
                               {k: np.asarray(v) for k, v in (int_params or {}).items()}))
        if op.startswith("input"):
            self.inputs.append(name)
        return out


_CURRENT: contextvars.ContextVar[Graph | None] = contextvars.ContextVar("graph", default=None)


@contextlib.contextmanager
def record() -> Iterator[Graph]:
    """Collects the nodes appended by blocks running in ``export`` mode."""
    graph = Graph()
    token = _CURRENT.set(graph)
    try:
        yield graph
    finally:
        _CURRENT.reset(token)


def current() -> Graph:
    graph = _CURRENT.get()
    if graph is None:
        raise RuntimeError("export-mode blocks must run inside jaxdepth.export.graph.record()")
    return graph


def node_name(module) -> str:
    """A module's path, e.g. ``encoder/layer1_0/conv1``."""
    return "/".join(module.scope.path)
