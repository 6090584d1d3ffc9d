"""Export-time parameter math: integer weights, biases and scales of the exported nodes.

Why this module: run op by op in JAX (the blocks' ``export`` branches are eager), every
primitive compiles once per new shape: about 350 XLA compilations, ~30 s for a small
model. Here each kind of node runs one jitted function on arrays padded to a few bucket
shapes (kernels as (rows, channels) zero-padded rows, per-channel vectors edge-padded:
neither changes an elementwise result or a max), so an export compiles a handful.

The math must be jitted, not numpy: the fake-quant forward runs under ``jax.jit``, where
XLA turns ``x / broadcast(scale)`` into ``x * (1 / scale)`` and contracts multiply-adds
into FMAs. A weight that numpy rounds from exactly 63.5 is 63.499996 there: one weight
code apart, and the integer graph no longer is the fake-quant graph. The same
expressions (``quant.numerics``), with the same broadcasts, jitted, give the same bits.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from jaxdepth.quant import numerics as qn

BN_EPS = 1e-5   # layers.BN_EPS (not imported: layers imports this module)
_MIN_BUCKET = 512


def _bucket(n: int) -> int:
    """Padded length: a power of two, at least 512 (one compilation for most sizes)."""
    return max(_MIN_BUCKET, 1 << (n - 1).bit_length())


def _pad_vector(v, size: int) -> np.ndarray:
    v = np.asarray(v, np.float32)
    return np.pad(v, (0, size - len(v)), mode="edge") if v.ndim == 1 else v


@jax.jit
def _bn_fold_vectors(gamma, beta, mean, var):
    """BatchNorm folding factors, as ``layers.Conv._folded`` computes them."""
    inv = gamma * jax.lax.rsqrt(var + BN_EPS)
    return inv, beta - mean * inv


@functools.partial(jax.jit, static_argnames="per_channel")
def _conv_math(k2d, inv, b_eff, x_scale, per_channel: bool):
    """Folded kernel, weight scale, int8 weights, accumulator scale, int32 bias codes:
    the ``fake`` conv's expressions on a (kh * kw * cin, cout) kernel."""
    k_eff = k2d * inv
    w_scale = qn.weight_scale(k_eff, per_channel)
    weight = qn.quantize(k_eff, w_scale, 0.0, qn.WEIGHT_INT8).astype(jnp.int8)
    acc_scale = x_scale * w_scale
    return k_eff, w_scale, weight, acc_scale, qn.round_half_away(b_eff / acc_scale).astype(jnp.int32)


def conv(k, gamma, beta, mean, var, bias, x_scale: float, per_channel: bool
         ) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray], np.ndarray]:
    """(folded kernel, folded bias, int params, accumulator scale) of a conv.

    ``gamma`` .. ``var`` are None for a conv without BatchNorm (then ``bias`` is used).
    """
    k = np.asarray(k, np.float32)
    rows, c = int(np.prod(k.shape[:-1])), k.shape[-1]
    cols = _bucket(c)
    if gamma is None:
        inv, b_eff = np.ones(cols, np.float32), _pad_vector(bias, cols)
    else:
        inv, b_eff = (np.asarray(a) for a in _bn_fold_vectors(
            *(_pad_vector(a, cols) for a in (gamma, beta, mean, var))))
    k2d = np.pad(k.reshape(rows, c), ((0, _bucket(rows) - rows), (0, 0)))
    k2d = np.pad(k2d, ((0, 0), (0, cols - c)), mode="edge")
    k_eff, w_scale, weight, acc_scale, bias_codes = (np.asarray(a) for a in _conv_math(
        k2d, inv, b_eff, np.float32(x_scale), per_channel=per_channel))
    if per_channel:
        w_scale, acc_scale = w_scale[:c], acc_scale[:c]
    params = {"weight": weight[:rows, :c].reshape(k.shape), "bias": bias_codes[:c],
              "weight_scale": w_scale}
    return k_eff[:rows, :c].reshape(k.shape), b_eff[:c], params, acc_scale


@jax.jit
def _gates(w, b, out_scale):
    """Fusion gates s(w), 1 - s(w) as int8 codes with their per-tensor scales, and the bias
    codes at the output scale (the expressions of ``layers.Fusion``)."""
    g_rgb = jax.nn.sigmoid(w)
    g_sparse = 1.0 - jax.nn.sigmoid(w)
    out = []
    for gv in (g_rgb, g_sparse):
        scale = qn.weight_scale(gv, False)
        out.append((gv, scale, qn.quantize(gv, scale, 0.0, qn.WEIGHT_INT8).astype(jnp.int8)))
    return out, qn.round_half_away(b / out_scale).astype(jnp.int32)


def fusion_gates(w, b, out_scale: float) -> tuple[list[tuple[np.ndarray, ...]], np.ndarray]:
    """[(gate, scale, int8 codes) for rgb, sparse] and the int32 bias codes."""
    c = len(w)
    size = _bucket(c)
    gates, bias = _gates(_pad_vector(w, size), _pad_vector(b, size), np.float32(out_scale))
    cut = lambda a: np.asarray(a)[:c] if np.ndim(a) == 1 else np.asarray(a)
    return [tuple(cut(a) for a in g) for g in gates], cut(bias)


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
