"""Depth metrics (packnet-sfm conventions), defined once for training, eval and export.

Valid pixels: min_depth < gt < max_depth (strict), optionally inside the Garg crop.
Predictions are clamped to [min_depth, max_depth]; optional per-image median scaling
(pred *= median(gt) / median(pred)). Each image's metrics are computed on its valid
pixels, then averaged over the images that have at least one valid pixel; images with
none are counted, never averaged in as zeros.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

NAMES = ("abs_rel", "sq_rel", "rmse", "rmse_log", "a1", "a2", "a3")
GARG_CROP = (0.40810811, 0.99189189, 0.03594771, 0.96405229)   # rows, rows, cols, cols


def valid_mask(gt: jax.Array, min_depth: float, max_depth: float, garg_crop: bool = False) -> jax.Array:
    mask = (gt > min_depth) & (gt < max_depth)
    if garg_crop:
        h, w = gt.shape[-2:]
        rows = jnp.arange(h)[:, None]
        cols = jnp.arange(w)[None, :]
        crop = ((rows >= int(GARG_CROP[0] * h)) & (rows < int(GARG_CROP[1] * h))
                & (cols >= int(GARG_CROP[2] * w)) & (cols < int(GARG_CROP[3] * w)))
        mask = mask & crop
    return mask


def _masked_median(x: jax.Array, mask: jax.Array) -> jax.Array:
    """Median of x over mask for one image (NaN-free: returns 1 when mask is empty)."""
    flat = jnp.where(mask, x, jnp.nan).reshape(-1)
    med = jnp.nanmedian(flat)
    return jnp.where(jnp.isnan(med), 1.0, med)


def image_metrics(pred: jax.Array, gt: jax.Array, min_depth: float, max_depth: float,
                  garg_crop: bool = False, median_scaling: bool = False) -> tuple[jax.Array, jax.Array]:
    """Per-image metrics. pred, gt: (B, H, W) metres.

    Returns (metrics (B, 7) in NAMES order, has_valid (B,) bool).
    """
    mask = valid_mask(gt, min_depth, max_depth, garg_crop)
    if median_scaling:
        ratio = jax.vmap(_masked_median)(gt, mask) / jax.vmap(_masked_median)(pred, mask)
        pred = pred * ratio[:, None, None]
    pred = jnp.clip(pred, min_depth, max_depth)
    g = jnp.where(mask, gt, 1.0)
    p = jnp.where(mask, pred, 1.0)
    m = mask.astype(jnp.float32)
    n = m.sum(axis=(1, 2))
    mean = lambda x: (x * m).sum(axis=(1, 2)) / jnp.maximum(n, 1.0)
    thresh = jnp.maximum(p / g, g / p)
    out = jnp.stack([
        mean(jnp.abs(p - g) / g),
        mean(jnp.square(p - g) / g),
        jnp.sqrt(mean(jnp.square(p - g))),
        jnp.sqrt(mean(jnp.square(jnp.log(p) - jnp.log(g)))),
        mean((thresh < 1.25).astype(jnp.float32)),
        mean((thresh < 1.25 ** 2).astype(jnp.float32)),
        mean((thresh < 1.25 ** 3).astype(jnp.float32)),
    ], axis=-1)
    return out, n > 0


class MetricAccumulator:
    """Averages per-image metrics over images with valid pixels; counts the others."""

    def __init__(self) -> None:
        self._rows: list[np.ndarray] = []
        self.skipped = 0

    def add(self, metrics: jax.Array, has_valid: jax.Array) -> None:
        metrics, has_valid = np.asarray(metrics), np.asarray(has_valid, bool)
        self._rows.append(metrics[has_valid])
        self.skipped += int((~has_valid).sum())

    @property
    def count(self) -> int:
        return int(sum(len(r) for r in self._rows))

    def result(self) -> dict[str, float]:
        rows = np.concatenate(self._rows) if self._rows else np.zeros((0, len(NAMES)))
        values = rows.mean(axis=0) if len(rows) else np.full(len(NAMES), np.nan)
        out = {k: float(v) for k, v in zip(NAMES, values)}
        out["images"] = self.count
        out["skipped_images"] = self.skipped
        return out
