"""ONNX models of an exported graph: FP32 (NPU op set), INT8 QDQ (jaxdepth's scales) and
integer (the export format's integer arithmetic in ONNX integer ops).

All are NCHW with a free batch dimension. Inputs of the FP32 and QDQ models:

* ``rgb`` (N, 3, H, W) in [0, 1]; the normalisation (x - mean) / std is in the graph as a
  Mul and an Add by (1, 3, 1, 1) constants.
* ``sparse`` (N, C, H, W): the LiDAR already encoded as [nearness, valid mask] (and the
  nearest-return fill, C = 3) by the graph's ``LidarEncoding`` (0 where there is no return). The encoding needs a division
  or a log and a comparison, outside the NPU op set, so it runs on the host
  (``sparse_input``).

The integer model (and the QDQ model with ``code_inputs``) takes the input codes instead
(``code_feeds``). Outputs are named after the head channels (``depth_log``; ``int`` and
``frac`` for the integer/fraction encoding, split from the 2-channel head), each
(N, 1, H, W); the LiDAR graph of linear heads over the fill outputs ``fill_correction``,
the correction z to which the host adds its fill (``encodings.output_decoder``), or its
phase copies ``fill_correction_0`` ... (``model.correction_phases``). The FP32
model outputs the head values (a sigmoid's in [0, 1]; z unclipped); the INT8 models output
the uint8 codes (a sigmoid head's value = code / 255), comparable code for code with
``integer.make_integer_forward``.

The FP32 model uses only Conv (explicit symmetric pads), Relu, MaxPool, Add, Mul,
Concat, Slice, Split, Resize (nearest, x2) and Sigmoid, and Clip where
``model.activation_cap`` bounds a block; no Reshape or Flatten.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from jaxdepth.export.artifact import output_names
from jaxdepth.export.graph import Graph, Node
from jaxdepth.export.integer import integer_params, make_input_codes
from jaxdepth.encodings import LidarEncoding
from jaxdepth.quant import numerics as qn

OPSET = 13
NPU_OPS = frozenset({"Conv", "Relu", "Clip", "MaxPool", "Add", "Mul", "Concat", "Slice", "Split",
                     "Resize", "Sigmoid"})
_ELEM = {"uint8": TensorProto.UINT8, "int8": TensorProto.INT8}


class _Builder:
    """Collects nodes, initializers and the graph inputs."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.inputs: list[onnx.ValueInfoProto] = []

    def const(self, name: str, value: np.ndarray) -> str:
        self.inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def node(self, op: str, inputs: list[str], outputs: list[str], name: str, **attrs) -> None:
        self.nodes.append(helper.make_node(op, inputs, outputs, name=name, **attrs))

    def input(self, graph: Graph, name: str, elem: int) -> None:
        _, h, w, c = graph.tensors[name].shape
        self.inputs.append(helper.make_tensor_value_info(name, elem, ["N", c, h, w]))

    def model(self, outputs: list[onnx.ValueInfoProto], name: str) -> onnx.ModelProto:
        g = helper.make_graph(self.nodes, name, self.inputs, outputs, self.inits)
        model = helper.make_model(g, opset_imports=[helper.make_opsetid("", OPSET)],
                                  producer_name="jaxdepth")
        onnx.checker.check_model(model)
        return model


def _channel(v: np.ndarray) -> np.ndarray:
    """(C,) -> (1, C, 1, 1), the NPU's per-channel constant layout."""
    return np.asarray(v).reshape(1, -1, 1, 1)


def _oihw(w: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.transpose(w, (3, 2, 0, 1)))


def _normalise(b: _Builder, node: Node, out: str) -> None:
    """(x - mean) / std as x * (1 / std) + (-mean / std)."""
    mean, std = node.attrs["mean"], node.attrs["std"]
    scaled = f"{node.name}/scaled"
    b.node("Mul", [node.name, b.const(f"{node.name}/inv_std", np.full((1, 3, 1, 1), 1.0 / std, np.float32))],
           [scaled], f"{node.name}/mul")
    b.node("Add", [scaled, b.const(f"{node.name}/offset", np.full((1, 3, 1, 1), -mean / std, np.float32))],
           [out], f"{node.name}/add")


def _structural(b: _Builder, node: Node, xs: list[str], out: str) -> bool:
    """Emits the ops whose FP32 and QDQ forms are the same; False for the others."""
    a, n = node.attrs, node.name
    if node.op == "split":
        c = a["channel"]
        b.node("Slice", [xs[0], b.const(f"{n}/starts", np.array([c], np.int64)),
                         b.const(f"{n}/ends", np.array([c + 1], np.int64)),
                         b.const(f"{n}/axes", np.array([1], np.int64))], [out], n)
    elif node.op == "max_pool":
        p = a["padding"]
        b.node("MaxPool", xs, [out], n, kernel_shape=[a["window"]] * 2, strides=[a["stride"]] * 2,
               pads=[p] * 4)
    elif node.op == "upsample":
        f = float(a["factor"])
        b.node("Resize", [xs[0], "", b.const(f"{n}/scales", np.array([1, 1, f, f], np.float32))], [out], n,
               mode="nearest", coordinate_transformation_mode="asymmetric", nearest_mode="floor")
    elif node.op == "concat":
        b.node("Concat", xs, [out], n, axis=1)
    else:
        return False
    return True


def _activation(b: _Builder, y: str, out: str, name: str, relu: bool, cap: float) -> None:
    """``y`` through the block's ReLU and cap into ``out``: Relu, or Clip where
    ``model.activation_cap`` bounds the block (ReLU-N; the INT8 models' codes saturate
    there, at the end of the tensor's range)."""
    if cap:
        lo = b.const(f"{name}/clip_min", np.float32(0)) if relu else ""
        b.node("Clip", [y, lo, b.const(f"{name}/clip_max", np.float32(cap))], [out], f"{name}/clip")
    elif relu:
        b.node("Relu", [y], [out], f"{name}/relu")


def _conv(b: _Builder, node: Node, x: str, w: str, bias: str, out: str) -> None:
    a, n = node.attrs, node.name
    relu, cap = a["relu"], a.get("cap", 0)
    y = f"{n}/conv" if relu or cap else out
    b.node("Conv", [x, w, bias], [y], n, kernel_shape=[a["kernel"]] * 2, strides=[a["stride"]] * 2,
           pads=[a["padding"]] * 4)
    if relu or cap:
        _activation(b, y, out, n, relu, cap)


def _add(b: _Builder, name: str, xs: list[str], out: str, relu: bool, cap: float) -> str:
    """Sum (+ ReLU, cap) into ``out``; returns the tensor holding the result (the input
    itself for a one-input sum, which in the integer graph is only a requantization)."""
    if len(xs) == 1 and not relu and not cap:
        return xs[0]
    acc = xs[0]
    for i, x in enumerate(xs[1:], 1):
        y = out if i == len(xs) - 1 and not relu and not cap else f"{name}/sum{i}"
        b.node("Add", [acc, x], [y], f"{name}/add{i}")
        acc = y
    if relu or cap:
        _activation(b, acc, out, name, relu, cap)
    return out


def _fusion(b: _Builder, n: str, xs: list[str], gates: list[str], bias: str, out: str, cap: float) -> None:
    """gate_rgb * rgb + gate_sparse * sparse + bias, per channel (+ cap)."""
    for i in range(2):
        b.node("Mul", [xs[i], gates[i]], [f"{n}/mul{i}"], f"{n}/mul{i}")
    b.node("Add", [f"{n}/mul0", f"{n}/mul1"], [f"{n}/mixed"], f"{n}/add")
    b.node("Add", [f"{n}/mixed", bias], [f"{n}/biased" if cap else out], f"{n}/add_bias")
    if cap:
        _activation(b, f"{n}/biased", out, n, False, cap)


def _head_tensor(graph: Graph, encoding: str) -> str:
    """Where the head's last op writes: a 1-channel head's output name itself."""
    names = output_names(graph, encoding)
    return names[0] if len(names) == 1 else graph.outputs[0]


def _outputs(b: _Builder, graph: Graph, encoding: str, elem: int) -> list[onnx.ValueInfoProto]:
    """Splits a multi-channel head into its named channels; the output declarations."""
    names = output_names(graph, encoding)
    if len(names) > 1:
        head = graph.outputs[0]
        b.node("Split", [head, b.const(f"{head}/split", np.ones(len(names), np.int64))], list(names),
               f"{head}/split", axis=1)
    h, w = graph.tensors[graph.outputs[0]].shape[1:3]
    return [helper.make_tensor_value_info(nm, elem, ["N", 1, h, w]) for nm in names]


def to_fp32(graph: Graph, encoding: str) -> onnx.ModelProto:
    """The FP32 model from the graph's BN-folded float parameters."""
    b = _Builder()
    name = {t: t for t in graph.tensors}
    head = _head_tensor(graph, encoding)
    for node in graph.nodes:
        n, fp = node.name, node.float_params
        xs = [name[i] for i in node.inputs]
        if node.op.startswith("input"):
            b.input(graph, n, TensorProto.FLOAT)
            if node.op == "input_rgb":
                name[n] = f"{n}/normalised"
                _normalise(b, node, name[n])
        elif _structural(b, node, xs, n):
            continue
        elif node.op == "conv":
            _conv(b, node, xs[0], b.const(f"{n}/weight", _oihw(fp["weight"]).astype(np.float32)),
                  b.const(f"{n}/bias", fp["bias"].astype(np.float32)), head if n in graph.outputs else n)
        elif node.op == "add":
            name[n] = _add(b, n, xs, n, node.attrs["relu"], node.attrs.get("cap", 0))
        elif node.op == "fusion":
            gates = [b.const(f"{n}/{g}", _channel(fp[g]).astype(np.float32)) for g in ("gate_rgb", "gate_sparse")]
            _fusion(b, n, xs, gates, b.const(f"{n}/bias", _channel(fp["bias"]).astype(np.float32)),
                    head if n in graph.outputs else n, node.attrs.get("cap", 0))
        elif node.op == "sigmoid":
            b.node("Sigmoid", xs, [head], n)
        else:
            raise ValueError(f"ONNX export: unsupported op {node.op!r} ({n})")
    return b.model(_outputs(b, graph, encoding, TensorProto.FLOAT), "jaxdepth_fp32")


def _dq_const(b: _Builder, name: str, codes: np.ndarray, scale: np.ndarray, uint8: bool = False) -> str:
    """DequantizeLinear of constant codes, zero point 0 (per output channel, axis 0, when
    ``scale`` is a vector). ``uint8`` stores int8 codes as code + 128 with zero point 128:
    the same real values."""
    scale = np.asarray(scale, np.float32)
    zero = np.zeros(scale.shape, codes.dtype)
    if uint8:
        codes, zero = (codes.astype(np.int32) + 128).astype(np.uint8), np.full(scale.shape, 128, np.uint8)
    inputs = [b.const(f"{name}/codes", codes), b.const(f"{name}/scale", scale)]
    if codes.dtype != np.int32:
        inputs.append(b.const(f"{name}/zero_point", zero))
    b.node("DequantizeLinear", inputs, [name], f"{name}/dequantize", **({"axis": 0} if scale.ndim else {}))
    return name


def to_qdq(graph: Graph, encoding: str, weights: str = "int8", code_inputs: bool = False) -> onnx.ModelProto:
    """The INT8 QDQ model: every graph tensor is quantized with jaxdepth's scale and zero
    point (QuantizeLinear) and dequantized for its consumers; conv weights int8 (per
    tensor or per output channel), conv biases int32 at input x weight scale, fusion gates
    int8, fusion biases int32 at the output scale. The outputs are the uint8 head codes.

    ``weights="uint8"`` stores each weight code w as w + 128, zero point 128: the same
    weights, for x86 CPUs without VNNI, where onnxruntime's u8 x s8 kernels add pairs of
    products in saturating int16. ``code_inputs`` makes the inputs the quantized codes
    (``quantize_inputs``): an integer runtime compared from the same first integers.
    """
    if weights not in ("int8", "uint8"):
        raise ValueError(f"weights must be 'int8' or 'uint8', got {weights!r}")
    b = _Builder()
    dq: dict[str, str] = {}
    consts: dict[str, str] = {}
    head = _head_tensor(graph, encoding)
    u8 = weights == "uint8"

    def qparams(t: str) -> list[str]:
        tensor = graph.tensors[t]
        if f"{t}/scale" not in consts:
            zero = np.array(tensor.zero_point, np.uint8 if tensor.fmt.name == "uint8" else np.int8)
            consts.update({f"{t}/scale": b.const(f"{t}/scale", np.float32(tensor.scale)),
                           f"{t}/zero_point": b.const(f"{t}/zero_point", zero)})
        return [consts[f"{t}/scale"], consts[f"{t}/zero_point"]]

    def dequantize(t: str, codes: str) -> None:
        dq[t] = f"{t}/dq"
        b.node("DequantizeLinear", [codes] + qparams(t), [dq[t]], f"{t}/dequantize")

    for node in graph.nodes:
        n, p = node.name, node.int_params
        xs = [dq.get(i, "") for i in node.inputs]
        f = f"{n}/f"
        if node.op.startswith("input") and code_inputs:
            b.input(graph, n, _ELEM[graph.tensors[n].fmt.name])
            dequantize(n, n)
            continue
        if node.op.startswith("input"):
            b.input(graph, n, TensorProto.FLOAT)
            if node.op == "input_rgb":
                _normalise(b, node, f)
            else:
                f = n
        elif _structural(b, node, xs, f):
            pass
        elif node.op == "conv":
            acc_scale = np.float32(graph.tensors[node.inputs[0]].scale) * p["weight_scale"]
            w = _dq_const(b, f"{n}/weight", _oihw(p["weight"]), p["weight_scale"], u8)
            _conv(b, node, xs[0], w, _dq_const(b, f"{n}/bias", p["bias"], acc_scale), f)
        elif node.op == "add":
            f = _add(b, n, xs, f, node.attrs["relu"], node.attrs.get("cap", 0))
        elif node.op == "fusion":
            gates = [_dq_const(b, f"{n}/coeff{i}", _channel(p[f"coeff{i}"]), p[f"coeff{i}_scale"])
                     for i in range(2)]
            out_scale = np.float32(graph.tensors[n].scale)
            _fusion(b, n, xs, gates, _dq_const(b, f"{n}/bias", _channel(p["bias"]), out_scale), f,
                    node.attrs.get("cap", 0))
        elif node.op == "sigmoid":
            b.node("Sigmoid", xs, [f], n)
        else:
            raise ValueError(f"ONNX export: unsupported op {node.op!r} ({n})")
        codes = head if n in graph.outputs else f"{n}/q"
        b.node("QuantizeLinear", [f] + qparams(n), [codes], f"{n}/quantize")
        if n not in graph.outputs:
            dequantize(n, codes)
    return b.model(_outputs(b, graph, encoding, TensorProto.UINT8), "jaxdepth_qdq")


class _IntegerBuilder(_Builder):
    """Integer arithmetic with standard ONNX ops: int64 tensors, exact products."""

    def int64(self, name: str, value) -> str:
        return self.const(name, np.asarray(value, np.int64))

    def cast(self, x: str, to: int, out: str) -> str:
        self.node("Cast", [x], [out], f"{out}/cast", to=to)
        return out

    def minus(self, x: str, offset: int, out: str) -> str:
        """int64 ``code - offset`` of a stored tensor (offset: its zero point, or the
        format's qmin for a table index)."""
        wide = self.cast(x, TensorProto.INT64, f"{out}/wide")
        self.node("Sub", [wide, self.int64(f"{out}/offset", offset)], [out], f"{out}/sub")
        return out

    def requantize(self, acc: str, m, shift, out: str) -> str:
        """``numerics.requantize``: sign(acc) * floor((|acc| * m + 2**(t - 1)) / 2**t),
        t = 31 + shift (per channel when ``m`` is a vector); |acc| * m < 2**62."""
        t = qn.MULTIPLIER_BITS + np.asarray(shift, np.int64)
        shape = (1, -1, 1, 1) if np.ndim(m) else ()
        const = lambda suffix, v: self.int64(f"{out}/{suffix}", np.reshape(v, shape))
        for op, ins, res in (("Abs", [acc], "abs"), ("Sign", [acc], "sign"),
                             ("Mul", [f"{out}/abs", const("m", m)], "prod"),
                             ("Add", [f"{out}/prod", const("half", np.left_shift(1, t - 1))], "rounded"),
                             ("Div", [f"{out}/rounded", const("div", np.left_shift(1, t))], "mag")):
            self.node(op, ins, [f"{out}/{res}"], f"{out}/{res}")
        self.node("Mul", [f"{out}/sign", f"{out}/mag"], [out], f"{out}/signed")
        return out

    def store(self, y: str, zero_point: int, fmt: qn.Format, relu: bool, out: str) -> str:
        """``y`` + zero point, clamped (at the zero point after a ReLU), cast to storage."""
        lo = zero_point if relu else fmt.qmin
        self.node("Add", [y, self.int64(f"{out}/out_zp", zero_point)], [f"{out}/shifted"], f"{out}/add_zp")
        self.node("Max", [f"{out}/shifted", self.int64(f"{out}/lo", lo)], [f"{out}/above"], f"{out}/max")
        self.node("Min", [f"{out}/above", self.int64(f"{out}/hi", fmt.qmax)], [f"{out}/clamped"], f"{out}/min")
        return self.cast(f"{out}/clamped", _ELEM[fmt.name], out)


def to_integer(graph: Graph, encoding: str) -> onnx.ModelProto:
    """The integer model: the exported integer arithmetic (``docs/export_format.md``)
    written with standard ONNX integer ops, for an integer runtime independent of JAX.

    Inputs are the input codes (``code_feeds``: the NPU, too, receives quantized
    inputs); outputs are the uint8 head codes. Convolutions are ``ConvInteger`` on uint8
    (int8 codes are stored as code + 128 with a zero point 128 higher, the same integers)
    after an explicit ``Pad`` with the input's zero point; requantization, sums and clamps
    are int64 ``Mul``/``Add``/``Div``/``Max``/``Min``, exact for every int32 accumulator;
    the head's sigmoid is a ``Gather`` from its table.
    """
    b = _IntegerBuilder()
    tensors, head = graph.tensors, _head_tensor(graph, encoding)
    params = integer_params(graph)

    def as_uint8(t: str, out: str) -> tuple[str, int]:
        """A stored tensor as uint8 codes and their zero point."""
        zp = int(tensors[t].zero_point)
        if tensors[t].fmt.name == "uint8":
            return t, zp
        shifted = b.int64(f"{out}/128", 128)
        b.node("Add", [b.cast(t, TensorProto.INT64, f"{out}/wide"), shifted], [f"{out}/u"], f"{out}/to_u")
        return b.cast(f"{out}/u", TensorProto.UINT8, out), zp + 128

    for node in graph.nodes:
        n, a, p = node.name, node.attrs, params["nodes"].get(node.name, {})
        out = head if n in graph.outputs else n
        fmt, zp = tensors[n].fmt, int(tensors[n].zero_point)
        if node.op.startswith("input"):
            b.input(graph, n, _ELEM[fmt.name])
        elif node.op != "concat" and _structural(b, node, node.inputs, out):
            pass
        elif node.op == "conv":
            x, x_zp = as_uint8(node.inputs[0], f"{n}/x")
            pad = a["padding"]
            b.node("Pad", [x, b.int64(f"{n}/pads", [0, 0, pad, pad, 0, 0, pad, pad]),
                           b.const(f"{n}/x_zp", np.uint8(x_zp))], [f"{n}/padded"], f"{n}/pad")
            w = (_oihw(p["weight"]).astype(np.int32) + 128).astype(np.uint8)
            b.node("ConvInteger", [f"{n}/padded", b.const(f"{n}/w", w), f"{n}/x_zp",
                                   b.const(f"{n}/w_zp", np.uint8(128))], [f"{n}/acc32"], n,
                   kernel_shape=[a["kernel"]] * 2, strides=[a["stride"]] * 2)
            acc = b.cast(f"{n}/acc32", TensorProto.INT64, f"{n}/acc")
            b.node("Add", [acc, b.int64(f"{n}/bias", _channel(p["bias"]))], [f"{n}/biased"], f"{n}/add_bias")
            b.requantize(f"{n}/biased", p["multiplier"], p["shift"], f"{n}/y")
            b.store(f"{n}/y", zp, fmt, a["relu"], out)
        elif node.op in ("add", "fusion", "concat"):
            terms = []
            for i, t in enumerate(node.inputs):
                term = b.minus(t, int(tensors[t].zero_point), f"{n}/term{i}")
                if f"coeff{i}" in p:
                    b.node("Mul", [term, b.int64(f"{n}/coeff{i}", _channel(p[f"coeff{i}"]))],
                           [f"{n}/weighted{i}"], f"{n}/weighted{i}")
                    term = f"{n}/weighted{i}"
                if node.op != "concat":
                    b.node("Mul", [term, b.int64(f"{n}/lshift{i}", 1 << a["left_shift"])],
                           [f"{n}/shifted{i}"], f"{n}/lshift{i}")
                    term = f"{n}/shifted{i}"
                terms.append(b.requantize(term, p[f"input{i}_multiplier"], p[f"input{i}_shift"],
                                          f"{n}/rescaled{i}"))
            if node.op == "concat":
                parts = [b.store(t, zp, fmt, False, f"{n}/part{i}") for i, t in enumerate(terms)]
                b.node("Concat", parts, [out], n, axis=1)
                continue
            total = terms[0]
            for i, t in enumerate(terms[1:], 1):
                b.node("Add", [total, t], [f"{n}/total{i}"], f"{n}/total{i}")
                total = f"{n}/total{i}"
            y = b.requantize(total, p["output_multiplier"], p["output_shift"], f"{n}/y")
            if "bias" in p:
                b.node("Add", [y, b.int64(f"{n}/bias", _channel(p["bias"]))], [f"{n}/biased"], f"{n}/add_bias")
                y = f"{n}/biased"
            b.store(y, zp, fmt, bool(a.get("relu")), out)
        elif node.op == "sigmoid":
            idx = b.minus(node.inputs[0], a["input_qmin"], f"{n}/index")
            b.node("Gather", [b.const(f"{n}/table", p["table"]), idx], [out], n, axis=0)
        else:
            raise ValueError(f"ONNX export: unsupported op {node.op!r} ({n})")
    return b.model(_outputs(b, graph, encoding, TensorProto.UINT8), "jaxdepth_integer")


def sparse_input(lidar: np.ndarray, encoding: LidarEncoding) -> np.ndarray:
    """(N, H, W) LiDAR metres -> the ``sparse`` input (N, C, H, W), encoded on the host."""
    return np.ascontiguousarray(np.transpose(np.asarray(encoding.encode(lidar)), (0, 3, 1, 2)))


def feeds(graph: Graph, rgb: np.ndarray, lidar: np.ndarray | None) -> dict[str, np.ndarray]:
    """ONNX inputs from jaxdepth's (N, H, W, 3) image and (N, H, W) LiDAR. An input the
    model takes on its 8-bit grid (``model.grid_inputs``) is fed the real values of its
    integer codes, as the FP32 model saw it."""
    nchw = lambda x: np.ascontiguousarray(np.transpose(np.asarray(x, np.float32), (0, 3, 1, 2)))
    on_grid = None
    out = {}
    for node in graph.nodes:
        if not node.op.startswith("input"):
            continue
        if node.attrs.get("grid"):
            on_grid = on_grid or make_input_codes(graph)(rgb, lidar)
            t = graph.tensors[node.name]
            x = (np.asarray(on_grid[node.name], np.float32) - t.zero_point) * np.float32(t.scale)
            # the graph normalises the image itself: feed the image those values come from
            out[node.name] = nchw(x * node.attrs["std"] + node.attrs["mean"] if node.op == "input_rgb" else x)
        elif node.op == "input_rgb":
            out[node.name] = nchw(rgb)
        elif node.op == "input_sparse":
            out[node.name] = sparse_input(lidar, LidarEncoding.from_attrs(node.attrs))
    return out


def code_feeds(graph: Graph, rgb: np.ndarray, lidar: np.ndarray | None) -> dict[str, np.ndarray]:
    """Inputs of the integer model and of a ``code_inputs=True`` QDQ model: jaxdepth's
    input codes, NCHW."""
    codes = make_input_codes(graph)(rgb, lidar)
    return {k: np.ascontiguousarray(np.transpose(np.asarray(v), (0, 3, 1, 2))) for k, v in codes.items()}


def session(model: onnx.ModelProto):
    """An onnxruntime CPU session (all graph optimisations: QDQ groups run as integer
    kernels such as QLinearConv)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def heads(sess, graph: Graph, encoding: str, inputs: dict[str, np.ndarray]) -> np.ndarray:
    """Runs a session; the named (N, 1, H, W) outputs as one (N, H, W, C) head."""
    names = list(output_names(graph, encoding))
    return np.concatenate(sess.run(names, inputs), axis=1).transpose(0, 2, 3, 1)


def op_types(model: onnx.ModelProto) -> set[str]:
    return {n.op_type for n in model.graph.node}
