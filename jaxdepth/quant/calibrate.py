"""Post-training calibration: static activation ranges and weight transformations.

``calibrate`` stores the min/max of FP32 runs: what the reference NPU toolchain did by
default, the PTQ baseline and the starting ranges of quantization-aware training.
``post_training_quantize`` runs a whole ``Recipe``: cross-layer equalization (``cle``),
weight clipping (``weight_ranges``), activation range estimators on histograms
(``ranges``), AdaRound (``adaround``) and bias correction (``bias_correction``). Every
step writes plain checkpoint variables (weights, ranges), so evaluation and the integer
export read a calibrated checkpoint like any other.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import flax.linen as nn
import jax

from jaxdepth.models.layers import Quant
from jaxdepth.quant import numerics as qn
from jaxdepth.quant.adaround import ITERATIONS as ADAROUND_ITERATIONS
from jaxdepth.quant.adaround import adaround
from jaxdepth.quant.bias_correction import correct_biases
from jaxdepth.quant.cle import equalize
from jaxdepth.quant.ranges import ESTIMATORS, collect_histograms, estimate, with_ranges
from jaxdepth.quant.weight_ranges import METHODS, clip_weights


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


@dataclass(frozen=True)
class Recipe:
    """One post-training quantization recipe; each step is switchable.

    Order: cross-layer equalization and weight clipping change the FP32 weights, the
    activation ranges are then estimated on the model that will run, rounding and bias
    correction last (they need the activation ranges of the fake-quant model).
    """

    activations: str = "minmax"       # ranges.ESTIMATORS
    weights: str = "minmax"           # weight_ranges.METHODS
    per_channel: bool = False         # weight scales per output channel (not NPU-legal)
    cle: bool = False
    adaround: bool = False
    bias_correction: bool = False
    adaround_iterations: int = ADAROUND_ITERATIONS

    def __post_init__(self) -> None:
        if self.activations not in ESTIMATORS:
            raise ValueError(f"unknown activation range estimator {self.activations!r}; "
                             f"choose one of {ESTIMATORS}")
        if self.weights not in METHODS:
            raise ValueError(f"unknown weight range method {self.weights!r}; choose one of {METHODS}")


def weights_preset(preset: str, per_channel: bool) -> str:
    """The quantization preset (``numerics.PRESETS``) of ``preset``'s activation format
    with per-tensor or per-channel weights."""
    scheme = qn.get_scheme(preset)
    for name, s in qn.PRESETS.items():
        if s.activation == scheme.activation and s.per_channel_weights == per_channel:
            return name
    raise ValueError(f"quantization preset {preset!r} ({scheme.activation.name} activations) has no "
                     f"per-{'channel' if per_channel else 'tensor'} weight variant in {sorted(qn.PRESETS)}")


def transform_weights(variables: dict, recipe: Recipe) -> dict:
    """The FP32 weight transformations of ``recipe`` (equalization, weight clipping)."""
    if recipe.cle:
        variables = equalize(variables)[0]
    if recipe.weights == "mse":
        variables = clip_weights(variables, recipe.per_channel)
    return variables


def post_training_quantize(model_cfg: Any, preset: str, variables: dict, batches: Sequence[dict],
                           use_lidar: bool, recipe: Recipe, progress: bool = False) -> tuple[dict, str]:
    """(variables, quantization preset) of ``recipe`` applied to FP32 ``variables`` with
    the calibration ``batches``: weights, activation ranges and, if asked, rounding and
    bias corrections, for the ``preset``'s activation format."""
    from jaxdepth.models import build_model

    preset = weights_preset(preset, recipe.per_channel)
    scheme = qn.get_scheme(preset)
    float_model = build_model(model_cfg, Quant("float", scheme))   # the scheme's input grid
    fake_model = build_model(model_cfg, Quant("fake", scheme))
    variables = transform_weights(variables, recipe)
    histograms = collect_histograms(float_model, variables, batches, use_lidar, progress=progress)
    ranges = estimate(histograms, recipe.activations, scheme.activation)
    variables = {**variables, "quant": with_ranges(variables["quant"], ranges)}
    if recipe.adaround:
        variables = adaround(fake_model, variables, batches, use_lidar, recipe.adaround_iterations,
                             progress=progress)
    if recipe.bias_correction:
        variables = correct_biases(fake_model, variables, batches, use_lidar, progress=progress)
    return variables, preset
