"""Which images calibrate a post-training quantized model: random or depth-stratified.

Stratified selection bins the images of a split by their mean ground-truth depth and
takes a fixed share of the calibration set from each bin, so that near and far scenes
are represented in chosen proportions whatever the split's own distribution is. The
reference team's shares are ``REFERENCE_EDGES`` / ``REFERENCE_SHARES``.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from jaxdepth.data.pipeline import Dataset

REFERENCE_EDGES = (0.0, 3.0, 8.0, 15.0, math.inf)     # metres: [0,3) [3,8) [8,15) [15,inf)
REFERENCE_SHARES = (0.25, 0.40, 0.25, 0.10)
METHODS = ("random", "stratified")


class Subset:
    """The images ``indices`` of ``dataset``, in that order (a ``Dataset`` itself)."""

    def __init__(self, dataset: Dataset, indices: Sequence[int]) -> None:
        self.dataset, self.indices = dataset, [int(i) for i in indices]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> dict:
        return self.dataset[self.indices[index]]


def mean_depths(dataset: Dataset) -> np.ndarray:
    """Mean valid (> 0) ground-truth depth of every image; 0 for an image without any."""
    out = np.zeros(len(dataset), np.float64)
    for i in range(len(dataset)):
        d = np.asarray(dataset[i]["depth"])
        valid = d > 0
        out[i] = d[valid].mean() if valid.any() else 0.0
    return out


def select_random(pool: int, num: int, seed: int = 0) -> np.ndarray:
    """``num`` distinct indices of ``range(pool)``, sorted, drawn with ``seed``."""
    _check_num(pool, num)
    return np.sort(np.random.default_rng(seed).choice(pool, num, replace=False))


def stratum_counts(available: Sequence[int], shares: Sequence[float], num: int) -> np.ndarray:
    """Images to take from each bin: ``num * share`` rounded by largest remainder; a bin
    with fewer images than its share gives all it has and the shortfall goes to the other
    bins in proportion to their shares (so the set always has ``num`` images)."""
    available = np.asarray(available, np.int64)
    shares = np.asarray(shares, np.float64)
    _check_num(int(available.sum()), num)
    counts = np.zeros(len(shares), np.int64)
    open_bins = available > 0
    while counts.sum() < num:
        want = num - counts.sum()
        w = np.where(open_bins, shares, 0.0)
        if w.sum() == 0:          # only bins with share 0 still have images
            w = open_bins.astype(np.float64)
        ideal = want * w / w.sum()
        add = np.floor(ideal).astype(np.int64)
        order = np.argsort(-(ideal - add), kind="stable")
        add[order[: want - add.sum()]] += 1
        add = np.minimum(add, available - counts)
        counts += add
        open_bins = counts < available
    return counts


def select_stratified(depths: np.ndarray, num: int, edges: Sequence[float] = REFERENCE_EDGES,
                      shares: Sequence[float] = REFERENCE_SHARES, seed: int = 0) -> np.ndarray:
    """``num`` indices, sorted: ``stratum_counts`` images drawn at random from each bin
    ``[edges[i], edges[i + 1])`` of the per-image mean ``depths``."""
    edges, shares = np.asarray(edges, np.float64), np.asarray(shares, np.float64)
    if len(edges) != len(shares) + 1 or np.any(np.diff(edges) <= 0):
        raise ValueError(f"depth bins: {len(edges)} increasing edges {edges.tolist()} needed for "
                         f"{len(shares)} shares")
    if np.any(shares < 0) or not math.isclose(shares.sum(), 1.0, abs_tol=1e-6):
        raise ValueError(f"depth bin shares {shares.tolist()} must be >= 0 and sum to 1")
    bins = np.searchsorted(edges, depths, side="right") - 1
    inside = (bins >= 0) & (bins < len(shares))
    members = [np.flatnonzero(inside & (bins == b)) for b in range(len(shares))]
    counts = stratum_counts([len(m) for m in members], shares, num)
    rng = np.random.default_rng(seed)
    picked = [rng.choice(m, c, replace=False) for m, c in zip(members, counts) if c]
    return np.sort(np.concatenate(picked))


def select(dataset: Dataset, method: str, num: int, seed: int = 0,
           edges: Sequence[float] = REFERENCE_EDGES,
           shares: Sequence[float] = REFERENCE_SHARES) -> np.ndarray:
    """Indices of the calibration images of ``dataset`` by ``method`` (``METHODS``)."""
    if method == "random":
        return select_random(len(dataset), num, seed)
    if method == "stratified":
        return select_stratified(mean_depths(dataset), num, edges, shares, seed)
    raise ValueError(f"unknown calibration selection {method!r}; choose one of {METHODS}")


def _check_num(pool: int, num: int) -> None:
    if not 0 < num <= pool:
        raise ValueError(f"cannot select {num} calibration images from a split of {pool}")
