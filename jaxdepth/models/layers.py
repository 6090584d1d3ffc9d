"""The building blocks of the network, each aware of how the NPU stores its output.

Every block runs in one of four modes (``Quant.mode``):

* ``float``: plain FP32 (training with BatchNorm batch statistics, evaluation).
* ``calibrate``: FP32, while each activation observer widens its range to the min/max
  seen (post-training min-max calibration).
* ``fake``: INT8 simulation. Every tensor the NPU stores in INT8 is quantized with the
  static range of its observer: conv inputs and (BN-folded) weights, the fusion gate
  operands, concat inputs (requantized to the concat's one scale), the head outputs
  (uint8 over [0, 1]). Convolutions run through AQT (``quant.aqt_conv``). Each block
  computes its output codes with the NPU's integer arithmetic (``quant.integer_ops``,
  the integer runtime's own kernels) and passes gradients through the float expression
  those codes approximate. During QAT the observers track an EMA of the batch min/max;
  otherwise the ranges are frozen.
* ``export``: no computation; each block appends its node, with float and integer
  parameters derived by the same functions as in ``fake`` mode, to ``export.graph.record()``.

Blocks exchange plain arrays in ``float``/``calibrate`` mode and ``QValue``s (value plus
its scale and zero point) in ``fake`` mode. The variables are the same in every mode, so
one checkpoint serves FP32 training, QAT, calibration and export.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence, Union

import flax.linen as nn
import jax
import jax.numpy as jnp

import numpy as np

from jaxdepth.export import graph as g
from jaxdepth.export import params as export_params
from jaxdepth.quant import integer_ops as iops
from jaxdepth.quant import numerics as qn
from jaxdepth.quant.aqt_conv import int8_conv

Tensor = Union[jax.Array, qn.QValue, g.SymTensor]
MODES = ("float", "calibrate", "fake", "export")
BN_MOMENTUM = 0.9


@dataclass(frozen=True)
class Quant:
    """How the blocks quantize: the mode, the scheme (NPU rules) and the EMA decay."""

    mode: str = "float"
    scheme: qn.Scheme = qn.PRESETS["npu_strict"]
    ema_decay: float = 0.99

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"unknown quantization mode {self.mode!r}; expected one of {MODES}")

    @property
    def fake(self) -> bool:
        return self.mode == "fake"

    @property
    def export(self) -> bool:
        return self.mode == "export"


FLOAT = Quant()


def value(x: Tensor) -> jax.Array:
    """The real-valued content of a tensor in any mode."""
    return x.value if isinstance(x, qn.QValue) else x


def shape(x: Tensor) -> tuple[int, ...]:
    return tuple(x.shape) if isinstance(x, g.SymTensor) else value(x).shape


def _f(x) -> float:
    return float(np.asarray(x))


def _zp(x: qn.QValue) -> jax.Array:
    return x.zero_point.astype(jnp.int32)


def same_padding(kernel: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """Symmetric zero padding k//2 (the NPU's padding), output = ceil(input / stride)."""
    p = kernel // 2
    return ((p, p), (p, p))


class Observer(nn.Module):
    """The static range of one activation tensor, and its fake quantization."""

    quant: Quant = FLOAT

    @nn.compact
    def __call__(self, x: jax.Array | None, update: bool) -> Tensor:
        lo = self.variable("quant", "lo", lambda: jnp.zeros((), jnp.float32))
        hi = self.variable("quant", "hi", lambda: jnp.zeros((), jnp.float32))
        count = self.variable("quant", "count", lambda: jnp.zeros((), jnp.int32))
        if self.quant.export:
            if int(count.value) == 0:
                raise ValueError(f"activation range of {g.node_name(self)} was never calibrated: "
                                 "export needs a QAT or calibrated checkpoint")
            return export_params.activation_qparams(lo.value, hi.value, self.quant.scheme.activation)
        if self.is_initializing() or not update:
            pass
        elif self.quant.mode == "calibrate":
            stop = jax.lax.stop_gradient(x)
            first = count.value == 0
            lo.value = jnp.where(first, stop.min(), jnp.minimum(lo.value, stop.min()))
            hi.value = jnp.where(first, stop.max(), jnp.maximum(hi.value, stop.max()))
            count.value = count.value + 1
        elif self.quant.fake:
            stop = jax.lax.stop_gradient(x)
            d = jnp.where(count.value == 0, 0.0, self.quant.ema_decay)
            lo.value = d * lo.value + (1 - d) * stop.min()
            hi.value = d * hi.value + (1 - d) * stop.max()
            count.value = count.value + 1
        if not self.quant.fake:
            return x
        scale, zp = qn.activation_qparams(lo.value, hi.value, self.quant.scheme.activation)
        return qn.fake_quant_value(x, scale, zp, self.quant.scheme.activation)


class Conv(nn.Module):
    """Conv (+ BatchNorm or bias) (+ ReLU), output stored in INT8.

    In ``fake`` mode BatchNorm is folded into the kernel and bias with its running
    statistics, as the NPU folds it, and the folded kernel is what gets quantized.
    """

    features: int
    kernel: int = 3
    stride: int = 1
    bn: bool = True
    relu: bool = True
    quant: Quant = FLOAT

    @nn.compact
    def __call__(self, x: Tensor, train: bool = False) -> Tensor:
        cin = shape(x)[-1]
        k = self.param("kernel", nn.initializers.kaiming_normal(),
                       (self.kernel, self.kernel, cin, self.features))
        strides = (self.stride, self.stride)
        pad = same_padding(self.kernel)
        if self.bn:
            gamma = self.param("bn_scale", nn.initializers.ones, (self.features,))
            beta = self.param("bn_bias", nn.initializers.zeros, (self.features,))
            mean = self.variable("batch_stats", "mean", jnp.zeros, (self.features,))
            var = self.variable("batch_stats", "var", jnp.ones, (self.features,))
            bias = None
        else:
            bias = self.param("bias", nn.initializers.zeros, (self.features,))
            gamma = beta = mean = var = None
        if self.quant.export:
            stats = (mean.value, var.value) if self.bn else (None, None)
            return self._export(x, k, gamma, beta, *stats, bias)
        update = train or self.quant.mode == "calibrate"
        if self.quant.fake:
            return self._fake(x, k, gamma, beta, mean, var, bias, strides, pad, update)
        y = jax.lax.conv_general_dilated(value(x), k, strides, pad,
                                         dimension_numbers=("NHWC", "HWIO", "NHWC"))
        if self.bn:
            y = self._batch_norm(y, gamma, beta, mean, var, train)
        else:
            y = y + bias
        if self.relu:
            y = jax.nn.relu(y)
        return Observer(self.quant, name="out")(y, update=update)

    def _fake(self, x: qn.QValue, k, gamma, beta, mean, var, bias, strides, pad,
              update: bool) -> qn.QValue:
        """BN folded with its running statistics and the folded kernel quantized (as the
        NPU does); AQT's accumulator requantized by the integer runtime's arithmetic."""
        k_eff, b_eff = (iops.fold_batch_norm(k, gamma, beta, mean.value, var.value) if self.bn
                        else (k, bias))
        p = iops.conv_params(k_eff, b_eff, x.scale, self.quant.scheme.per_channel_weights)
        w = qn.straight_through(k_eff, p.weight * p.weight_scale)
        acc, y = int8_conv(x, w, p.weight, p.weight_scale, strides, pad)
        y = y + b_eff
        out = Observer(self.quant, name="out")(jax.nn.relu(y) if self.relu else y, update=update)
        codes = iops.conv_output(acc.astype(jnp.int32), p.bias.astype(jnp.int32),
                                 iops.rescale(p.acc_scale, out.scale), _zp(out), out.fmt, self.relu)
        return out.with_codes(codes)

    def _export(self, x: g.SymTensor, k, gamma, beta, mean, var, bias) -> g.SymTensor:
        """The conv node; its parameters derived as in ``fake`` mode, by ``export.params``
        (the same functions, jitted on padded arrays instead of eager JAX)."""
        out_scale, out_zp = Observer(self.quant, name="out")(None, update=False)
        k_eff, b_eff, int_params = export_params.conv(
            k, gamma, beta, mean, var, bias, x.scale, _f(out_scale),
            self.quant.scheme.per_channel_weights)
        n, h, w, _ = x.shape
        out_shape = (n, -(-h // self.stride), -(-w // self.stride), self.features)
        return g.current().add(
            "conv", g.node_name(self), [x], out_shape, _f(out_scale), _f(out_zp),
            self.quant.scheme.activation,
            attrs={"kernel": self.kernel, "stride": self.stride, "padding": self.kernel // 2,
                   "relu": self.relu},
            float_params={"weight": k_eff, "bias": b_eff}, int_params=int_params)

    def _batch_norm(self, y, gamma, beta, mean, var, train: bool) -> jax.Array:
        if train:
            m = y.mean(axis=(0, 1, 2))
            v = jnp.square(y - m).mean(axis=(0, 1, 2))
            if not self.is_initializing():
                mean.value = BN_MOMENTUM * mean.value + (1 - BN_MOMENTUM) * jax.lax.stop_gradient(m)
                var.value = BN_MOMENTUM * var.value + (1 - BN_MOMENTUM) * jax.lax.stop_gradient(v)
        else:
            m, v = mean.value, var.value
        return (y - m) * (gamma * jax.lax.rsqrt(v + iops.BN_EPS)) + beta


class Add(nn.Module):
    """Elementwise sum of several tensors (+ ReLU), requantized to one output range."""

    relu: bool = False
    quant: Quant = FLOAT

    @nn.compact
    def __call__(self, *xs: Tensor, train: bool = False) -> Tensor:
        if self.quant.export:
            scale, zp = Observer(self.quant, name="out")(None, update=False)
            return _export_sum(self, "add", list(xs), _f(scale), _f(zp), iops.ADD_LEFT_SHIFT,
                               {"relu": self.relu})
        y = sum(value(x) for x in xs)
        if self.relu:
            y = jax.nn.relu(y)
        out = Observer(self.quant, name="out")(y, update=train or self.quant.mode == "calibrate")
        if not self.quant.fake:
            return out
        inputs, output = iops.sum_multipliers([x.scale for x in xs], out.scale, iops.ADD_LEFT_SHIFT)
        codes = iops.sum_output([x.centered() for x in xs], iops.ADD_LEFT_SHIFT, inputs, output,
                                _zp(out), out.fmt, self.relu)
        return out.with_codes(codes)


class Concat(nn.Module):
    """Channel concat; each input is requantized to the output's single scale."""

    quant: Quant = FLOAT

    @nn.compact
    def __call__(self, xs: Sequence[Tensor], train: bool = False) -> Tensor:
        if self.quant.export:
            scale, zp = Observer(self.quant, name="out")(None, update=False)
            out_shape = xs[0].shape[:-1] + (sum(x.shape[-1] for x in xs),)
            params: dict[str, np.ndarray] = {}
            for i, x in enumerate(xs):
                params.update(export_params.rescale(f"input{i}_", x.scale, _f(scale)))
            return g.current().add("concat", g.node_name(self), list(xs), out_shape, _f(scale),
                                   _f(zp), self.quant.scheme.activation, int_params=params)
        y = jnp.concatenate([value(x) for x in xs], axis=-1)
        out = Observer(self.quant, name="out")(y, update=train or self.quant.mode == "calibrate")
        if not self.quant.fake:
            return out
        codes = iops.concat_output([x.centered() for x in xs],
                                   [iops.rescale(x.scale, out.scale) for x in xs], _zp(out), out.fmt)
        return out.with_codes(codes)


class Fusion(nn.Module):
    """out = s(w) * rgb + (1 - s(w)) * sparse + b, per channel (s = logistic).

    NPU form: two per-channel constant multiplies and an add. Quantized, the gate
    coefficients s(w) and 1 - s(w) are int8 weights (one per-tensor scale each) and ``b``
    is stored as codes at the output scale.
    """

    quant: Quant = FLOAT

    @nn.compact
    def __call__(self, rgb: Tensor, sparse: Tensor, train: bool = False) -> Tensor:
        c = shape(rgb)[-1]
        w = self.param("gate", nn.initializers.constant(0.5), (c,))
        b = self.param("bias", nn.initializers.zeros, (c,))
        obs = Observer(self.quant, name="out")
        if self.quant.export:
            scale, zp = obs(None, update=False)
            gates, bias_codes = export_params.fusion_gates(w, b, _f(scale))
            return _export_sum(self, "fusion", [rgb, sparse], _f(scale), _f(zp),
                               iops.FUSION_LEFT_SHIFT, {}, coeffs=[gt.codes for gt in gates],
                               coeff_scales=[gt.scale for gt in gates], bias_codes=bias_codes,
                               float_params={"gate_rgb": gates[0].value,
                                             "gate_sparse": gates[1].value, "bias": b})
        update = train or self.quant.mode == "calibrate"
        if not self.quant.fake:
            y = jax.nn.sigmoid(w) * rgb + (1.0 - jax.nn.sigmoid(w)) * sparse + b
            return obs(y, update=update)
        gates = iops.fusion_gates(w)
        g_rgb, g_sparse = (qn.straight_through(gt.value, gt.codes * gt.scale) for gt in gates)
        mixed = g_rgb * rgb.value + g_sparse * sparse.value
        # The observer ranges the float sum; the bias is then stored as codes at that output
        # scale (the integer form adds it after the rescale).
        out = obs(mixed + b, update=update)
        bias_codes = iops.fusion_bias(b, out.scale)
        inputs, output = iops.sum_multipliers([x.scale * gt.scale for x, gt in zip((rgb, sparse), gates)],
                                              out.scale, iops.FUSION_LEFT_SHIFT)
        terms = [x.centered() * gt.codes.astype(jnp.int32) for x, gt in zip((rgb, sparse), gates)]
        codes = iops.sum_output(terms, iops.FUSION_LEFT_SHIFT, inputs, output, _zp(out), out.fmt,
                                bias=bias_codes.astype(jnp.int32))
        return out.with_codes(codes)


def _export_sum(module: nn.Module, op: str, xs: list[g.SymTensor], scale: float, zp: float,
                left_shift: int, attrs: dict, coeffs: list | None = None,
                coeff_scales: list | None = None, bias_codes: np.ndarray | None = None,
                float_params: dict | None = None) -> g.SymTensor:
    """Node of a sum of requantized inputs (optionally times per-channel int8 coefficients).

    Integer semantics (TFLite ADD): each input's ``(code - zero_point) [* coeff]`` is
    shifted left by ``left_shift``, rescaled by its multiplier to a common scale
    ``2 * max(term scales) / 2**left_shift``, summed, rescaled by the output multiplier,
    plus ``bias_codes`` and the output zero point, then clamped (at the zero point for ReLU).
    """
    params = export_params.sum_multipliers([x.scale for x in xs], coeff_scales, scale, left_shift)
    for i, (c, cs) in enumerate(zip(coeffs or [], coeff_scales or [])):
        params[f"coeff{i}"] = np.asarray(c)
        params[f"coeff{i}_scale"] = np.asarray(cs)
    if bias_codes is not None:
        params["bias"] = np.asarray(bias_codes, np.int32)
    return g.current().add(op, g.node_name(module), xs, xs[0].shape, scale, zp,
                           module.quant.scheme.activation,
                           attrs={**attrs, "left_shift": left_shift},
                           float_params=float_params, int_params=params)


def max_pool(x: Tensor, window: int, stride: int) -> Tensor:
    """Max pooling with symmetric padding; exact on integer codes, so no requantization."""
    pad = ((window // 2, window // 2),) * 2 if window % 2 else ((0, 0), (0, 0))
    if isinstance(x, g.SymTensor):
        n, h, w, c = x.shape
        return g.current().add("max_pool", f"{x.name}/max_pool", [x], (n, -(-h // stride), -(-w // stride), c),
                               x.scale, x.zero_point, x.fmt,
                               attrs={"window": window, "stride": stride, "padding": pad[0][0]})
    pool = lambda v: nn.max_pool(v, (window, window), (stride, stride), padding=pad)
    if isinstance(x, qn.QValue):
        return x.replace(value=pool(x.value))
    return pool(x)


def upsample2x(x: Tensor) -> Tensor:
    """Nearest-neighbour x2 upsampling; copies codes, so no requantization."""
    if isinstance(x, g.SymTensor):
        n, h, w, c = x.shape
        return g.current().add("upsample", f"{x.name}/upsample", [x], (n, 2 * h, 2 * w, c),
                               x.scale, x.zero_point, x.fmt, attrs={"factor": 2, "mode": "nearest"})
    up = lambda v: jnp.repeat(jnp.repeat(v, 2, axis=1), 2, axis=2)
    if isinstance(x, qn.QValue):
        return x.replace(value=up(x.value))
    return up(x)


def split_channel(x: Tensor, i: int) -> Tensor:
    """Channel i of x (an NPU Split); codes and quantization parameters unchanged."""
    if isinstance(x, g.SymTensor):
        return g.current().add("split", f"{x.name}/split{i}", [x], x.shape[:-1] + (1,), x.scale,
                               x.zero_point, x.fmt, attrs={"channel": i})
    if isinstance(x, qn.QValue):
        return x.replace(value=x.value[..., i:i + 1])
    return x[..., i:i + 1]


class Head(nn.Module):
    """Conv3x3 -> ``channels`` -> sigmoid; output uint8 over [0, 1] (scale 1/255)."""

    channels: int
    quant: Quant = FLOAT

    @nn.compact
    def __call__(self, x: Tensor, train: bool = False) -> jax.Array:
        logits = Conv(self.channels, 3, bn=False, relu=False, quant=self.quant, name="conv")(x, train)
        if self.quant.export:
            return self._export(logits)
        s = jax.nn.sigmoid(value(logits))
        if not self.quant.fake:
            return s
        scale, zp = qn.fixed_qparams(*iops.HEAD_RANGE, iops.HEAD_FORMAT)
        out = qn.fake_quant_value(s, scale, zp, iops.HEAD_FORMAT)
        table = iops.sigmoid_table(logits.fmt, logits.zero_point, logits.scale)
        return out.with_codes(iops.lookup(table, logits.codes(), logits.fmt)).value


    def _export(self, logits: g.SymTensor) -> g.SymTensor:
        """A 256-entry table: uint8 output code for every logit code (same functions as fake)."""
        fmt = logits.fmt
        lut = export_params.sigmoid_table(fmt, logits.zero_point, logits.scale)
        scale, zp = qn.fixed_qparams(*iops.HEAD_RANGE, iops.HEAD_FORMAT)
        graph = g.current()
        out = graph.add("sigmoid", g.node_name(self), [logits], logits.shape, _f(scale), _f(zp),
                        iops.HEAD_FORMAT, attrs={"input_qmin": fmt.qmin}, int_params={"table": lut})
        graph.outputs.append(out.name)
        return out


RGB_MEAN, RGB_STD = 0.45, 0.225


def normalize_rgb(rgb: jax.Array) -> jax.Array:
    """(x - 0.45) / 0.225, inside the model as in the reference's NPU graph."""
    return (rgb - RGB_MEAN) / RGB_STD


def encode_sparse(lidar: jax.Array, min_depth: float) -> jax.Array:
    """(B, H, W) metres, 0 = no return -> (B, H, W, 2): [min_depth / d, valid mask]."""
    valid = lidar > 0
    inv = jnp.where(valid, min_depth / jnp.maximum(lidar, min_depth), 0.0)
    return jnp.stack([inv, valid.astype(jnp.float32)], axis=-1)


class Input(nn.Module):
    """A model input: its in-graph transform and its quantization over a fixed range.

    ``rgb``: normalised image, range [(0 - mean) / std, (1 - mean) / std].
    ``sparse``: ``encode_sparse`` of the LiDAR depth, range [0, 1].
    Quantizing the transformed input is the integer graph's only float step.
    """

    kind: str
    min_depth: float = 0.5
    quant: Quant = FLOAT

    @property
    def bounds(self) -> tuple[float, float]:
        if self.kind == "rgb":
            return (0.0 - RGB_MEAN) / RGB_STD, (1.0 - RGB_MEAN) / RGB_STD
        return 0.0, 1.0

    def transform(self, x: jax.Array) -> jax.Array:
        return normalize_rgb(x) if self.kind == "rgb" else encode_sparse(x, self.min_depth)

    def __call__(self, x) -> Tensor:
        if self.kind not in ("rgb", "sparse"):
            raise ValueError(f"unknown input kind {self.kind!r}")
        fmt = self.quant.scheme.activation
        scale, zp = qn.fixed_qparams(*self.bounds, fmt)
        if self.quant.export:
            n, h, w = x.shape[:3]
            attrs = ({"mean": RGB_MEAN, "std": RGB_STD} if self.kind == "rgb"
                     else {"min_depth": self.min_depth})
            return g.current().add(f"input_{self.kind}", self.kind, [], (n, h, w, 3 if self.kind == "rgb" else 2),
                                   _f(scale), _f(zp), fmt, attrs=attrs)
        x = self.transform(x)
        if not self.quant.fake:
            return x
        return qn.fake_quant_value(x, scale, zp, fmt)
