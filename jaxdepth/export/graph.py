"""The exported graph: a layer list with integer and float parameters.

``export.exporter`` builds it from one fake-quant forward: the ops and attributes the
blocks declare, the tensors they exchange, and the integer parameters they derived
(``quant.freeze``). Each node carries its parameters in two forms, integer (int8
weights, int32 biases, fixed-point requantization multipliers, lookup tables) for the
integer runtime and the NPU, and float (BN folded) for FP32 runtimes such as ONNX.

Ops (NHWC): ``input_rgb``, ``input_sparse``, ``split``, ``conv``, ``add``, ``fusion``,
``concat``, ``max_pool``, ``upsample``, ``sigmoid``. ``docs/export_format.md`` gives each
op's attributes, parameters and integer semantics. The output is the head: a ``sigmoid``,
or the ``fusion`` of a linear head over the LiDAR fill.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from jaxdepth.quant.numerics import Format


@dataclass
class TensorSpec:
    """A tensor of the graph: its name, shape and quantization."""

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
    tensors: dict[str, TensorSpec] = field(default_factory=dict)
    inputs: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)

    def add(self, node: Node, out: TensorSpec) -> None:
        if out.name in self.tensors:
            raise ValueError(f"duplicate graph tensor {out.name!r}")
        self.tensors[out.name] = out
        self.nodes.append(node)
        if node.op.startswith("input"):
            self.inputs.append(out.name)

    def mark_outputs(self) -> None:
        """The graph's outputs: the tensors no node reads (the head)."""
        read = {i for node in self.nodes for i in node.inputs}
        self.outputs = [node.output for node in self.nodes if node.output not in read]
