"""The integer-only forward of an exported graph: what the NPU computes, code for code.

Activations between layers are stored in their format's integer type (uint8 or int8);
ops widen to int32 only inside (int8 x int8 products accumulated in int32, fixed-point
rescaling by ``numerics.requantize``, one rounding half away from zero). Each op's
arithmetic is ``quant.integer_ops``, the same kernels the fake-quant forward runs. The two input
nodes are the only float operations: they normalise the image, encode the LiDAR and
quantize both by calling the compiled function the fake-quant evaluation calls
(``models.layers.input_codes``). Everything after them (``run_codes``) is integer;
tests/test_export.py checks the jaxpr.

``make_integer_forward`` compiles one graph as an NPU compiler does: its integer
parameters are constants of the program, which XLA folds into it (every multiplier and
shift among them); on XLA:CPU that makes the integer forward faster than the FP32 one
(``bench/integer.py``). Each graph compiles once (``run_codes`` itself takes the
parameters as arguments).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxdepth.encodings import LidarEncoding
from jaxdepth.export.graph import Graph
from jaxdepth.models.layers import input_codes
from jaxdepth.quant import integer_ops as iops
from jaxdepth.quant import numerics as qn

Codes = dict[str, jax.Array]
Params = dict[str, dict[str, Any]]
_STORAGE = {"uint8": jnp.uint8, "int8": jnp.int8}


def storage_dtype(fmt: qn.Format) -> np.dtype:
    """The integer type that holds a format's codes."""
    return np.dtype(_STORAGE[fmt.name])


@dataclass(frozen=True)
class Step:
    op: str
    name: str
    inputs: tuple[str, ...]
    attrs: tuple[tuple[str, Any], ...]
    fmt: qn.Format                  # output format

    def attr(self, key: str, default: Any = None) -> Any:
        return dict(self.attrs).get(key, default)


@dataclass(frozen=True)
class Program:
    """The static part of a graph: its steps in order and the output."""

    steps: tuple[Step, ...]
    output: str

    @classmethod
    def of(cls, graph: Graph) -> "Program":
        if len(graph.outputs) != 1:
            raise ValueError(f"expected one head output, the graph has {graph.outputs}")
        steps = tuple(Step(n.op, n.output, tuple(n.inputs), tuple(sorted(n.attrs.items())),
                           graph.tensors[n.output].fmt) for n in graph.nodes)
        return cls(steps, graph.outputs[0])


def integer_params(graph: Graph) -> Params:
    """The arrays the integer forward reads: each node's integer parameters (the float
    scales stored beside them are metadata for other toolchains), a conv's per-channel
    sum of weight codes (its zero-point term, summed here once: left to XLA's constant
    folding, that reduction took most of the default model's compile time) and every
    tensor's zero point."""
    nodes = {n.name: {k: v for k, v in n.int_params.items() if v.dtype.kind in "iu"}
             for n in graph.nodes if n.int_params}
    for n in graph.nodes:
        if n.op == "conv":
            nodes[n.name]["weight_sum"] = n.int_params["weight"].astype(np.int32).sum(axis=(0, 1, 2))
    zero_points = {name: np.int32(t.zero_point) for name, t in graph.tensors.items()}
    return {"nodes": nodes, "zero_points": zero_points}


def _store(x: jax.Array, fmt: qn.Format) -> jax.Array:
    """Clamped int32 codes -> the format's storage type."""
    return x.astype(_STORAGE[fmt.name])


def _conv(step: Step, p: dict, x: jax.Array, x_fmt: qn.Format, x_zp, out_zp) -> jax.Array:
    """sum((x - zp) * w) + bias, requantized. Zero-point folding keeps the products int8:
    with x8 = x - 128 (uint8 codes) the sum is conv(x8, w) + (128 - zp) * sum(w), and
    padding x8 with zp - 128 is padding x with its zero point (a real 0)."""
    offset = 128 if x_fmt.name == "uint8" else 0
    pad, s = step.attr("padding"), step.attr("stride")
    x8 = (x.astype(jnp.int32) - offset).astype(jnp.int8)
    x8 = jax.lax.pad(x8, (x_zp - offset).astype(jnp.int8), ((0, 0, 0), (pad, pad, 0), (pad, pad, 0), (0, 0, 0)))
    acc = iops.int8_conv_accumulate(x8, p["weight"], (s, s))
    acc = acc + (offset - x_zp) * p["weight_sum"]
    return _store(iops.conv_output(acc, p["bias"], (p["multiplier"], p["shift"]), out_zp, step.fmt,
                                   step.attr("relu")), step.fmt)


def _multipliers(p: dict, n: int) -> list[iops.Multiplier]:
    return [(p[f"input{i}_multiplier"], p[f"input{i}_shift"]) for i in range(n)]


def _sum(step: Step, p: dict, xs: list[jax.Array], zps: list, out_zp) -> jax.Array:
    """add / fusion: inputs (times int8 coefficients) shifted left, rescaled to a common
    scale, summed, rescaled to the output, plus bias codes and the zero point."""
    terms = []
    for i, (x, zp) in enumerate(zip(xs, zps)):
        term = x.astype(jnp.int32) - zp
        terms.append(term * p[f"coeff{i}"].astype(jnp.int32) if f"coeff{i}" in p else term)
    y = iops.sum_output(terms, step.attr("left_shift"), _multipliers(p, len(xs)),
                        (p["output_multiplier"], p["output_shift"]), out_zp, step.fmt,
                        bool(step.attr("relu")), p.get("bias"))
    return _store(y, step.fmt)


def _concat(step: Step, p: dict, xs: list[jax.Array], zps: list, out_zp) -> jax.Array:
    terms = [x.astype(jnp.int32) - zp for x, zp in zip(xs, zps)]
    return _store(iops.concat_output(terms, _multipliers(p, len(xs)), out_zp, step.fmt), step.fmt)


def _apply(step: Step, p: dict, xs: list[jax.Array], in_fmts: list[qn.Format], zps: list,
           out_zp) -> jax.Array:
    op = step.op
    if op == "conv":
        return _conv(step, p, xs[0], in_fmts[0], zps[0], out_zp)
    if op in ("add", "fusion"):
        return _sum(step, p, xs, zps, out_zp)
    if op == "concat":
        return _concat(step, p, xs, zps, out_zp)
    if op == "max_pool":
        return iops.max_pool(xs[0], step.attr("window"), step.attr("stride"), step.attr("padding"),
                             step.fmt)
    if op == "upsample":
        return iops.upsample(xs[0], step.attr("factor"))
    if op == "split":
        c = step.attr("channel")
        return xs[0][..., c:c + 1]
    if op == "sigmoid":
        return iops.lookup(p["table"], xs[0], in_fmts[0])
    raise ValueError(f"integer forward: unsupported op {op!r} ({step.name})")


def quantize_inputs(program: Program, rgb: jax.Array, lidar: jax.Array | None) -> Codes:
    """The float prologue: (B, H, W, 3) image in [0, 1] and (B, H, W) LiDAR metres (0 = no
    return) to input codes, by ``models.layers.input_codes``, the computation fake-quant
    evaluation uses, so both start from the same codes."""
    steps = {s.op: s for s in program.steps if s.op.startswith("input")}
    rgb_step, sparse_step = steps["input_rgb"], steps.get("input_sparse")
    lidar_encoding = LidarEncoding.from_attrs(dict(sparse_step.attrs)) if sparse_step else None
    q_rgb, q_sparse = input_codes(rgb, None if sparse_step is None else lidar, rgb_step.fmt,
                                  lidar_encoding)
    codes = {rgb_step.name: q_rgb.codes.astype(_STORAGE[rgb_step.fmt.name])}
    if sparse_step is not None:
        codes[sparse_step.name] = q_sparse.codes.astype(_STORAGE[sparse_step.fmt.name])
    return codes


def run_codes(program: Program, params: Params, inputs: Codes) -> Codes:
    """Integer codes of every tensor, from the input codes (integer operations only)."""
    codes, fmts = dict(inputs), {s.name: s.fmt for s in program.steps}
    zps = params["zero_points"]
    for step in program.steps:
        if step.op.startswith("input"):
            continue
        codes[step.name] = _apply(step, params["nodes"].get(step.name, {}),
                                  [codes[i] for i in step.inputs], [fmts[i] for i in step.inputs],
                                  [zps[i] for i in step.inputs], zps[step.name])
    return codes


def _compiled(graph: Graph, every: bool) -> Callable[[jax.Array, jax.Array | None], Any]:
    program, params = Program.of(graph), integer_params(graph)

    @jax.jit
    def forward(rgb: jax.Array, lidar: jax.Array | None):
        codes = run_codes(program, params, quantize_inputs(program, rgb, lidar))
        return codes if every else codes[program.output]

    return forward


def make_input_codes(graph: Graph) -> Callable[[jax.Array, jax.Array | None], Codes]:
    """``(rgb, lidar) -> {input name: codes}``, the integer forward's own inputs."""
    return functools.partial(quantize_inputs, Program.of(graph))


def make_integer_forward(graph: Graph) -> Callable[[jax.Array, jax.Array | None], jax.Array]:
    """``(rgb, lidar) -> head codes`` uint8 (B, H, W, C), any batch size, with the graph's
    integer parameters compiled in; a monocular graph ignores ``lidar``.
    Depth in metres is ``encoding.decode(codes / 255)``.
    """
    return _compiled(graph, every=False)


def make_intermediates(graph: Graph) -> Callable[[jax.Array, jax.Array | None], Codes]:
    """``(rgb, lidar) -> {tensor name: codes}``: every layer's output, to find where two
    implementations start to disagree."""
    return _compiled(graph, every=True)
