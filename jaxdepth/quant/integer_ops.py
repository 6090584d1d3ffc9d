"""The integer arithmetic of every NPU op, and the derivation of its integer parameters.

Two callers share these kernels:

* the fake-quant forward (``models.layers``, QAT and fake-quant evaluation) derives each
  layer's integer parameters once, with the functions below, and computes every layer's
  output codes with the kernels below (gradients flow through a float surrogate, see
  ``numerics.straight_through``); the exporter takes the very parameters that forward
  computed (``export.exporter``);
* the integer runtime (``export.integer``) runs the same kernels on the exported arrays.

Parameter functions take float32 arrays and return float32 scales and int32 codes.
Kernels take int32 ``code - zero_point`` values and return int32 output codes, clamped to
the output format (at the zero point after a ReLU).
"""
from __future__ import annotations

import functools
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp

from jaxdepth.quant import aqt_backend
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
def bn_factor(gamma: jax.Array, var: jax.Array) -> jax.Array:
    """The per-output-channel factor BatchNorm folds into a kernel (and unfolding divides out)."""
    return gamma * jax.lax.rsqrt(var + BN_EPS)


def fold_batch_norm(k: jax.Array, gamma: jax.Array, beta: jax.Array, mean: jax.Array,
                    var: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Kernel and bias with BatchNorm's running statistics folded in (the NPU's BN).
    ``k``'s last axis is the output channel."""
    inv = bn_factor(gamma, var)
    return k * inv, beta - mean * inv


def rescale(from_scale: jax.Array, to_scale: jax.Array) -> Multiplier:
    """The fixed-point multiplier that takes codes of one scale to another."""
    return qn.quantize_multiplier(from_scale / to_scale)


class ConvParams(NamedTuple):
    """A conv's quantized weights: int8 codes with their scale, and int32 bias codes at
    the accumulator scale (input scale x weight scale)."""

    weight: jax.Array         # int32 codes in [-127, 127]
    weight_scale: jax.Array   # scalar, or one per output channel
    acc_scale: jax.Array
    bias: jax.Array           # int32 codes


def conv_params(k: jax.Array, b: jax.Array, x_scale: jax.Array, per_channel: bool) -> ConvParams:
    """Quantizes a (BN-folded) kernel (by AQT) and its bias for inputs of scale ``x_scale``."""
    codes, w_scale = aqt_backend.quantize_weights(k, per_channel)
    acc_scale = x_scale * w_scale
    bias = qn.round_half_away(jax.lax.stop_gradient(b) / acc_scale)
    return ConvParams(codes, w_scale, acc_scale, bias.astype(jnp.int32))


_F32_EXACT = 2 ** 24     # float32 holds every integer below this exactly
_MAX_PRODUCT = 255 * 127  # |code - zero_point| * |weight code|


def accumulator_groups(kernel_size: int, cin: int, name: str) -> int:
    """How many input-channel groups ``conv_accumulate`` splits a conv into so that no
    float32 partial sum can reach 2**24; raises ``ValueError`` naming the layer when the
    int32 accumulator itself could overflow."""
    if kernel_size * cin * _MAX_PRODUCT >= 2 ** 31:
        raise ValueError(f"{name}: a {kernel_size}-tap x {cin}-channel conv can overflow the "
                         "int32 accumulator (255 * 127 per product); split the layer")
    per_group = max(1, (_F32_EXACT - 1) // (kernel_size * _MAX_PRODUCT))
    return -(-cin // per_group)


def conv_accumulate(x: jax.Array, w: jax.Array, strides: tuple[int, int],
                    padding: tuple[tuple[int, int], ...], name: str = "conv") -> jax.Array:
    """The int32 accumulator ``sum((x - zp) * w)`` of int32 ``code - zero_point`` inputs
    (NHWC; zero padding is the zero point) and int8 weight codes (HWIO), exactly, on any
    backend.

    Float32 convolutions at HIGHEST precision, one per group of input channels small
    enough that every partial sum is an integer below 2**24 (``accumulator_groups``): each
    float32 addition is then exact in any order, and the groups are summed in int32.
    """
    kh, kw, cin, _ = w.shape
    groups = accumulator_groups(kh * kw, cin, name)
    per = -(-cin // groups)
    xf, wf = x.astype(jnp.float32), w.astype(jnp.float32)
    acc = None
    for lo in range(0, cin, per):
        part = jax.lax.conv_general_dilated(
            xf[..., lo:lo + per], wf[:, :, lo:lo + per], strides, padding,
            dimension_numbers=("NHWC", "HWIO", "NHWC"), precision=jax.lax.Precision.HIGHEST)
        part = part.astype(jnp.int32)
        acc = part if acc is None else acc + part
    return acc


def integer_convolutions() -> bool:
    """Whether the backend compiling the integer forward runs int8 products (XLA:CPU)."""
    return jax.default_backend() == "cpu"


def int8_conv_accumulate(x8: jax.Array, w: jax.Array, strides: tuple[int, int]) -> jax.Array:
    """The int32 accumulator ``sum(x8 * w)`` of int8 inputs, padded already (no padding
    here), and int8 weight codes (HWIO), in integer arithmetic.

    On XLA:CPU every conv gathers its k x k input patches (im2col) and takes one int8
    matrix product with int32 accumulation: in the default model's integer forward that
    takes about 0.6x the time of XLA's own int8 convolution (``docs/speed.md``). XLA:GPU
    implements no integer convolution (it fails with UNIMPLEMENTED), so on other backends
    the same sum runs as ``conv_accumulate``'s exact float32 groups.
    """
    kh, kw, cin, cout = w.shape
    if not integer_convolutions():
        return conv_accumulate(x8.astype(jnp.int32), w, strides, ((0, 0), (0, 0)))
    (sh, sw), (_, h, wd, _) = strides, x8.shape
    oh, ow = (h - kh) // sh + 1, (wd - kw) // sw + 1
    patches = jnp.concatenate([x8[:, i:i + sh * (oh - 1) + 1:sh, j:j + sw * (ow - 1) + 1:sw]
                               for i in range(kh) for j in range(kw)], axis=-1)
    return jax.lax.dot_general(patches, w.reshape(kh * kw * cin, cout), (((3,), (0,)), ((), ())),
                               preferred_element_type=jnp.int32)


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
    codes: jax.Array          # int32


def coefficient(g: jax.Array) -> Gate:
    """One coefficient vector of a fusion, quantized per tensor (AQT)."""
    codes, scale = aqt_backend.quantize_weights(g, per_channel=False)
    return Gate(g, scale, codes)


def fusion_gates(w: jax.Array) -> tuple[Gate, Gate]:
    """The gates s(w) (RGB) and 1 - s(w) (sparse) of a fusion."""
    return coefficient(jax.nn.sigmoid(w)), coefficient(1.0 - jax.nn.sigmoid(w))


def fusion_bias(b: jax.Array, out_scale: jax.Array) -> jax.Array:
    """The fusion's bias as int32 codes at the output scale (added after the rescale)."""
    return qn.round_half_away(jax.lax.stop_gradient(b) / out_scale).astype(jnp.int32)


# ---------------------------------------------------------------------------------------
# Output head
# ---------------------------------------------------------------------------------------
HEAD_FORMAT = qn.UINT8
HEAD_RANGE = (0.0, 1.0)
CORRECTION_RANGE = (-1.0, 1.0)   # a linear head's companded correction (encodings.FillCorrection)


def _phase_offsets(phases: int, out_range: tuple[float, float]) -> jax.Array:
    """(phases,): i / phases of one uint8 output code of ``out_range``, i = 0 .. phases - 1."""
    scale, _ = qn.fixed_qparams(*out_range, HEAD_FORMAT)
    return scale * jnp.arange(phases, dtype=jnp.float32) / phases


def spread_phases(x: jax.Array, phases: int, out_range: tuple[float, float]) -> jax.Array:
    """(..., C) -> (..., C * phases): each channel repeated, copy i raised by i / phases of
    one output code of ``out_range``. A head conv's kernel is repeated and its bias spread
    so: the copies compute one value and round it at staggered points, so the uint8 codes
    of all of them together (``merge_phases``) hold it ``phases`` times finer than one code."""
    if phases == 1:
        return x
    return jnp.repeat(x, phases, axis=-1) + jnp.tile(_phase_offsets(phases, out_range), x.shape[-1])


def merge_phases(x: jax.Array, phases: int, out_range: tuple[float, float]) -> jax.Array:
    """(..., C * phases) -> (..., C): the inverse of ``spread_phases`` on real values, the
    mean of each channel's copies less their offsets. On the copies' dequantized codes the
    error is at most half a code / ``phases`` (away from the range's ends)."""
    if phases == 1:
        return x
    copies = x.reshape(x.shape[:-1] + (-1, phases))
    return (copies - _phase_offsets(phases, out_range)).mean(-1)


def head_codes(x: jax.Array) -> jax.Array:
    """uint8 head codes (int32) of head outputs ``x`` in [0, 1]."""
    out_scale, out_zp = qn.fixed_qparams(*HEAD_RANGE, HEAD_FORMAT)
    return qn.quantize(x, out_scale, out_zp, HEAD_FORMAT)


def sigmoid_table(fmt: qn.Format, zero_point: jax.Array, scale: jax.Array) -> jax.Array:
    """uint8 head code (int32) of the logistic of every input code of ``fmt``."""
    codes = jnp.arange(fmt.qmin, fmt.qmax + 1, dtype=jnp.int32)
    return head_codes(jax.nn.sigmoid((codes - zero_point).astype(jnp.float32) * scale))


def lookup(table: jax.Array, codes: jax.Array, fmt: qn.Format) -> jax.Array:
    """Table entry of each code of format ``fmt`` (a 256-entry NPU lookup)."""
    return jnp.take(table, codes.astype(jnp.int32) - fmt.qmin, axis=0)


# ---------------------------------------------------------------------------------------
# Ops that move codes without arithmetic
# ---------------------------------------------------------------------------------------
def max_pool(codes: jax.Array, window: int, stride: int, padding: int, fmt: qn.Format) -> jax.Array:
    """Max over windows; the padding holds qmin, which never wins (a -inf)."""
    return jax.lax.reduce_window(codes, jnp.array(fmt.qmin, codes.dtype), jax.lax.max,
                                 (1, window, window, 1), (1, stride, stride, 1),
                                 ((0, 0), (padding, padding), (padding, padding), (0, 0)))


def upsample(codes: jax.Array, factor: int) -> jax.Array:
    """Nearest-neighbour upsampling (NHWC)."""
    return jnp.repeat(jnp.repeat(codes, factor, axis=1), factor, axis=2)
