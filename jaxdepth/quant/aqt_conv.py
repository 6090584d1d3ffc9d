"""The INT8 convolution of the training graph, computed by AQT with static scales.

AQT (``aqt.jax.v2``) quantizes both operands of ``conv_general_dilated`` and convolves the
integer values. Out of the box it does three things the NPU does not; each is closed here
through AQT's own extension points:

* Dynamic per-example activation scales -> we hand AQT *incomplete QTensors* carrying our
  static scales (``make_conv_general_dilated_with_qt(lhs_qt=..., rhs_qt=...)``), so its
  calibration is replaced (and removed by XLA as dead code).
* Symmetric numerics only -> the input arrives already fake-quantized by
  ``numerics.fake_quant`` with its zero point, i.e. as ``scale * (code - zero_point)``;
  AQT's 9-bit symmetric numerics hold every ``code - zero_point`` in [-255, 255] exactly,
  so AQT convolves the same integers the NPU's accumulator sees.
* No gradient (AQT's conv is forward-only) -> a straight-through estimator: the backward
  pass is the float convolution's VJP at the fake-quantized operands.

Weights likewise arrive fake-quantized (int8 symmetric, per-tensor or per-channel scale).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from aqt.jax.v2 import aqt_conv_general, aqt_tensor

_LHS_BITS = 9   # code - zero_point of a uint8 or int8 tensor lies in [-255, 255]
_RHS_BITS = 8   # int8 weights in [-127, 127]
_DIMS = ("NHWC", "HWIO", "NHWC")


@functools.cache
def _aqt_conv():
    cfg = aqt_conv_general.conv_general_dilated_make(2, lhs_bits=_LHS_BITS, rhs_bits=_RHS_BITS)
    return aqt_conv_general.make_conv_general_dilated_with_qt(cfg)


def _static_qtensor(scale: jax.Array, ndim: int) -> aqt_tensor.QTensor:
    scale = jnp.asarray(scale, jnp.float32)
    shape = (1,) * ndim if scale.ndim == 0 else (1,) * (ndim - 1) + scale.shape
    return aqt_tensor.QTensor(qvalue=None, scale=[scale.reshape(shape)], scale_t=None,
                              bias=[], dequant_dtype=jnp.float32)


def _float_conv(x, w, strides, padding):
    dn = jax.lax.conv_dimension_numbers(x.shape, w.shape, _DIMS)
    return jax.lax.conv_general_dilated(x, w, strides, padding, dimension_numbers=dn)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def int8_conv(x: jax.Array, w: jax.Array, x_scale: jax.Array, w_scale: jax.Array,
              strides: tuple[int, int], padding: tuple[tuple[int, int], ...]) -> jax.Array:
    """Convolution of fake-quantized ``x`` (scale ``x_scale``) and ``w`` (``w_scale``) by AQT."""
    dn = jax.lax.conv_dimension_numbers(x.shape, w.shape, _DIMS)
    out, _ = _aqt_conv()(x, w, strides, padding,
                         lhs_qt=_static_qtensor(x_scale, x.ndim),
                         rhs_qt=_static_qtensor(w_scale, w.ndim),
                         dimension_numbers=dn)
    return out


def _fwd(x, w, x_scale, w_scale, strides, padding):
    return int8_conv(x, w, x_scale, w_scale, strides, padding), (x, w, x_scale, w_scale)


def _bwd(strides, padding, res, g):
    x, w, x_scale, w_scale = res
    _, vjp = jax.vjp(lambda a, b: _float_conv(a, b, strides, padding), x, w)
    gx, gw = vjp(g)
    return gx, gw, jnp.zeros_like(x_scale), jnp.zeros_like(w_scale)


int8_conv.defvjp(_fwd, _bwd)
