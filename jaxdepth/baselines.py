"""Predictors without a network, the rows a depth network must beat.

They run on the batches the network is evaluated on (the resized inputs of
``eval_pipeline``) and are scored by the same metrics, so the rows compare directly:
``lidar nearest fill`` is completion by interpolating the sparse input, ``constant`` one
depth everywhere (the median of the train split's valid ground truth).
"""
from __future__ import annotations

from typing import Callable

import jax.numpy as jnp
import numpy as np
from scipy import ndimage

from jaxdepth.config import Config
from jaxdepth.data import DataError
from jaxdepth.data.folder import DEPTH_SCALE
from jaxdepth.data.sources import eval_pipeline
from jaxdepth.metrics import valid_mask

NEAREST_FILL = "lidar nearest fill"
CONSTANT = "constant"


def nearest_fill(lidar: np.ndarray, fallback: float) -> np.ndarray:
    """Every pixel takes the depth of the nearest LiDAR return (> 0) of its own image,
    nearest in Euclidean pixel distance. An image without any return has nothing to
    interpolate and is filled with ``fallback`` (the constant predictor's depth).

    lidar: (B, H, W) metres, 0 = no return. Returns (B, H, W) float32 metres.
    """
    out = np.full(lidar.shape, fallback, np.float32)
    for i, image in enumerate(lidar):
        empty = image <= 0
        if empty.all():
            continue
        rows, cols = ndimage.distance_transform_edt(empty, return_distances=False, return_indices=True)
        out[i] = image[rows, cols]
    return out


def train_median_depth(cfg: Config) -> float:
    """Median of the valid ground-truth pixels (the metrics' depth range) of the train
    split, at the model's input size.

    Depths are counted in the 1/256 m steps the PNG formats store them in (exact for
    folder and KITTI data, within 1/512 m for NYUv2's float depth), so memory stays
    constant however large the split.
    """
    lo, hi = cfg.model.min_depth, cfg.model.max_depth
    counts = np.zeros(int(np.ceil(hi * DEPTH_SCALE)) + 1, np.int64)
    for batch in eval_pipeline(cfg, "train").epoch(0):
        gt = batch["depth"]
        valid = gt[np.asarray(valid_mask(jnp.asarray(gt), lo, hi))]
        counts += np.bincount(np.rint(valid * DEPTH_SCALE).astype(np.int64), minlength=len(counts))
    total = int(counts.sum())
    if total == 0:
        raise DataError(f"split 'train' has no ground-truth pixel in ({lo}, {hi}) m: no constant baseline")
    middle = np.searchsorted(np.cumsum(counts), [(total - 1) // 2, total // 2], side="right")
    return float(middle.mean() / DEPTH_SCALE)


def baseline_predictors(cfg: Config, constant: float) -> dict[str, Callable]:
    """Each baseline as ``(variables, rgb, lidar) -> depth (B, H, W)``, the signature of
    ``evaluate.make_predict``'s predictors; without LiDAR input only the constant applies."""
    predictors: dict[str, Callable] = {}
    if cfg.model.sparse:
        predictors[NEAREST_FILL] = lambda variables, rgb, lidar: nearest_fill(lidar, constant)
    predictors[CONSTANT] = lambda variables, rgb, lidar: np.full(lidar.shape, constant, np.float32)
    return predictors
