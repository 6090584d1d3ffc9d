"""KITTI depth completion and NYUv2 readers on fixtures written in the exact on-disk formats."""
from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import scipy.io
from PIL import Image

from jaxdepth.config import ConfigError, load_config
from jaxdepth.data import DataError, write_depth_png, write_rgb_png
from jaxdepth.data.kitti import CROP, KittiDataset
from jaxdepth.data.nyu import MAT_FILE, SPLITS_FILE, NyuDataset, sample_sparse
from jaxdepth.data.sources import eval_pipeline

KITTI_DRIVES = {"train": ["2011_09_26_drive_0001_sync", "2011_09_28_drive_0002_sync"],
                "val": ["2011_09_26_drive_0005_sync"]}
FRAMES = ("0000000005", "0000000006")
KITTI_SIZE = (375, 1242)          # raw image size of the 2011_09_26 drives


def _kitti_depth(rng: np.random.Generator, density: float) -> np.ndarray:
    depth = rng.uniform(2.0, 85.0, KITTI_SIZE).astype(np.float32)
    depth[rng.random(KITTI_SIZE) > density] = 0.0
    depth[:100] = 0.0             # no LiDAR above the horizon, as in the real data
    return depth


def write_kitti(root: Path, raw: Path) -> None:
    """The two zips' merged tree (train, val), the raw drives and a val_selection_cropped."""
    rng = np.random.default_rng(0)
    for subset, drives in KITTI_DRIVES.items():
        for drive in drives:
            for camera in ("image_02", "image_03"):
                rgb_dir = raw / drive[:10] / drive / camera / "data"
                gt_dir = root / subset / drive / "proj_depth" / "groundtruth" / camera
                lidar_dir = root / subset / drive / "proj_depth" / "velodyne_raw" / camera
                for d in (rgb_dir, gt_dir, lidar_dir):
                    d.mkdir(parents=True)
                for frame in FRAMES:
                    write_rgb_png(rgb_dir / f"{frame}.png", rng.random(KITTI_SIZE + (3,)))
                    write_depth_png(gt_dir / f"{frame}.png", _kitti_depth(rng, 0.3))
                    write_depth_png(lidar_dir / f"{frame}.png", _kitti_depth(rng, 0.05))
    sel = root / "depth_selection" / "val_selection_cropped"
    drive, frame = KITTI_DRIVES["val"][0], FRAMES[0]
    for sub in ("image", "velodyne_raw", "groundtruth_depth"):
        (sel / sub).mkdir(parents=True)
        path = sel / sub / f"{drive}_{sub}_{frame}_image_02.png"
        if sub == "image":
            write_rgb_png(path, rng.random(CROP + (3,)))
        else:
            write_depth_png(path, rng.uniform(1.0, 80.0, CROP).astype(np.float32))


@pytest.fixture(scope="module")
def kitti_root(tmp_path_factory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("kitti")
    write_kitti(base / "depth", base / "raw")
    return base / "depth", base / "raw"


def test_kitti_splits_crop_and_values(kitti_root):
    root, raw = kitti_root
    train = KittiDataset(root, raw, "train")
    assert len(train) == 2 * 2 * len(FRAMES)       # drives x cameras x frames
    assert train.names[0] == f"{KITTI_DRIVES['train'][0]}/image_02/{FRAMES[0]}"
    s = train[0]
    assert s["rgb"].shape == CROP + (3,) and s["depth"].shape == CROP and s["lidar"].shape == CROP
    gt_path = root / "train" / KITTI_DRIVES["train"][0] / "proj_depth" / "groundtruth" / "image_02" / f"{FRAMES[0]}.png"
    stored = np.asarray(Image.open(gt_path))
    assert stored.dtype == np.uint16
    h, w = KITTI_SIZE
    left = (w - CROP[1]) // 2
    np.testing.assert_array_equal(s["depth"], stored[h - CROP[0]:, left:left + CROP[1]] / 256.0)
    one = KittiDataset(root, raw, "train", drives=[KITTI_DRIVES["train"][1]], frame_step=2)
    assert len(one) == 2 and all(n.startswith(KITTI_DRIVES["train"][1]) for n in one.names)
    assert len(KittiDataset(root, raw, "val")) == 2 * len(FRAMES)
    test = KittiDataset(root, raw, "test")             # the pre-cropped selection
    assert test.names == [f"{KITTI_DRIVES['val'][0]}/image_02/{FRAMES[0]}"]
    assert test[0]["depth"].shape == CROP


def test_kitti_errors_name_the_file(kitti_root, tmp_path):
    root, raw = kitti_root
    with pytest.raises(DataError, match="drive 2011_09_26_drive_9999_sync"):
        KittiDataset(root, raw, "train", drives=["2011_09_26_drive_9999_sync"])
    with pytest.raises(DataError, match="data.raw_root"):
        KittiDataset(root, tmp_path / "nowhere", "train")
    bad_raw = tmp_path / "raw"
    drive = KITTI_DRIVES["val"][0]
    rgb_dir = bad_raw / drive[:10] / drive / "image_02" / "data"
    rgb_dir.mkdir(parents=True)
    Image.fromarray(np.zeros(KITTI_SIZE, np.uint16)).save(rgb_dir / f"{FRAMES[0]}.png")
    ds = KittiDataset(root, bad_raw, "val")
    with pytest.raises(DataError, match=rf"{FRAMES[0]}\.png: PNG is 16-bit grey, expected 8-bit RGB"):
        ds[0]
    with pytest.raises(DataError, match=rf"image_03/data/{FRAMES[0]}\.png: file is missing"):
        ds[len(FRAMES)]


def test_kitti_through_the_config(kitti_root):
    root, raw = kitti_root
    cfg = load_config("configs/kitti_small.yaml", [f"data.root={root}", f"data.raw_root={raw}",
                                                   "data.frame_step={}", "eval.batch_size=2", "data.workers=1"])
    assert cfg.data.format == "kitti" and cfg.model.max_depth == 80.0 and cfg.eval.garg_crop
    batch = next(iter(eval_pipeline(cfg, "val").epoch(0)))
    assert batch["rgb"].shape == (2, cfg.data.height, cfg.data.width, 3)
    assert (batch["lidar"] > 0).any()
    with pytest.raises(ConfigError, match="data.format: 'kiti' is not one of folder, kitti, nyu"):
        load_config(None, ["data.format=kiti"])


def _write_v73(path: Path, images: np.ndarray, depths: np.ndarray) -> None:
    """An HDF5 file laid out as MATLAB -v7.3 saves (N, H, W, 3) / (N, H, W): axes reversed
    per image, behind MATLAB's 512-byte header."""
    with h5py.File(path, "w", userblock_size=512) as f:
        f["images"] = images.transpose(0, 3, 2, 1)
        f["depths"] = depths.transpose(0, 2, 1)
        f["labels"] = np.zeros(depths.shape[:1] + depths.shape[2:0:-1], np.uint16)
    with open(path, "r+b") as f:
        f.write(b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Mon Jan  1 00:00:00 2024 HDF5 schema 1.00 .")


def write_nyu(root: Path) -> tuple[np.ndarray, np.ndarray]:
    """A 20-image labelled set (16 train, 4 test) at 48x64 and its splits.mat."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    n, h, w = 20, 48, 64
    images = rng.integers(0, 256, (n, h, w, 3), dtype=np.uint8)
    depths = rng.uniform(0.7, 9.5, (n, h, w)).astype(np.float32)
    _write_v73(root / MAT_FILE, images, depths)
    scipy.io.savemat(root / SPLITS_FILE, {"trainNdxs": np.arange(1, 17)[:, None].astype(np.float64),
                                          "testNdxs": np.arange(17, 21)[:, None].astype(np.float64)})
    return images, depths


@pytest.fixture(scope="module")
def nyu_root(tmp_path_factory) -> tuple[Path, np.ndarray, np.ndarray]:
    root = tmp_path_factory.mktemp("nyu")
    return (root, *write_nyu(root))


def test_nyu_reader_transposes_and_samples(nyu_root):
    root, images, depths = nyu_root
    test = NyuDataset(root, "test", sparse_samples=100)
    assert len(test) == 4 and test.names[0] == "0016"
    s = test[0]
    np.testing.assert_array_equal(s["rgb"], images[16] / np.float32(255.0))
    np.testing.assert_array_equal(s["depth"], depths[16])
    hit = s["lidar"] > 0
    assert hit.sum() == 100
    np.testing.assert_array_equal(s["lidar"][hit], depths[16][hit])
    again = NyuDataset(root, "test", sparse_samples=100, frame_step=2)[0]["lidar"]
    np.testing.assert_array_equal(again, s["lidar"])        # same pixels on every read
    assert not np.array_equal(test[1]["lidar"] > 0, hit)     # but not the same for every image
    train, val = NyuDataset(root, "train"), NyuDataset(root, "val")
    assert len(train) + len(val) == 16 and set(train.names).isdisjoint(val.names)
    few = np.zeros((4, 4), np.float32)
    few[1, 2] = 3.0
    np.testing.assert_array_equal(sample_sparse(few, 500, 0), few)   # fewer valid pixels than asked


def test_nyu_errors_name_the_file(nyu_root, tmp_path):
    root, images, depths = nyu_root
    scipy.io.savemat(tmp_path / MAT_FILE, {"images": images, "depths": depths})   # v5, not v7.3
    scipy.io.savemat(tmp_path / SPLITS_FILE, {"trainNdxs": np.arange(1, 5)[:, None],
                                              "testNdxs": np.arange(5, 9)[:, None]})
    with pytest.raises(DataError, match=rf"{MAT_FILE}: not a MATLAB v7.3 \(HDF5\) file"):
        NyuDataset(tmp_path, "test")
    _write_v73(tmp_path / MAT_FILE, images[:4], depths[:3])
    with pytest.raises(DataError, match=rf"{MAT_FILE}: 'depths' is float32 \(3, 64, 48\)"):
        NyuDataset(tmp_path, "test")
    _write_v73(tmp_path / MAT_FILE, images[:6], depths[:6])
    with pytest.raises(DataError, match=rf"{SPLITS_FILE}: image number 7 is outside"):
        NyuDataset(tmp_path, "test")
    (tmp_path / SPLITS_FILE).unlink()
    with pytest.raises(DataError, match=rf"{SPLITS_FILE}: split file is missing"):
        NyuDataset(tmp_path, "train")


def test_nyu_through_the_config(nyu_root):
    root, _, _ = nyu_root
    cfg = load_config("configs/nyu.yaml", [f"data.root={root}", "data.height=32", "data.width=32",
                                           "eval.batch_size=4", "data.workers=1"])
    assert cfg.data.format == "nyu" and cfg.model.max_depth == 10.0
    batch = next(iter(eval_pipeline(cfg, "test").epoch(0)))
    assert batch["rgb"].shape == (4, 32, 32, 3)
    assert 0 < (batch["lidar"] > 0).sum(axis=(1, 2)).min() <= cfg.data.sparse_samples
