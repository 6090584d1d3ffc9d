"""Empirical bias correction of the weight quantization error (Nagel et al., ICCV 2019).

Rounding a conv's weights shifts the mean of its output: ``E[(W - W_q) x]`` per output
channel, which a ReLU or a following layer does not average away. Measured on the
calibration data, with ``x`` the conv's input in the fake-quant model (what the integer
conv consumes) and ``W_q`` AQT's dequantized weights of the checkpoint's scheme, the
shift is added to the folded bias (``beta`` under BatchNorm). Each conv is corrected for
its own weights' error, so one pass over the data serves every layer.
"""
from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from jaxdepth.models.layers import same_padding
from jaxdepth.quant import aqt_backend
from jaxdepth.quant.folding import FoldedConvs
from jaxdepth.quant.taps import conv_taps, mode_passes


def weight_error(k: np.ndarray, per_channel: bool) -> jax.Array:
    """``W - W_q``: the folded kernel minus AQT's dequantized one."""
    codes, scale = aqt_backend.quantize_weights(jnp.asarray(k), per_channel)
    return jnp.asarray(k) - codes * scale


def output_shifts(model: nn.Module, variables: dict, batches: Sequence[dict], use_lidar: bool,
                  progress: bool = False) -> dict[str, np.ndarray]:
    """``{conv path: E[(W - W_q) x]}`` per output channel over ``batches`` (``model`` a
    fake-quant model; with LiDAR and monocular when ``use_lidar``)."""
    convs = FoldedConvs(variables)
    per_channel = model.quant.scheme.per_channel_weights
    errors = {p: weight_error(convs.folded(p)[0], per_channel) for p in convs.paths}

    @jax.jit
    def step(variables, errors, rgb, lidar):
        def reduce(p, x, conv):
            y = jax.lax.conv_general_dilated(x, errors[p], (conv.stride,) * 2, same_padding(conv.kernel),
                                             dimension_numbers=("NHWC", "HWIO", "NHWC"))
            return y.mean(axis=(0, 1, 2))
        return conv_taps(model, variables, rgb, lidar, reduce)

    sums: dict[str, np.ndarray] = {}
    counts: dict[str, int] = {}
    shown = tqdm(batches, desc="bias correction", disable=not progress, leave=False)
    for frozen, rgb, lidar in mode_passes(model, variables, shown, use_lidar):
        for p, m in jax.device_get(step(frozen, errors, rgb, lidar)).items():
            sums[p] = sums.get(p, 0) + m
            counts[p] = counts.get(p, 0) + 1
    return {p: sums[p] / counts[p] for p in sums}


def correct_biases(model: nn.Module, variables: dict, batches: Sequence[dict], use_lidar: bool,
                   progress: bool = False) -> dict:
    """``variables`` with every conv's folded bias raised by its measured output shift."""
    shifts = output_shifts(model, variables, batches, use_lidar, progress)
    convs = FoldedConvs(variables)
    for p, shift in shifts.items():
        convs.set_folded(p, bias=convs.folded(p)[1] + shift)
    return convs.result()
