"""Deterministic, resumable batches for training and evaluation.

The shuffle order and augmentation of epoch e depend only on (seed, e), and a
batch's content does not depend on how many workers loaded it, so training resumed
at any step sees exactly the data an uninterrupted run would have seen.
"""

from __future__ import annotations

import itertools
import math
import queue
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Iterable, Iterator, Protocol

import numpy as np
from PIL import Image

_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)
_RGB_TO_YIQ = np.array(
    [[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]], dtype=np.float64
)
_YIQ_TO_RGB = np.linalg.inv(_RGB_TO_YIQ)
_POLL_S = 0.1  # how often a blocked producer checks whether the consumer has gone


class Dataset(Protocol):
    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> dict: ...


@dataclass(frozen=True)
class Augment:
    """Training augmentation; every field set to 0 disables that part.

    Colour ranges follow torchvision's ColorJitter: factors uniform in
    [max(0, 1 - x), 1 + x], hue shift uniform in [-x, x] of a full turn.
    """

    hflip: float = 0.5
    brightness: float = 0.2
    contrast: float = 0.2
    saturation: float = 0.2
    hue: float = 0.05

    def __post_init__(self) -> None:
        if not 0.0 <= self.hflip <= 1.0:
            raise ValueError(f"hflip is a probability, got {self.hflip}")
        for name in ("brightness", "contrast", "saturation"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 0.0 <= self.hue <= 0.5:
            raise ValueError(f"hue must be in [0, 0.5], got {self.hue}")

    @property
    def jitters_colour(self) -> bool:
        return max(self.brightness, self.contrast, self.saturation, self.hue) > 0


# ----------------------------------------------------------------------------- resizing


def _resize_rgb(rgb: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear per channel in float; PIL widens the filter when shrinking (antialiasing)."""
    channels = [
        np.asarray(Image.fromarray(rgb[..., c]).resize((width, height), Image.Resampling.BILINEAR))
        for c in range(3)
    ]
    return np.clip(np.stack(channels, axis=-1), 0.0, 1.0)


def _resize_nearest(depth: np.ndarray, height: int, width: int) -> np.ndarray:
    rows = (np.arange(height) + 0.5) * depth.shape[0] / height
    cols = (np.arange(width) + 0.5) * depth.shape[1] / width
    return depth[rows.astype(np.int64)[:, None], cols.astype(np.int64)]


def _resize_sparse(lidar: np.ndarray, height: int, width: int) -> np.ndarray:
    """Move every return to the output pixel containing it; the nearest return wins.

    Averaging or interpolating would mix returns with the zeros around them and
    invent depths that were never measured.
    """
    rows, cols = np.nonzero(lidar > 0)
    out_rows = ((rows + 0.5) * height / lidar.shape[0]).astype(np.int64)
    out_cols = ((cols + 0.5) * width / lidar.shape[1]).astype(np.int64)
    out = np.full((height, width), np.inf, dtype=lidar.dtype)
    np.minimum.at(out, (out_rows, out_cols), lidar[rows, cols])
    out[np.isinf(out)] = 0.0
    return out


def resize_sample(sample: dict, height: int, width: int) -> dict:
    """Resize rgb (bilinear), depth (nearest) and lidar (returns kept); other keys pass through."""
    if sample["rgb"].shape[:2] == (height, width):
        return sample
    return {
        **sample,
        "rgb": _resize_rgb(sample["rgb"], height, width),
        "depth": _resize_nearest(sample["depth"], height, width),
        "lidar": _resize_sparse(sample["lidar"], height, width),
    }


# ----------------------------------------------------------------------------- augmentation


@dataclass(frozen=True)
class _SamplePlan:
    """Which sample to load and how to augment it: fixed before any loading happens."""

    index: int
    flip: bool
    colour: tuple[float, float, float, float] | None  # brightness, contrast, saturation, hue


def _hue_matrix(shift: float) -> np.ndarray:
    """RGB-to-RGB matrix rotating chroma in YIQ space by `shift` of a full turn."""
    c, s = np.cos(2 * np.pi * shift), np.sin(2 * np.pi * shift)
    rotation = np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])
    return (_YIQ_TO_RGB @ rotation @ _RGB_TO_YIQ).astype(np.float32)


def _jitter(rgb: np.ndarray, colour: tuple[float, float, float, float]) -> np.ndarray:
    """Brightness, contrast, saturation, then hue, clipping to [0, 1] after each as torchvision."""
    brightness, contrast, saturation, hue = colour
    rgb = np.clip(rgb * brightness, 0.0, 1.0)
    mean = float((rgb @ _LUMA).mean())
    rgb = np.clip((rgb - mean) * contrast + mean, 0.0, 1.0)
    grey = (rgb @ _LUMA)[..., None]
    rgb = np.clip((rgb - grey) * saturation + grey, 0.0, 1.0)
    return np.clip(rgb @ _hue_matrix(hue).T, 0.0, 1.0)


def _augment(sample: dict, plan: _SamplePlan) -> dict:
    rgb, depth, lidar = sample["rgb"], sample["depth"], sample["lidar"]
    if plan.flip:
        rgb, depth, lidar = rgb[:, ::-1], depth[:, ::-1], lidar[:, ::-1]
    if plan.colour is not None:
        rgb = _jitter(rgb, plan.colour)
    return {**sample, "rgb": rgb, "depth": depth, "lidar": lidar}


def _collate(samples: list[dict]) -> dict:
    return {
        "rgb": np.stack([s["rgb"] for s in samples]).astype(np.float32),
        "depth": np.stack([s["depth"] for s in samples]).astype(np.float32),
        "lidar": np.stack([s["lidar"] for s in samples]).astype(np.float32),
        "name": [s["name"] for s in samples],
    }


# ----------------------------------------------------------------------------- pipeline


class Pipeline:
    """Batches of resized, augmented samples, loaded by a thread pool and prefetched.

    Batches are dicts of numpy arrays: rgb (B,H,W,3), depth (B,H,W), lidar (B,H,W),
    all float32, and name (list of B strings). With ``shard=(i, n)`` each batch holds
    the i-th of n equal parts of the global batch of ``batch_size`` (B = batch_size / n).
    """

    def __init__(
        self,
        dataset: Dataset,
        *,
        batch_size: int,
        height: int,
        width: int,
        shuffle: bool,
        augment: Augment | None,
        seed: int,
        drop_remainder: bool,
        prefetch: int = 2,
        workers: int = 1,
        shard: tuple[int, int] = (0, 1),
    ) -> None:
        if min(batch_size, height, width, prefetch, workers) < 1:
            raise ValueError("batch_size, height, width, prefetch and workers must be >= 1")
        index, count = shard
        if not 0 <= index < count or batch_size % count:
            raise ValueError(f"shard {index} of {count} does not split batches of {batch_size}")
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        self.dataset = dataset
        self.batch_size = batch_size
        self.height = height
        self.width = width
        self.shuffle = shuffle
        self.augment = augment
        self.seed = seed
        self.drop_remainder = drop_remainder
        self.prefetch = prefetch
        self.workers = workers
        self.shard = shard
        n = len(dataset)
        self.steps_per_epoch = n // batch_size if drop_remainder else math.ceil(n / batch_size)
        if self.steps_per_epoch == 0:
            raise ValueError(f"{n} samples make no full batch of {batch_size}")

    def epoch(self, e: int) -> Iterator[dict]:
        """The batches of epoch e, identical on every call."""
        return self._prefetched(self._epoch_batches(e, 0))

    def iterate(self, start_step: int = 0) -> Iterator[dict]:
        """Endless batches from global step start_step on; skipped samples are not loaded."""
        if start_step < 0:
            raise ValueError(f"start_step must be >= 0, got {start_step}")
        first_epoch, first_step = divmod(start_step, self.steps_per_epoch)
        plans = itertools.chain.from_iterable(
            self._epoch_batches(e, first_step if e == first_epoch else 0)
            for e in itertools.count(first_epoch)
        )
        return self._prefetched(plans)

    def __iter__(self) -> Iterator[dict]:
        return self.iterate(0)

    def _epoch_plans(self, e: int) -> list[_SamplePlan]:
        """Order and augmentation of every position of epoch e, drawn from (seed, e) alone."""
        if e < 0:
            raise ValueError(f"epoch must be >= 0, got {e}")
        n = len(self.dataset)
        rng = np.random.default_rng([self.seed, e])
        order = rng.permutation(n) if self.shuffle else np.arange(n)
        if self.augment is None:
            return [_SamplePlan(int(i), False, None) for i in order]
        a = self.augment
        flips = rng.random(n) < a.hflip
        colour = np.stack([
            rng.uniform(max(0.0, 1.0 - a.brightness), 1.0 + a.brightness, n),
            rng.uniform(max(0.0, 1.0 - a.contrast), 1.0 + a.contrast, n),
            rng.uniform(max(0.0, 1.0 - a.saturation), 1.0 + a.saturation, n),
            rng.uniform(-a.hue, a.hue, n),
        ], axis=1)
        return [
            _SamplePlan(int(i), bool(f), tuple(float(x) for x in c) if a.jitters_colour else None)
            for i, f, c in zip(order, flips, colour)
        ]

    def _epoch_batches(self, e: int, first_step: int) -> Iterator[list[_SamplePlan]]:
        """This shard's rows of each global batch: process i of n loads rows
        [i * B / n, (i + 1) * B / n), so the n processes together see the one-process batch."""
        plans = self._epoch_plans(e)
        index, count = self.shard
        rows = self.batch_size // count
        for step in range(first_step, self.steps_per_epoch):
            start = step * self.batch_size + index * rows
            yield plans[start:start + rows]

    def _load(self, plan: _SamplePlan) -> dict:
        sample = resize_sample(self.dataset[plan.index], self.height, self.width)
        return _augment(sample, plan)

    def _produce(
        self, batches: Iterable[list[_SamplePlan]], out: queue.Queue, stop: threading.Event
    ) -> None:
        """Worker thread: load batches in order and hand them over, or hand over the error."""
        try:
            with ThreadPoolExecutor(self.workers, thread_name_prefix="jaxdepth-load") as pool:
                for plans in batches:
                    if not _put(out, ("batch", _collate(list(pool.map(self._load, plans)))), stop):
                        return
            _put(out, ("end", None), stop)
        except BaseException as exc:  # re-raised in the consumer, whatever it is
            _put(out, ("error", exc), stop)

    def _prefetched(self, batches: Iterable[list[_SamplePlan]]) -> Iterator[dict]:
        """Run loading ahead in a daemon thread; stop it when the consumer stops."""
        out: queue.Queue = queue.Queue(maxsize=self.prefetch)
        stop = threading.Event()
        thread = threading.Thread(
            target=self._produce, args=(batches, out, stop), name="jaxdepth-prefetch", daemon=True
        )
        thread.start()
        try:
            while True:
                kind, payload = out.get()
                if kind == "end":
                    return
                if kind == "error":
                    raise payload
                yield payload
        finally:
            stop.set()


def _put(out: queue.Queue, item: tuple, stop: threading.Event) -> bool:
    """Blocking put that gives up once the consumer has stopped listening."""
    while not stop.is_set():
        try:
            out.put(item, timeout=_POLL_S)
            return True
        except queue.Full:
            continue
    return False
