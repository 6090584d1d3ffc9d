"""What AQT computes in jaxdepth's INT8 simulation, behind one small interface.

AQT (aqtp 0.9.0, ``aqt.jax.v2``) quantizes every float tensor that enters the integer
model, with its own calibration and integer numerics:

* weights (conv kernels with BatchNorm folded in, fusion gates): AQT's ``AbsMaxCalibration``
  (one scale per tensor, the NPU's rule, or one per output channel) and its 8-bit
  symmetric numerics: codes ``round_half_even(w * (1 / scale))`` in [-127, 127];
* the model inputs: AQT's quantizer with the static per-tensor scale of the input's fixed
  range, handed over as an *incomplete QTensor* (AQT's extension point for static scales),
  and its 9-bit symmetric numerics, which hold every ``code - zero_point`` of a uint8 or
  int8 tensor in [-255, 255].

jaxdepth closes what AQT 0.9.0 does not do (tests/test_aqt_backend.py shows each gap):

* asymmetric activations: AQT's numerics are symmetric; jaxdepth adds the zero point and
  clips to the uint8 range after AQT rounds;
* exact integer accumulation: AQT's conv (``aqt_conv_general``) casts the integer codes back
  to the input's float dtype and convolves in float32, exact only while partial sums stay
  below 2**24; ``integer_ops.conv_accumulate`` accumulates exactly;
* gradients: AQT's conv is forward-only; the fake-quant forward's straight-through
  estimators live in ``models.layers``.

Nothing else in jaxdepth imports AQT, so a second backend (e.g. Qwix) replaces this file.
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from aqt.jax.v2 import aqt_quantizer, aqt_tensor

from jaxdepth.quant.numerics import Format

WEIGHT_BITS = 8      # codes in [-127, 127] (AQT keeps zero and the maximum exact)
CENTERED_BITS = 9    # code - zero_point of an 8-bit activation lies in [-255, 255]


@functools.cache
def _weight_quantizer(per_channel: bool) -> aqt_quantizer.Quantizer:
    q = aqt_quantizer.quantizer_make(WEIGHT_BITS, preserve_max_val=True)
    return q if per_channel else dataclasses.replace(q, calib_shared_axes="per_tensor")


@functools.cache
def _input_quantizer() -> aqt_quantizer.Quantizer:
    return aqt_quantizer.quantizer_make(CENTERED_BITS, initialize_calibration=False)


def quantize_weights(w: jax.Array, per_channel: bool) -> tuple[jax.Array, jax.Array]:
    """AQT's int8 codes (int32) and scale of a weight tensor whose last axis is the output
    channel: scale shape () per tensor, (C,) per channel. An all-zero tensor or channel
    gets scale 1/127 (AQT's rule) and codes 0."""
    w = jax.lax.stop_gradient(w)
    qt, _ = _weight_quantizer(per_channel).quant(w, calibration_axes=list(range(w.ndim - 1)))
    scale = qt.scale[0]
    scale = scale.reshape(scale.shape[-1]) if per_channel else scale.reshape(())
    return qt.qvalue.astype(jnp.int32), scale


def quantize_input(x: jax.Array, scale: jax.Array, zero_point: jax.Array, fmt: Format) -> jax.Array:
    """int32 codes of a float tensor with a static per-tensor scale: AQT rounds
    ``x / scale`` (9-bit symmetric), jaxdepth adds the zero point and clips to ``fmt``."""
    static = aqt_tensor.QTensor(qvalue=None, scale=[jnp.reshape(scale, (1,) * x.ndim)],
                                scale_t=None, bias=[], dequant_dtype=x.dtype)
    qt, _ = _input_quantizer().calculate_qvalue(x, static)
    return jnp.clip(qt.qvalue.astype(jnp.int32) + zero_point, fmt.qmin, fmt.qmax)
