"""The integer parameters of a fake-quant model, derived once.

``freeze`` runs the fake-quant forward once with the ``qparams`` collection mutable: every
block stores the integer parameters it derives (AQT's weight codes and scales, bias codes,
requantization multipliers, lookup tables, output scales and zero points). Fake-quant
evaluation then runs with those arrays, and the exporter writes those arrays: one
computation, whatever a compiler does to floating-point expressions in two programs.
Training (QAT) derives them inline instead, since the weights change every step, and
ends by putting its weights on their INT8 grid (``weights_on_grid``); the blocks hand
what they derive to their consumers behind an optimization barrier
(``models.layers.materialized``), so that the inline forward computes the arrays this
pass stores.
"""
from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.traverse_util import flatten_dict, unflatten_dict

from jaxdepth.models.layers import QPARAMS
from jaxdepth.quant.integer_ops import bn_factor

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


def weights_on_grid(model: nn.Module, variables: dict) -> dict:
    """``variables`` with every conv kernel of ``model`` (a ``fake``-mode model) the real
    value of the int8 weights its integer form stores, BatchNorm's scale divided back out.

    QAT trains float weights whose quantized values do the work; any float weight in the
    same int8 step gives the same integer model, and the float model of those latent weights
    is another network (on the default run it moved the depth by 10 mm median from the
    integer model's, 2.6 mm once on the grid; ``docs/encodings.md``). On the grid, the FP32
    model computes with the integer model's own weights and the activations' 8 bits are
    what separates the two; quantizing these kernels again gives the same codes. The
    fusion gates stay as they are: sigmoid(w) and 1 - sigmoid(w) are quantized apart,
    which one float parameter cannot hold.
    """
    params, stats = flatten_dict(variables["params"]), flatten_dict(variables.get("batch_stats", {}))
    modes = (True, False) if model.sparse else (False,)
    for use_lidar in modes:                     # a block may run in one mode only (the RGB heads)
        q = flatten_dict(freeze(model, variables, use_lidar)[QPARAMS])
        for key in q:
            block = key[:-2]
            if key[-2:] != ("node", "weight") or block + ("kernel",) not in params:
                continue
            kernel = q[key].astype(jnp.float32) * q[block + ("node", "weight_scale")]
            phases = kernel.shape[-1] // params[block + ("kernel",)].shape[-1]
            kernel = kernel[..., ::phases]        # a phased head's copies share one kernel
            if block + ("bn_scale",) in params:
                inv = bn_factor(params[block + ("bn_scale",)], stats[block + ("var",)])
                # a channel whose BN scale is 0 folds to 0 whatever its kernel: keep that
                kernel = jnp.where(inv != 0, kernel / jnp.where(inv != 0, inv, 1.0), params[block + ("kernel",)])
            params[block + ("kernel",)] = kernel
    return {**variables, "params": unflatten_dict(params)}
