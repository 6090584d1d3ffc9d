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


@functools.partial(jax.jit, static_argnums=0)
def _freeze(model: nn.Module, variables: dict) -> dict:
    rgb = jnp.zeros((1, _SIZE, _SIZE, 3), jnp.float32)
    lidar = jnp.zeros((1, _SIZE, _SIZE), jnp.float32) if model.sparse else None
    _, state = model.apply(variables, rgb, lidar, train=False, mutable=[QPARAMS])
    return state[QPARAMS]


def freeze(model: nn.Module, variables: dict) -> dict:
    """``variables`` with the ``qparams`` collection of ``model`` (a ``fake``-mode model).

    Derived with LiDAR when the model has a SAN: the monocular graph's blocks are a subset
    with the same ranges and weights, so one derivation serves both modes.
    """
    if not model.quant.fake:
        raise ValueError("freeze needs a fake-quant model (Quant mode 'fake')")
    plain = {k: v for k, v in variables.items() if k != QPARAMS}
    return {**plain, QPARAMS: _freeze(model, plain)}
