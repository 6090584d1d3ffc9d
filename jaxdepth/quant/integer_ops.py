"""The integer arithmetic of every NPU op, and the derivation of its integer parameters.

Three callers share these functions, which is what makes the exported integer model the
fake-quant model by construction:

* the fake-quant forward (``models.layers`` in ``fake`` mode, i.e. QAT and fake-quant
  evaluation) derives the parameters in its graph and computes every layer's output codes
  with the integer kernels below (gradients flow through a float surrogate, see
  ``numerics.straight_through``);
* the exporter (``export.params``) derives the same parameters, jitted, from the same
  float32 inputs;
* the integer runtime (``export.integer``) runs the same kernels on the exported arrays.

Parameter functions take and return jnp arrays (float32 in, float32 holding exact
integers or int32 out). Kernels take int32 ``code - zero_point`` values and return int32
output codes, clamped to the output format (at the zero point after a ReLU).
"""
from __future__ import annotations

import functools
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp

from jaxdepth.quant import numerics as qn

BN_EPS = 1e-5
ADD_LEFT_SHIFT = 20      # headroom bits when summing requantized int8 inputs (as TFLite ADD)
FUSION_LEFT_SHIFT = 15   # gate products are int8 x int8, so fewer bits fit in int32

Multiplier = tuple[jax.Array, jax.Array]   # (int32 m, int32 shift), see numerics.requantize


def clamp(y: jax.Array, fmt: qn.Format, lower: jax.Array | int | None = None) -> jax.Array:
    """Saturates int32 codes to ``fmt``; ``lower`` (the zero point) clamps a fused ReLU."""
    return jnp.clip(y, fmt.qmin if lower is None else lower, fmt.qmax)


# ---------------------------------------------------------------------------------------
# Convolution
# ---------------------------------------------------------------------------------------
def fold_batch_norm(k: jax.Array, gamma: jax.Array, beta: jax.Array, mean: jax.Array,
                    var: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Kernel and bias with BatchNorm's running statistics folded in (the NPU's BN).
    ``k``'s last axis is the output channel."""
    inv = gamma * jax.lax.rsqrt(var + BN_EPS)
    return k * inv, beta - mean * inv


def rescale(from_scale: jax.Array, to_scale: jax.Array) -> Multiplier:
    """The fixed-point multiplier that takes codes of one scale to another."""
    return qn.quantize_multiplier(from_scale / to_scale)


class ConvParams(NamedTuple):
    """A conv's quantized weights: int8 codes with their scale, and int32 bias codes at
    the accumulator scale (input scale x weight scale)."""

    weight: jax.Array         # int8 codes, as float32
    weight_scale: jax.Array   # scalar, or one per output channel
    acc_scale: jax.Array
    bias: jax.Array           # int32 codes, as float32


def conv_params(k: jax.Array, b: jax.Array, x_scale: jax.Array, per_channel: bool) -> ConvParams:
    """Quantizes a (BN-folded) kernel and bias for inputs of scale ``x_scale``."""
    w_scale = qn.weight_scale(k, per_channel)
    acc_scale = x_scale * w_scale
    return ConvParams(qn.quantize(k, w_scale, 0.0, qn.WEIGHT_INT8), w_scale, acc_scale,
                      qn.round_half_away(b / acc_scale))


def conv_output(acc: jax.Array, bias: jax.Array, multiplier: Multiplier, out_zp: jax.Array,
                fmt: qn.Format, relu: bool) -> jax.Array:
    """Output codes of a conv from its int32 accumulator sum((x - zp) * w)."""
    y = qn.requantize(acc + bias, *multiplier) + out_zp
    return clamp(y, fmt, out_zp if relu else None)


# ---------------------------------------------------------------------------------------
# Elementwise sums (residual add, fusion) and concat
# ---------------------------------------------------------------------------------------
def sum_multipliers(term_scales: Sequence[jax.Array], out_scale: jax.Array,
                    left_shift: int) -> tuple[list[Multiplier], Multiplier]:
    """TFLite ADD's rescaling: each term to the common scale ``2 * max(term scales) /
    2**left_shift``, then the sum to the output scale."""
    twice_max = 2.0 * functools.reduce(jnp.maximum, [jnp.max(t) for t in term_scales])
    inputs = [qn.quantize_multiplier(t / twice_max) for t in term_scales]
    return inputs, qn.quantize_multiplier(twice_max / (2.0 ** left_shift * out_scale))


def sum_output(terms: Sequence[jax.Array], left_shift: int, inputs: Sequence[Multiplier],
               output: Multiplier, out_zp: jax.Array, fmt: qn.Format, relu: bool = False,
               bias: jax.Array | None = None) -> jax.Array:
    """Output codes of ``sum(terms)``: each int32 term (``code - zp``, times an int8
    coefficient for a fusion) shifted left, rescaled to the common scale, summed, rescaled
    to the output, plus the bias codes and the zero point."""
    total = jnp.int32(0)
    for term, m in zip(terms, inputs):
        total = total + qn.requantize(jnp.left_shift(term, left_shift), *m)
    y = qn.requantize(total, *output) + out_zp
    if bias is not None:
        y = y + bias
    return clamp(y, fmt, out_zp if relu else None)


def concat_output(terms: Sequence[jax.Array], inputs: Sequence[Multiplier], out_zp: jax.Array,
                  fmt: qn.Format) -> jax.Array:
    """Channel concat, each input (``code - zp``) requantized to the output's one scale."""
    return jnp.concatenate([clamp(qn.requantize(t, *m) + out_zp, fmt)
                            for t, m in zip(terms, inputs)], axis=-1)


class Gate(NamedTuple):
    """One fusion coefficient vector: real values and their int8 codes (one scale)."""

    value: jax.Array
    scale: jax.Array
    codes: jax.Array          # as float32


def fusion_gates(w: jax.Array) -> tuple[Gate, Gate]:
    """The gates s(w) (RGB) and 1 - s(w) (sparse) of a fusion, quantized per tensor."""
    gates = []
    for g in (jax.nn.sigmoid(w), 1.0 - jax.nn.sigmoid(w)):
        scale = qn.weight_scale(g, False)
        gates.append(Gate(g, scale, qn.quantize(g, scale, 0.0, qn.WEIGHT_INT8)))
    return gates[0], gates[1]


def fusion_bias(b: jax.Array, out_scale: jax.Array) -> jax.Array:
    """The fusion's bias as codes at the output scale (added after the rescale)."""
    return qn.round_half_away(b / out_scale)


# ---------------------------------------------------------------------------------------
# Output head
# ---------------------------------------------------------------------------------------
HEAD_FORMAT = qn.UINT8
HEAD_RANGE = (0.0, 1.0)


def sigmoid_table(fmt: qn.Format, zero_point: jax.Array, scale: jax.Array) -> jax.Array:
    """uint8 head code (int32) of the logistic of every input code of ``fmt``."""
    codes = jnp.arange(fmt.qmin, fmt.qmax + 1, dtype=jnp.float32)
    s = jax.nn.sigmoid((codes - zero_point) * scale)
    out_scale, out_zp = qn.fixed_qparams(*HEAD_RANGE, HEAD_FORMAT)
    return qn.quantize(s, out_scale, out_zp, HEAD_FORMAT).astype(jnp.int32)


def lookup(table: jax.Array, codes: jax.Array, fmt: qn.Format) -> jax.Array:
    """Table entry of each code of format ``fmt`` (a 256-entry NPU lookup)."""
    return jnp.take(table, codes.astype(jnp.int32) - fmt.qmin, axis=0)
