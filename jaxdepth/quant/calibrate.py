"""Post-training calibration: static activation ranges from the min/max of FP32 runs.

This is what the reference NPU toolchain did (plain min-max, no fine-tuning); jaxdepth
uses it as the PTQ baseline and as the starting ranges of quantization-aware training.
"""
from __future__ import annotations

from typing import Iterable

import flax.linen as nn
import jax

from jaxdepth.models.layers import Quant


def reset_ranges(quant_vars: dict) -> dict:
    """Zeroes every observer (range and update count)."""
    return jax.tree.map(lambda x: x * 0, quant_vars)


def calibrate(model: nn.Module, variables: dict, batches: Iterable[dict], use_lidar: bool) -> dict:
    """Runs ``model`` (any mode; it is switched to ``calibrate``) over ``batches`` and
    returns the ``quant`` collection holding the min/max seen by every observer.

    With ``use_lidar``, each batch runs twice, with LiDAR and monocular, so the ranges of
    the tensors both graphs share (the decoder's) cover both: the INT8 monocular model is
    calibrated on what it computes, not on fused features only.
    """
    cal = model.clone(quant=Quant("calibrate", model.quant.scheme, model.quant.ema_decay))

    @jax.jit
    def observe(variables, rgb, lidar):
        _, upd = cal.apply(variables, rgb, lidar, train=False, mutable=["quant"])
        return upd["quant"]

    variables = {**variables, "quant": reset_ranges(variables["quant"])}
    for batch in batches:
        for lidar in ((batch["lidar"], None) if use_lidar else (None,)):
            variables = {**variables, "quant": observe(variables, batch["rgb"], lidar)}
    return variables["quant"]
