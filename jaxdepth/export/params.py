"""Export-time parameter math: integer weights, biases and scales of the exported nodes.

Why this module: run op by op in JAX (the blocks' ``export`` branches are eager), every
primitive compiles once per new shape: about 350 XLA compilations, ~30 s for a small
model. Here each kind of node runs one jitted function on arrays padded to a few bucket
shapes (kernels as (rows, channels) zero-padded rows, per-channel vectors edge-padded:
neither changes an elementwise result or a max), so an export compiles a handful.

The math must be jitted, not numpy: the fake-quant forward runs under ``jax.jit``, where
XLA turns ``x / broadcast(scale)`` into ``x * (1 / scale)`` and contracts multiply-adds
into FMAs. A weight that numpy rounds from exactly 63.5 is 63.499996 there: one weight
code apart, and the integer graph no longer is the fake-quant graph. The same functions
(``quant.integer_ops``), with the same broadcasts, jitted, give the same bits.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from jaxdepth.quant import integer_ops as iops
from jaxdepth.quant import numerics as qn

_MIN_BUCKET = 512


def _bucket(n: int) -> int:
    """Padded length: a power of two, at least 512 (one compilation for most sizes)."""
    return max(_MIN_BUCKET, 1 << (n - 1).bit_length())


def _pad_vector(v, size: int) -> np.ndarray:
    v = np.asarray(v, np.float32)
    return np.pad(v, (0, size - len(v)), mode="edge") if v.ndim == 1 else v


def _multiplier(prefix: str, m: iops.Multiplier) -> dict[str, np.ndarray]:
    return {f"{prefix}multiplier": np.asarray(m[0]), f"{prefix}shift": np.asarray(m[1])}


@functools.partial(jax.jit, static_argnames=("bn", "per_channel"))
def _conv_math(k2d, gamma, beta, mean, var, bias, x_scale, out_scale, bn: bool, per_channel: bool):
    """The ``fake`` conv's parameter expressions on a (kh * kw * cin, cout) kernel."""
    k_eff, b_eff = iops.fold_batch_norm(k2d, gamma, beta, mean, var) if bn else (k2d, bias)
    p = iops.conv_params(k_eff, b_eff, x_scale, per_channel)
    return (k_eff, b_eff, p.weight.astype(jnp.int8), p.weight_scale, p.bias.astype(jnp.int32),
            iops.rescale(p.acc_scale, out_scale))


def conv(k, gamma, beta, mean, var, bias, x_scale: float, out_scale: float, per_channel: bool
         ) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """(folded kernel, folded bias, int params) of a conv.

    ``gamma`` .. ``var`` are None for a conv without BatchNorm (then ``bias`` is used).
    """
    k = np.asarray(k, np.float32)
    rows, c = int(np.prod(k.shape[:-1])), k.shape[-1]
    cols = _bucket(c)
    bn = gamma is not None
    vectors = [None if v is None else _pad_vector(v, cols) for v in (gamma, beta, mean, var, bias)]
    k2d = np.pad(k.reshape(rows, c), ((0, _bucket(rows) - rows), (0, 0)))
    k2d = np.pad(k2d, ((0, 0), (0, cols - c)), mode="edge")
    k_eff, b_eff, weight, w_scale, bias_codes, m = (jax.tree.map(np.asarray, a) for a in _conv_math(
        k2d, *vectors, np.float32(x_scale), np.float32(out_scale),
        bn=bn, per_channel=per_channel))
    if per_channel:
        w_scale, m = w_scale[:c], tuple(a[:c] for a in m)
    params = {"weight": weight[:rows, :c].reshape(k.shape), "bias": bias_codes[:c],
              "weight_scale": w_scale, **_multiplier("", m)}
    return k_eff[:rows, :c].reshape(k.shape), b_eff[:c], params


@functools.partial(jax.jit, static_argnums=3)
def _sum_math(x_scales, coeff_scales, out_scale, left_shift: int):
    terms = x_scales if coeff_scales is None else [x * c for x, c in zip(x_scales, coeff_scales)]
    return iops.sum_multipliers(terms, out_scale, left_shift)


def sum_multipliers(x_scales: list[float], coeff_scales: list | None, out_scale: float,
                    left_shift: int) -> dict[str, np.ndarray]:
    """Multipliers of an add, or of a fusion whose inputs are multiplied by coefficients
    of scales ``coeff_scales`` (``integer_ops.sum_multipliers``), jitted."""
    as_f32 = lambda xs: None if xs is None else [np.float32(x) for x in xs]
    inputs, output = _sum_math(as_f32(x_scales), as_f32(coeff_scales), np.float32(out_scale),
                               left_shift)
    params = _multiplier("output_", output)
    for i, m in enumerate(inputs):
        params.update(_multiplier(f"input{i}_", m))
    return params


@jax.jit
def _rescale(from_scale, to_scale):
    return iops.rescale(from_scale, to_scale)


def rescale(prefix: str, from_scale: float, to_scale: float) -> dict[str, np.ndarray]:
    """``integer_ops.rescale`` of two scalar scales, jitted, as ``{prefix}multiplier`` and
    ``{prefix}shift``."""
    return _multiplier(prefix, _rescale(np.float32(from_scale), np.float32(to_scale)))


@jax.jit
def _fusion_math(w, b, out_scale):
    return iops.fusion_gates(w), iops.fusion_bias(b, out_scale).astype(jnp.int32)


def fusion_gates(w, b, out_scale: float) -> tuple[tuple[iops.Gate, iops.Gate], np.ndarray]:
    """The quantized gates of a fusion (codes as int8) and its int32 bias codes."""
    c = len(w)
    size = _bucket(c)
    gates, bias = _fusion_math(_pad_vector(w, size), _pad_vector(b, size), np.float32(out_scale))
    cut = lambda a: np.asarray(a)[:c] if np.ndim(a) == 1 else np.asarray(a)
    gates = tuple(iops.Gate(cut(g.value), cut(g.scale), cut(g.codes).astype(np.int8)) for g in gates)
    return gates, cut(bias)


@functools.partial(jax.jit, static_argnums=2)
def activation_qparams(lo, hi, fmt: qn.Format):
    """``numerics.activation_qparams``, jitted (one compilation for all observers)."""
    return qn.activation_qparams(lo, hi, fmt)


@functools.partial(jax.jit, static_argnums=0)
def _sigmoid_table(fmt: qn.Format, zero_point, scale):
    return iops.sigmoid_table(fmt, zero_point, scale).astype(jnp.uint8)


def sigmoid_table(fmt: qn.Format, zero_point: float, scale: float) -> np.ndarray:
    """uint8 head code for every input code of ``fmt`` (``integer_ops.sigmoid_table``)."""
    return np.asarray(_sigmoid_table(fmt, np.float32(zero_point), np.float32(scale)))
