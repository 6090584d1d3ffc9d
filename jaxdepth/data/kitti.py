"""Reader for KITTI depth completion in its official on-disk layout.

Unzipping ``data_depth_annotated.zip`` and ``data_depth_velodyne.zip`` into one folder
(``data.root``) gives ``train/`` and ``val/`` with, per drive and camera::

    <subset>/<drive>/proj_depth/groundtruth/image_0X/<frame>.png    ground truth
    <subset>/<drive>/proj_depth/velodyne_raw/image_0X/<frame>.png   sparse LiDAR input

(the two zips kept apart, as ``data_depth_annotated/<subset>/...`` and
``data_depth_velodyne/<subset>/...``, work too). The RGB images come from the raw drives
(``data.raw_root``): ``<date>/<drive>/image_0X/data/<frame>.png``. Depth PNGs are 16 bit,
metres = value / 256, 0 = invalid. ``data_depth_selection.zip`` adds
``depth_selection/val_selection_cropped`` (1000 images, already 352x1216), the ``test``
split when present.

Splits: ``train`` and ``calib`` read ``train/``, ``val`` (and ``test`` without the
selection) read ``val/``; ``data.drives[split]`` restricts a split to some drives and
``data.frame_step[split]`` keeps every n-th frame. Every image is cropped to the
352x1216 bottom-centre window that both cameras of every drive contain.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Sequence

import numpy as np

from jaxdepth.data.folder import DataError, read_depth_png, read_rgb_png

CROP = (352, 1216)
CAMERAS = ("image_02", "image_03")
SUBSETS = {"train": "train", "calib": "train", "val": "val", "test": "val"}
CALIB_STEP = 1000          # calib: ~90 images of the 86k training frames unless frame_step says
SELECTION = Path("depth_selection") / "val_selection_cropped"
_SELECTION_NAME = re.compile(r"^(?P<drive>.+_sync)_image_(?P<frame>\d+)_(?P<camera>image_0[23])\.png$")
_PROJ = {"groundtruth": "data_depth_annotated", "velodyne_raw": "data_depth_velodyne"}


def bottom_crop(image: np.ndarray, path: Path) -> np.ndarray:
    """The 352x1216 window at the bottom, centred horizontally (the sky has no LiDAR)."""
    h, w = image.shape[:2]
    ch, cw = CROP
    if h < ch or w < cw:
        raise DataError(f"{path}: image is {w}x{h}, smaller than the {cw}x{ch} KITTI crop")
    left = (w - cw) // 2
    return image[h - ch:, left:left + cw]


def _proj_dir(root: Path, subset: str, drive: str, kind: str) -> Path:
    """``proj_depth/<kind>`` of a drive, in the merged or the two-folder layout."""
    merged = root / subset / drive / "proj_depth" / kind
    return merged if merged.is_dir() else root / _PROJ[kind] / subset / drive / "proj_depth" / kind


def _subset_dir(root: Path, subset: str) -> Path:
    for candidate in (root / subset, root / _PROJ["groundtruth"] / subset):
        if candidate.is_dir():
            return candidate
    raise DataError(f"{root}: no '{subset}/' folder (nor data_depth_annotated/{subset}/): is data.root "
                    "the folder the KITTI depth completion zips were extracted into?")


class KittiDataset:
    """One split of KITTI depth completion; samples are decoded and cropped on demand."""

    def __init__(self, root: str | Path, raw_root: str | Path, split: str, *,
                 drives: Sequence[str] = (), frame_step: int | None = None) -> None:
        self.root = Path(root)
        self.raw_root = Path(raw_root)
        self.split = split
        if not self.root.is_dir():
            raise DataError(f"{self.root}: KITTI depth completion root (data.root) does not exist")
        if split not in SUBSETS:
            raise DataError(f"KITTI has no split {split!r}; splits: {', '.join(SUBSETS)}")
        step = frame_step or (CALIB_STEP if split == "calib" else 1)
        if step < 1:
            raise DataError(f"data.frame_step.{split}: must be >= 1, got {step}")
        selection = self.root / SELECTION
        if split == "test" and not drives and selection.is_dir():
            self.samples = self._selection(selection)
        else:
            if not self.raw_root.is_dir():
                raise DataError(f"{self.raw_root}: KITTI raw data root (data.raw_root) does not exist")
            self.samples = self._drives(SUBSETS[split], drives)
        self.samples = self.samples[::step]
        if not self.samples:
            raise DataError(f"{self.root}: KITTI split '{split}' has no images")
        self.names = [name for name, _ in self.samples]

    def _drives(self, subset: str, drives: Sequence[str]) -> list[tuple[str, tuple[Path, Path, Path]]]:
        """(name, (rgb, lidar, ground truth)) of every annotated frame of the drives."""
        subset_dir = _subset_dir(self.root, subset)
        available = sorted(p.name for p in subset_dir.iterdir() if p.is_dir())
        missing = sorted(set(drives) - set(available))
        if missing:
            raise DataError(f"{subset_dir}: drive {missing[0]} (data.drives.{self.split}) is not there; "
                            f"{len(available)} drives are")
        samples = []
        for drive in drives or available:
            gt_dir = _proj_dir(self.root, subset, drive, "groundtruth")
            lidar_dir = _proj_dir(self.root, subset, drive, "velodyne_raw")
            for camera in CAMERAS:
                rgb_dir = self.raw_root / drive[:10] / drive / camera / "data"
                for gt in sorted((gt_dir / camera).glob("*.png")):
                    samples.append((f"{drive}/{camera}/{gt.stem}",
                                    (rgb_dir / gt.name, lidar_dir / camera / gt.name, gt)))
        return samples

    @staticmethod
    def _selection(folder: Path) -> list[tuple[str, tuple[Path, Path, Path]]]:
        """The 1000 pre-cropped frames of ``val_selection_cropped``."""
        samples = []
        for rgb in sorted((folder / "image").glob("*.png")):
            m = _SELECTION_NAME.match(rgb.name)
            if m is None:
                raise DataError(f"{rgb}: not a val_selection_cropped image name "
                                "(<drive>_sync_image_<frame>_image_0X.png)")
            drive, frame, camera = m["drive"], m["frame"], m["camera"]
            samples.append((f"{drive}/{camera}/{frame}", (
                rgb,
                folder / "velodyne_raw" / f"{drive}_velodyne_raw_{frame}_{camera}.png",
                folder / "groundtruth_depth" / f"{drive}_groundtruth_depth_{frame}_{camera}.png")))
        return samples

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict:
        name, (rgb_path, lidar_path, gt_path) = self.samples[index]
        rgb = read_rgb_png(rgb_path)
        out = {"name": name, "rgb": bottom_crop(rgb, rgb_path)}
        for key, path in (("lidar", lidar_path), ("depth", gt_path)):
            depth = read_depth_png(path)
            if depth.shape != rgb.shape[:2]:
                raise DataError(f"{path}: size {depth.shape[1]}x{depth.shape[0]} does not match "
                                f"{rgb_path} ({rgb.shape[1]}x{rgb.shape[0]})")
            out[key] = bottom_crop(depth, path)
        return out

