"""The one quantizer: every number format, rounding rule and scale used by jaxdepth.

Fake quantization (training and fake-quant evaluation), post-training calibration, the
integer export and the integer-only forward all call these functions, so the simulated
and the integer arithmetic share one definition. ``integer_ops`` builds each NPU op's
integer arithmetic from them.

Conventions (TFLite-style affine quantization)::

    real = scale * (code - zero_point),   code in [qmin, qmax]

* Rounding is half away from zero everywhere (``round_half_away``), in the float
  simulation and in the integer requantization alike.
* Weights: int8 symmetric, codes in [-127, 127], zero point 0, one scale per tensor (the
  NPU's rule) or per output channel.
* Activations: static per-tensor ranges; asymmetric uint8 (zero point in [0, 255]) or
  symmetric int8 (zero point 0). A range always contains 0, so zero padding is exact.
* Head outputs: uint8 over the fixed range [0, 1]: scale 1/255, zero point 0, all 256 codes.
"""
from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct


@dataclass(frozen=True)
class Format:
    """An integer storage format for one tensor."""

    name: str
    qmin: int
    qmax: int
    symmetric: bool

    @property
    def levels(self) -> int:
        return self.qmax - self.qmin


UINT8 = Format("uint8", 0, 255, symmetric=False)
INT8 = Format("int8", -128, 127, symmetric=True)
WEIGHT_INT8 = Format("int8_weight", -127, 127, symmetric=True)


@dataclass(frozen=True)
class Scheme:
    """Where the NPU's rules leave a choice: weight granularity and activation format."""

    name: str
    per_channel_weights: bool
    activation: Format


PRESETS: dict[str, Scheme] = {
    "npu_strict": Scheme("npu_strict", per_channel_weights=False, activation=UINT8),
    "per_channel": Scheme("per_channel", per_channel_weights=True, activation=UINT8),
    "symmetric": Scheme("symmetric", per_channel_weights=False, activation=INT8),
}


def get_scheme(name: str) -> Scheme:
    if name not in PRESETS:
        raise ValueError(f"unknown quantization preset {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[name]


@struct.dataclass
class QValue:
    """A fake-quantized activation: values on the grid ``scale * (code - zero_point)``."""

    value: jax.Array
    scale: jax.Array
    zero_point: jax.Array
    fmt: Format = struct.field(pytree_node=False)

    def codes(self) -> jax.Array:
        """The integer codes the NPU stores (as float32, exact)."""
        return self.centered().astype(jnp.float32) + self.zero_point

    def centered(self) -> jax.Array:
        """``code - zero_point`` as int32: the integer the NPU's arithmetic works on."""
        return round_half_away(self.value / self.scale).astype(jnp.int32)

    def with_codes(self, codes: jax.Array) -> "QValue":
        """This tensor with its value set to the grid point of ``codes`` (int32), keeping
        the gradient of the current value."""
        exact = (codes.astype(jnp.float32) - self.zero_point) * self.scale
        return self.replace(value=straight_through(self.value, exact))


_EPS = 1e-8


def round_half_away(x: jax.Array) -> jax.Array:
    """Rounds to the nearest integer, ties away from zero (the integer path's rule)."""
    return jnp.sign(x) * jnp.floor(jnp.abs(x) + 0.5)


def activation_qparams(lo: jax.Array, hi: jax.Array, fmt: Format) -> tuple[jax.Array, jax.Array]:
    """Scale and zero point of a static range [lo, hi], widened to contain 0."""
    lo = jnp.minimum(lo, 0.0)
    hi = jnp.maximum(hi, 0.0)
    if fmt.symmetric:
        scale = jnp.maximum(jnp.maximum(-lo, hi) / fmt.qmax, _EPS)
        return scale, jnp.zeros_like(scale)
    scale = jnp.maximum((hi - lo) / fmt.levels, _EPS)
    zero_point = jnp.clip(round_half_away(fmt.qmin - lo / scale), fmt.qmin, fmt.qmax)
    return scale, zero_point


def fixed_qparams(lo: float, hi: float, fmt: Format) -> tuple[jax.Array, jax.Array]:
    """Parameters of a range known in advance (model input, head outputs)."""
    return activation_qparams(jnp.float32(lo), jnp.float32(hi), fmt)


def quantize(x: jax.Array, scale: jax.Array, zero_point: jax.Array, fmt: Format) -> jax.Array:
    """Real values to integer codes (returned as float32 holding exact integers)."""
    return jnp.clip(round_half_away(x / scale) + zero_point, fmt.qmin, fmt.qmax)


@jax.custom_vjp
def _fake_quant(x, scale, zero_point, qmin, qmax):
    q = jnp.clip(round_half_away(x / scale) + zero_point, qmin, qmax)
    return (q - zero_point) * scale


def _fake_quant_fwd(x, scale, zero_point, qmin, qmax):
    lo = (qmin - zero_point) * scale
    hi = (qmax - zero_point) * scale
    return _fake_quant(x, scale, zero_point, qmin, qmax), (x >= lo) & (x <= hi)


def _fake_quant_bwd(inside, g):
    # Straight-through inside the representable range, zero where the value was clipped.
    return (jnp.where(inside, g, 0.0), None, None, None, None)


_fake_quant.defvjp(_fake_quant_fwd, _fake_quant_bwd)


def fake_quant(x: jax.Array, scale: jax.Array, zero_point: jax.Array, fmt: Format) -> jax.Array:
    """quantize then dequantize, with a straight-through gradient inside the range."""
    scale = jax.lax.stop_gradient(scale)
    zero_point = jax.lax.stop_gradient(zero_point)
    return _fake_quant(x, scale, zero_point, jnp.float32(fmt.qmin), jnp.float32(fmt.qmax))


def fake_quant_value(x: jax.Array, scale: jax.Array, zero_point: jax.Array, fmt: Format) -> QValue:
    return QValue(fake_quant(x, scale, zero_point, fmt), scale, zero_point, fmt)


def weight_scale(w: jax.Array, per_channel: bool) -> jax.Array:
    """Symmetric int8 weight scale: one per tensor, or one per output channel (last axis)."""
    axes = tuple(range(w.ndim - 1)) if per_channel else None
    absmax = jnp.max(jnp.abs(w), axis=axes)
    return jnp.maximum(jax.lax.stop_gradient(absmax) / WEIGHT_INT8.qmax, _EPS)


@jax.custom_vjp
def straight_through(surrogate: jax.Array, exact: jax.Array) -> jax.Array:
    """``exact`` in the forward pass, the gradient of ``surrogate`` in the backward pass.

    The fake-quant forward computes each tensor's codes with the integer arithmetic and
    lets gradients flow through the float expression that those codes approximate.
    """
    return exact


straight_through.defvjp(lambda s, e: (e, None), lambda _, g: (g, jnp.zeros_like(g)))


# ----------------------------------------------------------------------------------------
# Integer requantization: a fixed-point int32 multiplier and a right shift.
# ----------------------------------------------------------------------------------------
MULTIPLIER_BITS = 31


def quantize_multiplier(real: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Represents positive float32 reals as ``m * 2**-(31 + shift)``, m in [2**30, 2**31).

    Exact: a float32 mantissa has 24 bits, so ``m`` is the mantissa shifted left (its low
    7 bits are zero). ``shift`` is the extra right shift (negative means a left shift), as
    in TFLite's QuantizeMultiplier but applied with a single rounding (see ``requantize``).
    The fake-quant forward calls this in its graph, the exporter jitted: same bits.
    """
    mant, exp = jnp.frexp(jnp.asarray(real, jnp.float32))     # mant in [0.5, 1)
    m = (mant * jnp.float32(2 ** MULTIPLIER_BITS)).astype(jnp.int32)
    return m, (-exp).astype(jnp.int32)


def multiplier_value(m: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """The real number an (m, shift) pair stands for (float64)."""
    return np.asarray(m, np.float64) * np.exp2(-(MULTIPLIER_BITS + np.asarray(shift, np.float64)))


def _mul_u32(a: jax.Array, b: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Full 64-bit product of two uint32 arrays as (high, low) uint32 words."""
    mask = jnp.uint32(0xFFFF)
    a0, a1 = a & mask, a >> 16
    b0, b1 = b & mask, b >> 16
    p00, p01, p10, p11 = a0 * b0, a0 * b1, a1 * b0, a1 * b1
    mid = (p00 >> 16) + (p01 & mask) + (p10 & mask)
    low = (p00 & mask) | (mid << 16)
    high = p11 + (p01 >> 16) + (p10 >> 16) + (mid >> 16)
    return high, low


def requantize(acc: jax.Array, m: jax.Array, shift: jax.Array) -> jax.Array:
    """``round_half_away(acc * m * 2**-(31 + shift))`` in int32 arithmetic only.

    The product is formed exactly in 64 bits (as two 32-bit words) and rounded once; the
    result equals the real-valued rescaling of the accumulator to within that rounding.
    Requires 0 <= 31 + shift <= 62.
    """
    acc = acc.astype(jnp.int32)
    sign = jnp.where(acc < 0, jnp.int32(-1), jnp.int32(1))
    mag = jnp.abs(acc).astype(jnp.uint32)
    high, low = _mul_u32(mag, jnp.asarray(m, jnp.int32).astype(jnp.uint32))
    total = (MULTIPLIER_BITS + jnp.asarray(shift, jnp.int32)).astype(jnp.uint32)
    # Add 2**(total - 1) for rounding, with carry from the low word into the high word.
    half_bit = total - 1
    add_low = jnp.where(half_bit < 32, jnp.uint32(1) << jnp.minimum(half_bit, 31), jnp.uint32(0))
    add_high = jnp.where(half_bit >= 32, jnp.uint32(1) << (jnp.maximum(half_bit, 32) - 32),
                         jnp.uint32(0))
    new_low = low + add_low
    high = high + add_high + (new_low < low).astype(jnp.uint32)
    # Shift the 64-bit value right by `total` (0 < total < 64).
    lo_part = jnp.where(total < 32, new_low >> jnp.minimum(total, 31), jnp.uint32(0))
    hi_into_lo = jnp.where(total < 32,
                           jnp.where(total == 0, jnp.uint32(0), high << (32 - jnp.clip(total, 1, 31))),
                           high >> (jnp.clip(total, 32, 63) - 32))
    result = (lo_part | hi_into_lo).astype(jnp.int32)
    return sign * result
