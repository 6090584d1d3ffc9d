"""Reader for the NYU Depth v2 labelled set (``nyu_depth_v2_labeled.mat``, 1449 images).

``data.root`` is the folder holding the two official files:

* ``nyu_depth_v2_labeled.mat``: MATLAB v7.3, i.e. HDF5 (read with h5py). MATLAB stores
  arrays column-major, so h5py sees ``images`` as (N, 3, 640, 480) uint8 and ``depths``
  as (N, 640, 480) float metres; both are transposed to H x W = 480 x 640.
* ``splits.mat``: the standard split (MATLAB v5), 1-based ``trainNdxs`` (795) and
  ``testNdxs`` (654).

Splits: ``test`` is ``testNdxs``; ``val`` is every 16th training image, ``train`` the
others; ``calib`` every 12th training image. ``data.frame_step[split]`` thins a split
further. The labelled depth is dense (in-painted Kinect); the sparse input is
``data.sparse_samples`` pixels of it drawn at random, the same pixels for an image every
time it is read, whatever the split or the order.
"""
from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import scipy.io

from jaxdepth.data.folder import DataError

MAT_FILE = "nyu_depth_v2_labeled.mat"
SPLITS_FILE = "splits.mat"
VAL_EVERY = 16
CALIB_EVERY = 12
_SPARSE_SEED = 20131   # fixed: the sampled pixels of an image never change


def sample_sparse(depth: np.ndarray, count: int, image_index: int) -> np.ndarray:
    """``count`` valid pixels of ``depth`` (the rest 0), drawn from the image's own seed."""
    rows, cols = np.nonzero(depth > 0)
    rng = np.random.default_rng([_SPARSE_SEED, image_index])
    keep = rng.choice(rows.size, size=min(count, rows.size), replace=False)
    sparse = np.zeros_like(depth)
    sparse[rows[keep], cols[keep]] = depth[rows[keep], cols[keep]]
    return sparse


def _split_indices(path: Path) -> dict[str, np.ndarray]:
    """0-based image indices of every split, from the official 1-based ``splits.mat``."""
    if not path.is_file():
        raise DataError(f"{path}: split file is missing (the official NYUv2 splits.mat, "
                        "with trainNdxs and testNdxs)")
    try:
        mat = scipy.io.loadmat(path)
    except (ValueError, TypeError, OSError, NotImplementedError) as exc:
        raise DataError(f"{path}: cannot be read as a MATLAB file ({exc})") from exc
    out = {}
    for key in ("trainNdxs", "testNdxs"):
        if key not in mat:
            raise DataError(f"{path}: has no '{key}' (keys: {', '.join(k for k in mat if not k.startswith('__'))})")
        out[key] = np.asarray(mat[key]).astype(np.int64).ravel() - 1
    train = out["trainNdxs"]
    held_out = np.arange(train.size) % VAL_EVERY == VAL_EVERY - 1
    return {"train": train[~held_out], "val": train[held_out], "calib": train[::CALIB_EVERY],
            "test": out["testNdxs"]}


class NyuDataset:
    """One split of the labelled set; images are read from the HDF5 file on demand."""

    def __init__(self, root: str | Path, split: str, *, sparse_samples: int = 500,
                 frame_step: int | None = None) -> None:
        self.root = Path(root)
        self.path = self.root / MAT_FILE
        if not self.path.is_file():
            raise DataError(f"{self.path}: file is missing (data.root must hold the NYUv2 labelled "
                            "set nyu_depth_v2_labeled.mat and splits.mat)")
        splits = _split_indices(self.root / SPLITS_FILE)
        if split not in splits:
            raise DataError(f"NYUv2 has no split {split!r}; splits: {', '.join(splits)}")
        if sparse_samples < 1:
            raise DataError(f"data.sparse_samples: must be >= 1, got {sparse_samples}")
        if frame_step is not None and frame_step < 1:
            raise DataError(f"data.frame_step.{split}: must be >= 1, got {frame_step}")
        self.split = split
        self.sparse_samples = sparse_samples
        self._file = self._open()
        self.indices = splits[split][::frame_step or 1]
        count = self._file["images"].shape[0]
        bad = self.indices[(self.indices < 0) | (self.indices >= count)]
        if bad.size:
            raise DataError(f"{self.root / SPLITS_FILE}: image number {bad[0] + 1} is outside "
                            f"{self.path} ({count} images)")
        self.names = [f"{i:04d}" for i in self.indices]

    def _open(self) -> h5py.File:
        """Opens the .mat and checks the two arrays' layout, so a bad file fails here."""
        try:
            f = h5py.File(self.path, "r")
        except OSError as exc:
            raise DataError(f"{self.path}: not a MATLAB v7.3 (HDF5) file ({exc}); the labelled "
                            "set is distributed as v7.3") from exc
        for key in ("images", "depths"):
            if key not in f or not isinstance(f[key], h5py.Dataset):
                raise DataError(f"{self.path}: has no '{key}' array (keys: {', '.join(f.keys())})")
        images, depths = f["images"], f["depths"]
        if images.ndim != 4 or images.shape[1] != 3 or images.dtype != np.uint8:
            raise DataError(f"{self.path}: 'images' is {images.dtype} {images.shape}, expected uint8 "
                            "(N, 3, W, H) as MATLAB v7.3 stores (N, H, W, 3)")
        if depths.shape != (images.shape[0],) + images.shape[2:] or depths.dtype.kind != "f":
            raise DataError(f"{self.path}: 'depths' is {depths.dtype} {depths.shape}, expected float "
                            f"{(images.shape[0],) + images.shape[2:]} to match 'images'")
        return f

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> dict:
        i = int(self.indices[index])
        rgb = self._file["images"][i].transpose(2, 1, 0)     # h5py's lock serialises the threads
        depth = self._file["depths"][i].T
        depth = np.nan_to_num(depth.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)
        depth[depth < 0] = 0.0
        return {"name": self.names[index], "rgb": np.ascontiguousarray(rgb, np.float32) / 255.0, "depth": depth,
                "lidar": sample_sparse(depth, self.sparse_samples, i)}
