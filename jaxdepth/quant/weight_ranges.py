"""Weight ranges: AQT's AbsMax (min-max) or the MSE-optimal clipping threshold.

AQT derives each weight scale from the absolute maximum of the (BN-folded) kernel, per
tensor or per output channel. An MSE-optimal threshold ``t`` is realised by clipping the
folded kernel to ``[-t, t]``: AbsMax then finds ``t``, and the codes are those of
quantizing the original kernel with scale ``t / 127`` and saturating. The clipped kernel
is written to the checkpoint (``folding``), so every consumer sees the chosen range
through AQT's own quantizer and no second weight quantizer exists.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from jaxdepth.quant import aqt_backend
from jaxdepth.quant.folding import FoldedConvs

ALPHAS = np.geomspace(0.05, 1.0, 200)   # candidate thresholds, as fractions of the max
METHODS = ("minmax", "mse")


@functools.partial(jax.jit, static_argnums=1)
def weight_errors(w: jax.Array, per_channel: bool, alphas: jax.Array) -> jax.Array:
    """Squared error of AQT's quantization of ``w`` (last axis: output channel) clipped
    at ``alpha * max|w|``: shape (alphas,) per tensor, (alphas, C) per channel."""
    axes = tuple(range(w.ndim - 1))
    m = jnp.max(jnp.abs(w), axis=axes) if per_channel else jnp.max(jnp.abs(w))

    def err(a):
        c = jnp.clip(w, -a * m, a * m)
        codes, scale = aqt_backend.quantize_weights(c, per_channel)
        e = jnp.square(codes * scale - w)
        return e.sum(axis=axes) if per_channel else e.sum()
    return jax.lax.map(err, alphas)


def mse_clip(w: np.ndarray, per_channel: bool) -> np.ndarray:
    """``w`` clipped at its MSE-optimal threshold (per tensor or per output channel)."""
    w = np.asarray(w, np.float32)
    errors = np.asarray(weight_errors(jnp.asarray(w), per_channel, jnp.asarray(ALPHAS, jnp.float32)))
    best = ALPHAS[np.argmin(errors, axis=0)]
    axes = tuple(range(w.ndim - 1))
    t = best * (np.abs(w).max(axis=axes) if per_channel else np.abs(w).max())
    return np.clip(w, -t, t)


def clip_weights(variables: dict, per_channel: bool) -> dict:
    """``variables`` with every conv's folded kernel clipped at its MSE-optimal range."""
    convs = FoldedConvs(variables)
    for path in convs.paths:
        k, _ = convs.folded(path)
        convs.set_folded(path, kernel=mse_clip(k, per_channel))
    return convs.result()
