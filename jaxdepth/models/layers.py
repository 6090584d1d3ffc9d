"""The building blocks of the network, each aware of how the NPU stores its output.

Every block runs in one of three modes (``Quant.mode``):

* ``float``: plain FP32 (training with BatchNorm batch statistics, evaluation).
* ``calibrate``: FP32, while each activation observer widens its range to the min/max
  seen (post-training min-max calibration).
* ``fake``: INT8 simulation. Every tensor the NPU stores in INT8 is fake-quantized with
  the static range of its observer: conv inputs and (BN-folded) weights, the fusion gate
  operands, concat inputs (requantized to the concat's one scale), the head outputs
  (uint8 over [0, 1]). Convolutions run through AQT (``quant.aqt_conv``). During QAT the
  observers track an EMA of the batch min/max; otherwise the ranges are frozen.

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

from jaxdepth.quant import numerics as qn
from jaxdepth.quant.aqt_conv import int8_conv

Tensor = Union[jax.Array, qn.QValue]
MODES = ("float", "calibrate", "fake")
BN_EPS = 1e-5
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


FLOAT = Quant()


def value(x: Tensor) -> jax.Array:
    """The real-valued content of a tensor in any mode."""
    return x.value if isinstance(x, qn.QValue) else x


def same_padding(kernel: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """Symmetric zero padding k//2 (the NPU's padding), output = ceil(input / stride)."""
    p = kernel // 2
    return ((p, p), (p, p))


class Observer(nn.Module):
    """The static range of one activation tensor, and its fake quantization."""

    quant: Quant = FLOAT

    @nn.compact
    def __call__(self, x: jax.Array, update: bool) -> Tensor:
        lo = self.variable("quant", "lo", lambda: jnp.zeros((), jnp.float32))
        hi = self.variable("quant", "hi", lambda: jnp.zeros((), jnp.float32))
        count = self.variable("quant", "count", lambda: jnp.zeros((), jnp.int32))
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
        cin = value(x).shape[-1]
        k = self.param("kernel", nn.initializers.kaiming_normal(),
                       (self.kernel, self.kernel, cin, self.features))
        strides = (self.stride, self.stride)
        pad = same_padding(self.kernel)
        if self.bn:
            gamma = self.param("bn_scale", nn.initializers.ones, (self.features,))
            beta = self.param("bn_bias", nn.initializers.zeros, (self.features,))
            mean = self.variable("batch_stats", "mean", jnp.zeros, (self.features,))
            var = self.variable("batch_stats", "var", jnp.ones, (self.features,))
        else:
            bias = self.param("bias", nn.initializers.zeros, (self.features,))

        if self.quant.fake:
            if self.bn:
                inv = gamma * jax.lax.rsqrt(var.value + BN_EPS)
                k_eff, b_eff = k * inv, beta - mean.value * inv
            else:
                k_eff, b_eff = k, bias
            w_scale = qn.weight_scale(k_eff, self.quant.scheme.per_channel_weights)
            w_q = qn.fake_quant_weight(k_eff, w_scale)
            y = int8_conv(x.value, w_q, x.scale, w_scale, strides, pad)
            y = y + qn.fake_quant_bias(b_eff, x.scale * w_scale)
        else:
            y = jax.lax.conv_general_dilated(
                value(x), k, strides, pad,
                dimension_numbers=("NHWC", "HWIO", "NHWC"))
            if self.bn:
                y = self._batch_norm(y, gamma, beta, mean, var, train)
            else:
                y = y + bias
        if self.relu:
            y = jax.nn.relu(y)
        return Observer(self.quant, name="out")(y, update=train or self.quant.mode == "calibrate")

    def _batch_norm(self, y, gamma, beta, mean, var, train: bool) -> jax.Array:
        if train:
            m = y.mean(axis=(0, 1, 2))
            v = jnp.square(y - m).mean(axis=(0, 1, 2))
            if not self.is_initializing():
                mean.value = BN_MOMENTUM * mean.value + (1 - BN_MOMENTUM) * jax.lax.stop_gradient(m)
                var.value = BN_MOMENTUM * var.value + (1 - BN_MOMENTUM) * jax.lax.stop_gradient(v)
        else:
            m, v = mean.value, var.value
        return (y - m) * (gamma * jax.lax.rsqrt(v + BN_EPS)) + beta


class Add(nn.Module):
    """Elementwise sum of several tensors (+ ReLU), requantized to one output range."""

    relu: bool = False
    quant: Quant = FLOAT

    @nn.compact
    def __call__(self, *xs: Tensor, train: bool = False) -> Tensor:
        y = sum(value(x) for x in xs)
        if self.relu:
            y = jax.nn.relu(y)
        return Observer(self.quant, name="out")(y, update=train or self.quant.mode == "calibrate")


class Concat(nn.Module):
    """Channel concat; each input is requantized to the output's single scale."""

    quant: Quant = FLOAT

    @nn.compact
    def __call__(self, xs: Sequence[Tensor], train: bool = False) -> Tensor:
        y = jnp.concatenate([value(x) for x in xs], axis=-1)
        return Observer(self.quant, name="out")(y, update=train or self.quant.mode == "calibrate")


class Fusion(nn.Module):
    """out = s(w) * rgb + (1 - s(w)) * sparse + b, per channel (s = logistic).

    NPU form: two per-channel constant multiplies and an add. In ``fake`` mode the gate
    coefficients s(w) and 1 - s(w) are int8 weights (one per-tensor scale each) and ``b``
    is stored at the output scale.
    """

    quant: Quant = FLOAT

    @nn.compact
    def __call__(self, rgb: Tensor, sparse: Tensor, train: bool = False) -> Tensor:
        c = value(rgb).shape[-1]
        w = self.param("gate", nn.initializers.constant(0.5), (c,))
        b = self.param("bias", nn.initializers.zeros, (c,))
        g_rgb, g_sparse = jax.nn.sigmoid(w), 1.0 - jax.nn.sigmoid(w)
        update = train or self.quant.mode == "calibrate"
        if not self.quant.fake:
            y = g_rgb * rgb + g_sparse * sparse + b
            return Observer(self.quant, name="out")(y, update=update)
        g_rgb = qn.fake_quant_weight(g_rgb, qn.weight_scale(g_rgb, False))
        g_sparse = qn.fake_quant_weight(g_sparse, qn.weight_scale(g_sparse, False))
        mixed = g_rgb * rgb.value + g_sparse * sparse.value
        # The observer sees the unquantized-bias sum to set its range, then the bias is
        # rounded to that output scale (the integer form adds it as a code offset).
        obs = Observer(self.quant, name="out")
        ranged = obs(mixed + b, update=update)
        y = mixed + qn.fake_quant_bias(b, ranged.scale)
        return qn.fake_quant_value(y, ranged.scale, ranged.zero_point, ranged.fmt)


def max_pool(x: Tensor, window: int, stride: int) -> Tensor:
    """Max pooling with symmetric padding; exact on integer codes, so no requantization."""
    pad = ((window // 2, window // 2),) * 2 if window % 2 else ((0, 0), (0, 0))
    pool = lambda v: nn.max_pool(v, (window, window), (stride, stride), padding=pad)
    if isinstance(x, qn.QValue):
        return x.replace(value=pool(x.value))
    return pool(x)


def upsample2x(x: Tensor) -> Tensor:
    """Nearest-neighbour x2 upsampling; copies codes, so no requantization."""
    up = lambda v: jnp.repeat(jnp.repeat(v, 2, axis=1), 2, axis=2)
    if isinstance(x, qn.QValue):
        return x.replace(value=up(x.value))
    return up(x)


class Head(nn.Module):
    """Conv3x3 -> ``channels`` -> sigmoid; output uint8 over [0, 1] (scale 1/255)."""

    channels: int
    quant: Quant = FLOAT

    @nn.compact
    def __call__(self, x: Tensor, train: bool = False) -> jax.Array:
        logits = Conv(self.channels, 3, bn=False, relu=False, quant=self.quant, name="conv")(x, train)
        s = jax.nn.sigmoid(value(logits))
        if not self.quant.fake:
            return s
        scale, zp = qn.fixed_qparams(0.0, 1.0, qn.UINT8)
        return qn.fake_quant(s, scale, zp, qn.UINT8)


class Input(nn.Module):
    """Quantizes a model input with a range fixed by its definition (no observer)."""

    lo: float
    hi: float
    quant: Quant = FLOAT

    def __call__(self, x: jax.Array) -> Tensor:
        if not self.quant.fake:
            return x
        fmt = self.quant.scheme.activation
        scale, zp = qn.fixed_qparams(self.lo, self.hi, fmt)
        return qn.fake_quant_value(x, scale, zp, fmt)
