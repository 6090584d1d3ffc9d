"""Datasets: the PNG folder format, procedural scenes and training/evaluation batches."""

from jaxdepth.data.folder import (
    DataError,
    FolderDataset,
    read_depth_png,
    read_rgb_png,
    write_depth_png,
    write_rgb_png,
)
from jaxdepth.data.pipeline import Augment, Pipeline, resize_sample
from jaxdepth.data.synthetic import ensure_dataset, generate_dataset, render_scene

__all__ = [
    "Augment",
    "DataError",
    "FolderDataset",
    "Pipeline",
    "ensure_dataset",
    "generate_dataset",
    "read_depth_png",
    "read_rgb_png",
    "render_scene",
    "resize_sample",
    "write_depth_png",
    "write_rgb_png",
]
