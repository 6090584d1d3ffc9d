"""The integer parameters of a fake-quant model, derived once.

``freeze`` runs the fake-quant forward once with the ``qparams`` collection mutable: every
block stores the integer parameters it derives (AQT's weight codes and scales, bias codes,
requantization multipliers, lookup tables, output scales and zero points). Fake-quant
evaluation then runs with those arrays, and the exporter writes those arrays: one
computation, whatever a compiler does to floating-point expressions in two programs.
Training (QAT) derives them inline instead, since the weights change every step.
"""
from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxdepth.models.layers import QPARAMS

_SIZE = 32   # the parameters do not depend on the input: the smallest legal size will do


@functools.partial(jax.jit, static_argnums=(0, 2))
def _freeze(model: nn.Module, variables: dict, use_lidar: bool) -> dict:
    rgb = jnp.zeros((1, _SIZE, _SIZE, 3), jnp.float32)
    lidar = jnp.zeros((1, _SIZE, _SIZE), jnp.float32) if use_lidar else None
    _, state = model.apply(variables, rgb, lidar, train=False, mutable=[QPARAMS])
    return state[QPARAMS]


def freeze(model: nn.Module, variables: dict, use_lidar: bool | None = None) -> dict:
    """``variables`` with the ``qparams`` collection of ``model`` (a ``fake``-mode model)
    for one mode: with LiDAR (default, for a model with a SAN) or RGB only.

    Each mode needs its own: a block may read other tensors in the other mode (a decoder
    skip concat reads the fused features with LiDAR and the RGB encoder's without), and
    its requantization multipliers follow its inputs' scales.
    """
    if not model.quant.fake:
        raise ValueError("freeze needs a fake-quant model (Quant mode 'fake')")
    plain = {k: v for k, v in variables.items() if k != QPARAMS}
    use_lidar = model.sparse if use_lidar is None else use_lidar and model.sparse
    return {**plain, QPARAMS: _freeze(model, plain, use_lidar)}
