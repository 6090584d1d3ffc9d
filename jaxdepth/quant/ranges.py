"""Static activation ranges from calibration data: histograms and four range estimators.

One jitted pass per batch records, for every activation observer of the model, a
histogram of the tensor over its min-max range (the min-max pass runs first, by
``calibrate.calibrate``). The estimators then choose each tensor's range from its
histogram alone:

* ``minmax``: the whole histogram range (what ``calibrate.calibrate`` stores).
* ``percentile``: the ``PERCENTILE`` % quantiles of the tensor's values.
* ``mse``: the range minimising the expected squared quantization error, clipping
  included, under the model's own quantizer (``numerics.fake_quant``).
* ``kl``: the range whose quantized distribution is closest in KL divergence to the
  clipped one (TensorRT's entropy calibration, on the signed range of an asymmetric
  format rather than on |x|).

Candidate ranges shrink the min-max range ``[lo, hi]`` towards 0 by one factor, so the
zero point stays where the data puts it. Exact zeros (ReLU outputs, padding) are counted
apart: every range holds 0 exactly, so they never add error, and in a histogram bin they
would pull every estimator towards narrow ranges.
"""
from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util
from tqdm import tqdm

from jaxdepth.models.layers import Observer
from jaxdepth.quant import numerics as qn

BINS = 2048
PERCENTILE = 99.99
ALPHAS = np.arange(BINS // 16, BINS + 1) / BINS      # candidate shrink factors for mse, kl
ESTIMATORS = ("minmax", "percentile", "mse", "kl")


@dataclass
class Histogram:
    """Counts of a tensor's non-zero values in ``len(counts)`` equal bins over [lo, hi]
    (a range that contains 0), and how many values were exactly 0."""

    lo: float
    hi: float
    counts: np.ndarray
    zeros: int = 0

    @property
    def centers(self) -> np.ndarray:
        edges = np.linspace(self.lo, self.hi, len(self.counts) + 1)
        return (edges[:-1] + edges[1:]) / 2

    @classmethod
    def of(cls, x: np.ndarray, bins: int = BINS) -> Histogram:
        """The histogram of a sample (tests, weights)."""
        x = np.asarray(x, np.float64).ravel()
        lo, hi = min(x.min(), 0.0), max(x.max(), 0.0)
        nz = x[x != 0]
        counts, _ = np.histogram(nz, bins, (lo, hi if hi > lo else lo + 1))
        return cls(lo, hi, counts.astype(np.int64), int(x.size - nz.size))


def _bin_counts(x: jax.Array, lo: jax.Array, hi: jax.Array, bins: int) -> tuple[jax.Array, jax.Array]:
    width = jnp.where(hi > lo, hi - lo, 1.0)
    idx = jnp.clip(jnp.floor((x - lo) / width * bins), 0, bins - 1).astype(jnp.int32)
    nonzero = x != 0
    counts = jnp.zeros(bins, jnp.int32).at[idx.ravel()].add(nonzero.ravel().astype(jnp.int32))
    return counts, jnp.sum(~nonzero)


def _observed(model: nn.Module, variables: dict, rgb: jax.Array, lidar: jax.Array | None) -> dict:
    """Every observer's input in one FP32 forward: ``{observer path: [tensors]}``."""
    _, state = model.apply(variables, rgb, lidar, train=False, mutable=["intermediates"],
                           capture_intermediates=lambda m, _: isinstance(m, Observer))
    flat = traverse_util.flatten_dict(state["intermediates"], sep="/")
    return {k.rsplit("/", 1)[0]: list(v) for k, v in flat.items()}


def observer_ranges(quant: dict) -> dict[str, tuple[float, float]]:
    """``{observer path: (lo, hi)}`` of the observers a ``quant`` collection has seen."""
    flat = traverse_util.flatten_dict(jax.device_get(quant), sep="/")
    paths = [k[: -len("/count")] for k, v in flat.items() if k.endswith("/count") and int(v) > 0]
    return {p: (float(flat[f"{p}/lo"]), float(flat[f"{p}/hi"])) for p in paths}


def with_ranges(quant: dict, ranges: dict[str, tuple[float, float]]) -> dict:
    """A ``quant`` collection holding ``ranges`` (marked seen); other observers unseen."""
    flat = traverse_util.flatten_dict(jax.device_get(quant), sep="/")
    out = {k: np.zeros_like(v) for k, v in flat.items()}
    for p, (lo, hi) in ranges.items():
        if f"{p}/lo" not in out:
            raise KeyError(f"no activation observer {p!r} in the model's quant collection")
        out[f"{p}/lo"], out[f"{p}/hi"] = np.float32(lo), np.float32(hi)
        out[f"{p}/count"] = np.ones_like(flat[f"{p}/count"])
    return traverse_util.unflatten_dict({tuple(k.split("/")): jnp.asarray(v) for k, v in out.items()})


@functools.partial(jax.jit, static_argnums=(0, 5))
def _histogram_step(model: nn.Module, variables: dict, rgb: jax.Array, lidar: jax.Array | None,
                    bounds: dict, bins: int) -> dict:
    """``{observer path: (counts, zeros)}`` of one forward; ``bounds`` are arguments, not
    constants, so one compilation serves every calibration set."""
    out = {}
    for p, xs in _observed(model, variables, rgb, lidar).items():
        parts = [_bin_counts(x, *bounds[p], bins) for x in xs]
        out[p] = (sum(c for c, _ in parts), sum(z for _, z in parts))
    return out


def collect_histograms(model: nn.Module, variables: dict, batches: Sequence[dict], use_lidar: bool,
                       bins: int = BINS, progress: bool = True) -> dict[str, Histogram]:
    """The histogram of every activation over ``batches`` (FP32 model ``model``).

    Two passes: min-max (``calibrate.calibrate``, which fixes each histogram's range),
    then the counts, one jitted step per batch (with LiDAR and monocular when
    ``use_lidar``, as the min-max calibration runs).
    """
    from jaxdepth.quant.calibrate import calibrate

    bar = lambda desc: tqdm(batches, desc=desc, disable=not progress, leave=False, dynamic_ncols=True)
    quant = calibrate(model, variables, bar("ranges"), use_lidar)
    ranges = {p: (min(lo, 0.0), max(hi, 0.0)) for p, (lo, hi) in observer_ranges(quant).items()}
    bounds = {p: (jnp.float32(lo), jnp.float32(hi)) for p, (lo, hi) in ranges.items()}
    counts = {p: np.zeros(bins, np.int64) for p in ranges}
    zeros = dict.fromkeys(ranges, 0)
    variables = {**variables, "quant": quant}
    for batch in bar("histograms"):
        for lidar in ((batch["lidar"], None) if use_lidar else (None,)):
            got = _histogram_step(model, variables, batch["rgb"], lidar, bounds, bins)
            for p, (c, z) in jax.device_get(got).items():
                counts[p] += c
                zeros[p] += int(z)
    return {p: Histogram(lo, hi, counts[p], zeros[p]) for p, (lo, hi) in ranges.items()}


# ----------------------------------------------------------------------------------------
# Estimators: a histogram and the activation format -> (lo, hi).
# ----------------------------------------------------------------------------------------
def minmax_range(h: Histogram, fmt: qn.Format) -> tuple[float, float]:
    return h.lo, h.hi


def percentile_range(h: Histogram, fmt: qn.Format, percentile: float = PERCENTILE) -> tuple[float, float]:
    """The ``percentile`` % (upper) and ``100 - percentile`` % (lower, if negative values
    exist) quantiles, at bin edges, exact zeros included in the count."""
    counts = h.counts.astype(np.float64)
    zero_bin = min(int((0 - h.lo) / max(h.hi - h.lo, 1e-30) * len(counts)), len(counts) - 1)
    counts[zero_bin] += h.zeros
    cdf = np.cumsum(counts) / max(counts.sum(), 1)
    edges = np.linspace(h.lo, h.hi, len(counts) + 1)
    q = percentile / 100
    hi = edges[min(np.searchsorted(cdf, q) + 1, len(counts))]
    lo = edges[np.searchsorted(cdf, 1 - q)] if h.lo < 0 else h.lo
    return float(min(lo, 0.0)), float(max(hi, 0.0))


@functools.partial(jax.jit, static_argnums=5)
def _mse_errors(centers, counts, lo, hi, alphas, fmt: qn.Format) -> jax.Array:
    def err(a):
        scale, zp = qn.activation_qparams(a * lo, a * hi, fmt)
        return jnp.sum(counts * jnp.square(qn.fake_quant(centers, scale, zp, fmt) - centers))
    return jax.vmap(err)(alphas)


def mse_errors(h: Histogram, fmt: qn.Format, alphas: np.ndarray = ALPHAS) -> np.ndarray:
    """Expected squared error (summed over the sample) of quantizing ``h``'s values with
    the range ``alphas * [lo, hi]``, by ``numerics``' activation quantizer."""
    errors = _mse_errors(jnp.asarray(h.centers, jnp.float32), jnp.asarray(h.counts, jnp.float32),
                         jnp.float32(h.lo), jnp.float32(h.hi), jnp.asarray(alphas, jnp.float32), fmt)
    return np.asarray(errors, np.float64)


def mse_range(h: Histogram, fmt: qn.Format) -> tuple[float, float]:
    a = ALPHAS[int(np.argmin(mse_errors(h, fmt)))]
    return a * h.lo, a * h.hi


def kl_divergences(h: Histogram, fmt: qn.Format, alphas: np.ndarray = ALPHAS) -> np.ndarray:
    """KL(P || Q) per candidate range ``alpha * [lo, hi]``: P the histogram clipped to the
    range (outside mass added to the edge bins), Q the histogram inside the range merged
    into the format's ``levels`` steps and spread evenly over each step's non-empty bins
    (TensorRT's method)."""
    counts = h.counts.astype(np.float64)
    centers = h.centers
    width = h.hi - h.lo
    out = np.full(len(alphas), np.inf)
    for i, a in enumerate(alphas):
        lo, hi = a * h.lo, a * h.hi
        inside = (centers >= lo) & (centers <= hi)
        if not inside.any():
            continue
        first, last = np.flatnonzero(inside)[[0, -1]]
        sliced = counts[first:last + 1]
        p = sliced.copy()
        p[0] += counts[:first].sum()
        p[-1] += counts[last + 1:].sum()
        step = (centers[first:last + 1] - lo) / max(a * width, 1e-30) * fmt.levels
        group = np.clip(np.floor(step), 0, fmt.levels - 1).astype(np.int64)
        nonzero = p > 0
        mass = np.bincount(group, sliced, fmt.levels)
        members = np.bincount(group, nonzero.astype(np.float64), fmt.levels)
        q = np.where(nonzero, mass[group] / np.maximum(members[group], 1), 0.0)
        if p.sum() == 0:
            out[i] = 0.0
            continue
        p, q = p / p.sum(), q / max(q.sum(), 1e-30)
        q = np.where(nonzero & (q == 0), 1e-12, q)
        out[i] = float(np.sum(p[nonzero] * np.log(p[nonzero] / q[nonzero])))
    return out


def kl_range(h: Histogram, fmt: qn.Format) -> tuple[float, float]:
    a = ALPHAS[int(np.argmin(kl_divergences(h, fmt)))]
    return a * h.lo, a * h.hi


ESTIMATOR_FNS: dict[str, Callable[[Histogram, qn.Format], tuple[float, float]]] = {
    "minmax": minmax_range, "percentile": percentile_range, "mse": mse_range, "kl": kl_range}


def estimate(histograms: dict[str, Histogram], estimator: str,
             fmt: qn.Format) -> dict[str, tuple[float, float]]:
    """``{observer path: (lo, hi)}`` chosen by ``estimator`` (``ESTIMATORS``)."""
    if estimator not in ESTIMATOR_FNS:
        raise ValueError(f"unknown range estimator {estimator!r}; choose one of {ESTIMATORS}")
    fn = ESTIMATOR_FNS[estimator]
    return {p: tuple(float(v) for v in fn(h, fmt)) for p, h in histograms.items()}

