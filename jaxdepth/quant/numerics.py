"""The one quantizer: every number format, rounding rule and scale used by jaxdepth.

The fake-quant forward (training and fake-quant evaluation), post-training calibration,
the integer export and the integer-only forward all use these definitions;
``integer_ops`` builds each NPU op's integer arithmetic from them and ``aqt_backend``
holds what AQT computes.

Conventions (TFLite-style affine quantization)::

    real = scale * (code - zero_point),   code in [qmin, qmax]

* Float to code, where a float tensor enters the integer model (weights, fusion gates,
  the model inputs): AQT's quantizer, ``x * (1 / scale)`` rounded half to even, clipped.
* Integer requantization and every parameter jaxdepth derives (bias codes, zero points):
  rounding half away from zero (``round_half_away``, ``requantize``).
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
    """An activation of the fake-quant forward: the integer codes the NPU stores, and
    their real value ``scale * (codes - zero_point)`` carrying the gradient of the float
    computation those codes approximate (straight-through).

    ``codes`` come from the integer kernels of ``integer_ops`` (or, for a model input,
    from ``quantize_input``); ``value`` is never turned back into codes. ``name`` names
    the tensor in an exported graph.
    """

    value: jax.Array
    codes: jax.Array          # int32, in [fmt.qmin, fmt.qmax]
    scale: jax.Array          # float32 scalar
    zero_point: jax.Array     # int32 scalar
    fmt: Format = struct.field(pytree_node=False)
    name: str = struct.field(pytree_node=False, default="")

    @classmethod
    def of(cls, codes: jax.Array, surrogate: jax.Array | None, scale: jax.Array,
           zero_point: jax.Array, fmt: Format, name: str) -> "QValue":
        """The tensor holding ``codes``; its gradient is that of ``surrogate`` fake-quantized
        (zero where the float value falls outside the range), or none."""
        exact = (codes - zero_point).astype(jnp.float32) * scale
        if surrogate is not None:
            exact = straight_through(fake_quant(surrogate, scale, zero_point, fmt), exact)
        return cls(exact, codes, scale, zero_point, fmt, name)

    def centered(self) -> jax.Array:
        """``codes - zero_point`` (int32): the integer the NPU's arithmetic works on."""
        return self.codes - self.zero_point

    def map(self, fn, name: str) -> "QValue":
        """The same codes rearranged by ``fn`` (pooling, upsampling, slicing): value and
        codes move together, the quantization is unchanged."""
        return self.replace(value=fn(self.value), codes=fn(self.codes), name=name)


def round_half_away(x: jax.Array) -> jax.Array:
    """Rounds to the nearest integer, ties away from zero (the integer path's rule)."""
    return jnp.sign(x) * jnp.floor(jnp.abs(x) + 0.5)


def activation_qparams(lo: jax.Array, hi: jax.Array, fmt: Format) -> tuple[jax.Array, jax.Array]:
    """Scale (float32) and zero point (int32) of a static range [lo, hi], widened to
    contain 0. A range of width 0 (a tensor that was 0 on every calibration sample) is
    taken as [0, 1]: its codes are all the zero point whatever the scale."""
    lo = jnp.minimum(lo, 0.0)
    hi = jnp.maximum(hi, 0.0)
    hi = jnp.where(hi - lo == 0, 1.0, hi)
    if fmt.symmetric:
        scale = jnp.maximum(-lo, hi) / fmt.qmax
        return scale, jnp.zeros(jnp.shape(scale), jnp.int32)
    scale = (hi - lo) / fmt.levels
    zero_point = jnp.clip(round_half_away(fmt.qmin - lo / scale), fmt.qmin, fmt.qmax)
    return scale, zero_point.astype(jnp.int32)


def fixed_qparams(lo: float, hi: float, fmt: Format) -> tuple[jax.Array, jax.Array]:
    """Parameters of a range known in advance (model input, head outputs)."""
    return activation_qparams(jnp.float32(lo), jnp.float32(hi), fmt)


def quantize(x: jax.Array, scale: jax.Array, zero_point: jax.Array, fmt: Format) -> jax.Array:
    """Real values to int32 codes, rounding half away from zero."""
    codes = jnp.clip(round_half_away(x / scale) + zero_point, fmt.qmin, fmt.qmax)
    return codes.astype(jnp.int32)


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
    """quantize then dequantize, with a straight-through gradient inside the range: the
    surrogate whose gradient the fake-quant forward's codes carry."""
    scale = jax.lax.stop_gradient(scale)
    zero_point = jax.lax.stop_gradient(zero_point).astype(jnp.float32)
    return _fake_quant(x, scale, zero_point, jnp.float32(fmt.qmin), jnp.float32(fmt.qmax))


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


def check_multiplier(m: np.ndarray, shift: np.ndarray, where: str) -> None:
    """Raises ``ValueError`` naming ``where`` unless every (m, shift) pair is one that
    ``requantize`` computes exactly: m in [2**30, 2**31), 0 <= 31 + shift <= 62."""
    m, shift = np.asarray(m, np.int64), np.asarray(shift, np.int64)
    bad = (m < 2 ** 30) | (m >= 2 ** 31) | (shift < -MULTIPLIER_BITS) | (shift > 62 - MULTIPLIER_BITS)
    if bad.any():
        i = int(np.flatnonzero(bad.ravel())[0])
        real = multiplier_value(m.ravel()[i], shift.ravel()[i])
        raise ValueError(f"{where}: requantization multiplier {m.ravel()[i]} * 2**-(31 + "
                         f"{shift.ravel()[i]}) (= {real:.3g}) is outside what the integer "
                         "arithmetic represents (a range that is degenerate or far from its "
                         "neighbours'; recalibrate)")


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
    result equals the real-valued rescaling of the accumulator to within that rounding,
    saturated to +-(2**31 - 1). Requires 0 <= 31 + shift <= 62 (``check_multiplier``).
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
    result = lo_part | hi_into_lo
    # Saturate instead of wrapping: bits of the shifted value above bit 31 are lost above.
    lost = (total < 32) & ((high >> jnp.minimum(total, 31)) != 0)
    int32_max = jnp.uint32(2 ** 31 - 1)
    result = jnp.where(lost | (result > int32_max), int32_max, result).astype(jnp.int32)
    return sign * result
