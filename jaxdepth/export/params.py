"""Export-time parameter math: integer weights, biases and scales of the exported nodes.

Why this module: run op by op in JAX (the blocks' ``export`` branches are eager), every
primitive compiles once per new shape, about 350 XLA compilations (~30 s) for a small
model. Here the kernel-sized math is numpy and the per-channel math is a few jitted
functions on vectors edge-padded to one length (elementwise math and max are unchanged
by repeating an element), so an export compiles about five small functions.

Which side computes what follows the fake-quant forward, which runs under ``jax.jit``:

* Kernel-sized steps (``k * inv``, ``|k|`` max, ``k / scale``, round half away, clip) are
  single IEEE float32 operations that XLA neither fuses nor rewrites, so numpy gives the
  same bits.
* Per-channel and scalar steps (``rsqrt``, ``sigmoid``, ``beta - mean * inv``, ``/ 127``)
  are where XLA contracts multiply-adds into FMAs and turns division by a constant into a
  multiplication: they are jitted here too, through the functions of ``quant.numerics``.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from jaxdepth.quant import numerics as qn

BN_EPS = 1e-5   # layers.BN_EPS (not imported: layers imports this module)


def _bucket(n: int) -> int:
    """The padded length of a per-channel vector: one compilation for all channel counts."""
    return max(512, 1 << (n - 1).bit_length())


def _padded(fn, n: int, *args):
    """``fn`` on its 1-D arguments edge-padded to ``_bucket(n)``; 1-D results cut to ``n``."""
    size = _bucket(n)
    args = [np.pad(a, (0, size - n), mode="edge") if np.ndim(a) == 1 else a
            for a in (np.asarray(a, np.float32) for a in args)]
    return jax.tree.map(lambda r: np.asarray(r)[:n] if np.ndim(r) == 1 else np.asarray(r), fn(*args))


def _round_half_away(x: np.ndarray) -> np.ndarray:
    """``numerics.round_half_away`` in numpy, the same float32 operations."""
    return np.sign(x) * np.floor(np.abs(x) + np.float32(0.5))


@jax.jit
def _bn_fold_vectors(gamma, beta, mean, var):
    """BatchNorm folding factors, as ``layers.Conv._folded`` computes them."""
    inv = gamma * jax.lax.rsqrt(var + BN_EPS)
    return inv, beta - mean * inv


@functools.partial(jax.jit, static_argnames="per_channel")
def _scales_and_bias(absmax, b_eff, x_scale, per_channel: bool):
    """Weight scale (from the kernel's |max|), accumulator scale and int32 bias codes."""
    w_scale = qn.weight_scale(absmax[None] if per_channel else absmax, per_channel)
    acc_scale = x_scale * w_scale
    return w_scale, acc_scale, qn.round_half_away(b_eff / acc_scale).astype(jnp.int32)


def conv(k, gamma, beta, mean, var, bias, x_scale: float, per_channel: bool
         ) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray], np.ndarray]:
    """(folded kernel, folded bias, int params, accumulator scale) of a conv.

    ``gamma`` .. ``var`` are None for a conv without BatchNorm (then ``bias`` is used).
    """
    k = np.asarray(k, np.float32)
    if gamma is None:
        k_eff, b_eff = k, np.asarray(bias, np.float32)
    else:
        inv, b_eff = _padded(_bn_fold_vectors, k.shape[-1], gamma, beta, mean, var)
        k_eff = k * inv
    absmax = np.max(np.abs(k_eff), axis=(0, 1, 2) if per_channel else None)
    w_scale, acc_scale, bias_codes = _padded(
        functools.partial(_scales_and_bias, per_channel=per_channel), k.shape[-1],
        absmax, b_eff, np.float32(x_scale))
    q = qn.WEIGHT_INT8
    weight = np.clip(_round_half_away(k_eff / w_scale) + np.float32(0.0), q.qmin, q.qmax)
    params = {"weight": weight.astype(np.int8), "bias": bias_codes, "weight_scale": w_scale}
    return k_eff, b_eff, params, acc_scale


@jax.jit
def _gates(w, b, out_scale):
    """Fusion gates s(w), 1 - s(w) as int8 codes with their per-tensor scales, and the bias
    codes at the output scale (the expressions of ``layers.Fusion``)."""
    g_rgb = jax.nn.sigmoid(w)
    g_sparse = 1.0 - g_rgb
    out = []
    for gv in (g_rgb, g_sparse):
        scale = qn.weight_scale(gv, False)
        out.append((gv, scale, qn.quantize(gv, scale, 0.0, qn.WEIGHT_INT8).astype(jnp.int8)))
    return out, qn.round_half_away(b / out_scale).astype(jnp.int32)


def fusion_gates(w, b, out_scale: float) -> tuple[list[tuple[np.ndarray, ...]], np.ndarray]:
    """[(gate, scale, int8 codes) for rgb, sparse] and the int32 bias codes."""
    gates, bias = _padded(_gates, len(w), w, b, np.float32(out_scale))
    return [tuple(g) for g in gates], bias


@functools.partial(jax.jit, static_argnums=2)
def activation_qparams(lo, hi, fmt: qn.Format):
    """``numerics.activation_qparams``, jitted (one compilation for all observers)."""
    return qn.activation_qparams(lo, hi, fmt)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _sigmoid_table(fmt: qn.Format, out_fmt: qn.Format, zero_point, scale):
    codes = jnp.arange(fmt.qmin, fmt.qmax + 1, dtype=jnp.float32)
    s = jax.nn.sigmoid((codes - zero_point) * scale)
    out_scale, out_zp = qn.fixed_qparams(0.0, 1.0, out_fmt)
    return qn.quantize(s, out_scale, out_zp, out_fmt).astype(jnp.uint8)


def sigmoid_table(fmt: qn.Format, zero_point: float, scale: float) -> np.ndarray:
    """uint8 head code for every input code of ``fmt`` (the fake forward's sigmoid)."""
    return np.asarray(_sigmoid_table(fmt, qn.UINT8, np.float32(zero_point), np.float32(scale)))
