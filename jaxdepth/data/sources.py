"""From a config to data: the data set (folder, KITTI, NYUv2; rendered if needed) and batch pipelines."""
from __future__ import annotations

from pathlib import Path

from jaxdepth.config import Config, ConfigError
from jaxdepth.data.folder import FolderDataset
from jaxdepth.data.kitti import KittiDataset
from jaxdepth.data.nyu import NyuDataset
from jaxdepth.data.pipeline import Augment, Dataset, Pipeline
from jaxdepth.data.synthetic import ensure_dataset


def dataset_root(cfg: Config, progress: bool = True) -> Path:
    """The data folder; the embedded synthetic data is rendered on first use."""
    root = Path(cfg.data.root)
    if cfg.data.generate:
        ensure_dataset(root, height=cfg.data.gen_height, width=cfg.data.gen_width,
                       counts=dict(cfg.data.gen_counts), seed=cfg.data.gen_seed, progress=progress)
    return root


def check_splits(cfg: Config, splits: list[str]) -> None:
    """Fails before any work when a split the run needs is not in the folder data set
    (or, for data still to be rendered, not in ``data.gen_counts``)."""
    if cfg.data.format != "folder":
        return
    root = Path(cfg.data.root)
    if (root / "meta.json").is_file() or not cfg.data.generate:
        have = sorted(p.stem for p in root.glob("*.txt"))
        where = f"data.root {root}"
        if not root.is_dir():
            raise ConfigError(f"data.root: {root} does not exist (and data.generate is false)")
    else:
        have = sorted(k for k, n in cfg.data.gen_counts.items() if n > 0)
        where = "data.gen_counts"
    for split in splits:
        if split not in have:
            key = "eval.split" if split == cfg.eval.split else "data.root"
            raise ConfigError(f"{key}: split {split!r} is not in {where} (it has: "
                              f"{', '.join(have) or 'nothing'})")


def open_dataset(cfg: Config, split: str) -> Dataset:
    """One split of the data set in ``data.format``: folder, kitti or nyu."""
    d = cfg.data
    if d.format == "folder":
        return FolderDataset(dataset_root(cfg), split)
    if d.format == "kitti":
        return KittiDataset(d.root, d.raw_root, split, drives=d.drives.get(split, ()),
                            frame_step=d.frame_step.get(split))
    if d.format == "nyu":
        return NyuDataset(d.root, split, sparse_samples=d.sparse_samples, frame_step=d.frame_step.get(split))
    raise ConfigError(f"data.format: unknown format {d.format!r}; choose one of folder, kitti, nyu")


def train_pipeline(cfg: Config, process: tuple[int, int] = (0, 1)) -> Pipeline:
    """Training batches; ``process`` = (index, count) loads that process's rows of every
    global batch of ``data.batch_size``."""
    d = cfg.data
    augment = Augment(hflip=d.hflip, brightness=d.brightness, contrast=d.contrast,
                      saturation=d.saturation, hue=d.hue)
    return Pipeline(open_dataset(cfg, "train"), batch_size=d.batch_size,
                    height=d.height, width=d.width, shuffle=True, augment=augment,
                    seed=cfg.train.seed, drop_remainder=True, prefetch=d.prefetch, workers=d.workers,
                    shard=process)


def eval_pipeline(cfg: Config, split: str) -> Pipeline:
    """Unshuffled, unaugmented batches of ``eval.batch_size`` (last one partial)."""
    return Pipeline(open_dataset(cfg, split), batch_size=cfg.eval.batch_size,
                    height=cfg.data.height, width=cfg.data.width, shuffle=False, augment=None,
                    seed=0, drop_remainder=False, prefetch=cfg.data.prefetch, workers=cfg.data.workers)
