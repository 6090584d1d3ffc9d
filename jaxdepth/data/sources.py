"""From a config to data: the dataset folder (rendered if needed) and batch pipelines."""
from __future__ import annotations

from pathlib import Path

from jaxdepth.config import Config
from jaxdepth.data.folder import FolderDataset
from jaxdepth.data.pipeline import Augment, Pipeline
from jaxdepth.data.synthetic import ensure_dataset


def dataset_root(cfg: Config) -> Path:
    """The data folder; the embedded synthetic data is rendered on first use."""
    root = Path(cfg.data.root)
    if cfg.data.generate:
        ensure_dataset(root, height=cfg.data.gen_height, width=cfg.data.gen_width,
                       counts=dict(cfg.data.gen_counts), seed=cfg.data.gen_seed, progress=True)
    return root


def train_pipeline(cfg: Config) -> Pipeline:
    d = cfg.data
    augment = Augment(hflip=d.hflip, brightness=d.brightness, contrast=d.contrast,
                      saturation=d.saturation, hue=d.hue)
    return Pipeline(FolderDataset(dataset_root(cfg), "train"), batch_size=d.batch_size,
                    height=d.height, width=d.width, shuffle=True, augment=augment,
                    seed=cfg.train.seed, drop_remainder=True, prefetch=d.prefetch, workers=d.workers)


def eval_pipeline(cfg: Config, split: str) -> Pipeline:
    """Unshuffled, unaugmented batches of ``eval.batch_size`` (last one partial)."""
    return Pipeline(FolderDataset(dataset_root(cfg), split), batch_size=cfg.eval.batch_size,
                    height=cfg.data.height, width=cfg.data.width, shuffle=False, augment=None,
                    seed=0, drop_remainder=False, prefetch=cfg.data.prefetch, workers=cfg.data.workers)
