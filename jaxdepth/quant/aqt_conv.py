"""The INT8 convolution of the training graph, computed by AQT.

AQT (``aqt.jax.v2``) quantizes both operands of ``conv_general_dilated`` and convolves the
integer values. Out of the box it does three things the NPU does not; each is closed here
through AQT's own extension points or a thin wrapper:

* Dynamic per-example activation scales -> we hand AQT *incomplete QTensors* with static
  scales (``make_conv_general_dilated_with_qt(lhs_qt=..., rhs_qt=...)``), so its
  calibration is replaced (and removed by XLA as dead code).
* Symmetric numerics only -> AQT receives the integers themselves, ``code - zero_point``
  of the input and the int8 weight codes, with unit scales. Its 9-bit symmetric numerics
  hold every ``code - zero_point`` in [-255, 255] exactly, so AQT returns the NPU's
  accumulator ``sum((x - zp) * w)`` (exact in float32 while partial sums stay below
  2**24 in magnitude) and the caller requantizes it with the integer arithmetic of
  ``quant.integer_ops``.
* No gradient (AQT's conv is forward-only) -> a straight-through estimator: the backward
  pass is the float convolution's VJP at the fake-quantized operands.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from aqt.jax.v2 import aqt_conv_general, aqt_tensor

from jaxdepth.quant.numerics import QValue

_LHS_BITS = 9   # code - zero_point of a uint8 or int8 tensor lies in [-255, 255]
_RHS_BITS = 8   # int8 weights in [-127, 127]
_DIMS = ("NHWC", "HWIO", "NHWC")


@functools.cache
def _aqt_conv():
    cfg = aqt_conv_general.conv_general_dilated_make(2, lhs_bits=_LHS_BITS, rhs_bits=_RHS_BITS)
    return aqt_conv_general.make_conv_general_dilated_with_qt(cfg)


def _unit_qtensor(ndim: int) -> aqt_tensor.QTensor:
    return aqt_tensor.QTensor(qvalue=None, scale=[jnp.ones((1,) * ndim, jnp.float32)], scale_t=None,
                              bias=[], dequant_dtype=jnp.float32)


def _float_conv(x, w, strides, padding):
    dn = jax.lax.conv_dimension_numbers(x.shape, w.shape, _DIMS)
    return jax.lax.conv_general_dilated(x, w, strides, padding, dimension_numbers=dn)


def aqt_accumulate(x_int: jax.Array, w_int: jax.Array, strides: tuple[int, int],
                   padding: tuple[tuple[int, int], ...]) -> jax.Array:
    """AQT's integer convolution of ``code - zero_point`` inputs and int8 weight codes
    (both float32 holding integers): the int32 accumulator, as float32."""
    dn = jax.lax.conv_dimension_numbers(x_int.shape, w_int.shape, _DIMS)
    out, _ = _aqt_conv()(x_int, w_int, strides, padding,
                         lhs_qt=_unit_qtensor(x_int.ndim), rhs_qt=_unit_qtensor(w_int.ndim),
                         dimension_numbers=dn)
    return out


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _dequantized(x, w, y, strides, padding):
    return y


def _dq_fwd(x, w, y, strides, padding):
    return y, (x, w)


def _dq_bwd(strides, padding, res, g):
    x, w = res
    _, vjp = jax.vjp(lambda a, b: _float_conv(a, b, strides, padding), x, w)
    gx, gw = vjp(g)
    return gx, gw, jnp.zeros_like(g)


_dequantized.defvjp(_dq_fwd, _dq_bwd)


def int8_conv(x: QValue, w: jax.Array, w_codes: jax.Array, w_scale: jax.Array,
              strides: tuple[int, int], padding: tuple[tuple[int, int], ...]
              ) -> tuple[jax.Array, jax.Array]:
    """INT8 convolution of a fake-quantized input and weights ``w = w_codes * w_scale``.

    Returns the accumulator (float32 holding the int32 value; no gradient) and its real
    value ``acc * x_scale * w_scale``, whose gradient is the float convolution's.
    """
    acc = aqt_accumulate(jax.lax.stop_gradient(x.centered().astype(jnp.float32)),
                         jax.lax.stop_gradient(w_codes), strides, padding)
    return acc, _dequantized(x.value, w, acc * x.scale * w_scale, strides, padding)
