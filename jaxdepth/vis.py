"""Pictures of predicted depth: one panel per image and summary plots over a split.

A panel shows RGB | sparse input | ground truth | FP32 depth | INT8 depth | |INT8 - FP32|:
the four depth maps share one colour scale in metres (``magma_r``: near is bright, far is
dark, no value is white) and the deviation has its own scale in millimetres. Summary plots:
the error of FP32 and INT8 per ground-truth depth band, and the histogram of the INT8 -
FP32 deviation over every valid pixel. Rendered with matplotlib's Agg canvas (no display).
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
from matplotlib.colors import Normalize
from matplotlib.figure import Figure

from jaxdepth.checkpoint import has_ranges
from jaxdepth.data.sources import eval_pipeline
from jaxdepth.encodings import output_decoder
from jaxdepth.evaluate import Evaluator, pad_batch
from jaxdepth.export.exporter import ExportError, export_graph
from jaxdepth.export.integer import make_integer_forward
from jaxdepth.metrics import valid_mask
from jaxdepth.quant.freeze import freeze

DEPTH_CMAP = "magma_r"
DEVIATION_CMAP = "inferno"
PANEL_WIDTH_IN = 4.8          # one image's width in the panel, inches
DPI = 120

Predict = Callable[[np.ndarray, np.ndarray], np.ndarray]   # (rgb, lidar) batch -> depth (B, H, W)


def _show_depth(fig: Figure, ax, depth: np.ndarray, norm: Normalize, title: str,
                sparse: bool = False) -> None:
    """Dense depth as an image, sparse depth as dots; missing values stay white."""
    h, w = depth.shape
    ax.set_facecolor("white")
    if sparse:
        rows, cols = np.nonzero(depth > 0)
        dot = max(0.5, (PANEL_WIDTH_IN * 72 / w) ** 2 * 1.5)       # about 1.2 pixels across, in pt^2
        mappable = ax.scatter(cols, rows, c=depth[rows, cols], s=dot, cmap=DEPTH_CMAP, norm=norm,
                              marker="s", linewidths=0)
        ax.set_xlim(-0.5, w - 0.5)
        ax.set_ylim(h - 0.5, -0.5)
        ax.set_aspect("equal")
    else:
        mappable = ax.imshow(np.ma.masked_less_equal(depth, 0.0), cmap=DEPTH_CMAP, norm=norm,
                             interpolation="nearest")
    fig.colorbar(mappable, ax=ax, fraction=0.04, pad=0.01, label="m")
    ax.set_title(title, fontsize=9)


def depth_panel(path: str | Path, rgb: np.ndarray, lidar: np.ndarray, gt: np.ndarray,
                fp32: np.ndarray, int8: np.ndarray | None, *, min_depth: float, max_depth: float,
                title: str = "", int8_label: str = "INT8") -> None:
    """Writes one image's panel (PNG). Without ``int8`` the last row is left out."""
    h, w = gt.shape
    rows = 3 if int8 is not None else 2
    cell_h = PANEL_WIDTH_IN * h / w
    fig = Figure(figsize=(2 * PANEL_WIDTH_IN + 1.4, rows * (cell_h + 0.45) + 0.3), dpi=DPI,
                 layout="constrained")
    axes = fig.subplots(rows, 2)
    norm = Normalize(min_depth, max_depth)
    axes[0, 0].imshow(np.clip(rgb, 0.0, 1.0), interpolation="nearest")
    axes[0, 0].set_title("RGB", fontsize=9)
    n_points = int((lidar > 0).sum())
    _show_depth(fig, axes[0, 1], lidar, norm, f"sparse input ({n_points} points)", sparse=True)
    gt_sparse = (gt > 0).mean() < 0.5
    _show_depth(fig, axes[1, 0], gt, norm, "ground truth", sparse=gt_sparse)
    _show_depth(fig, axes[1, 1], fp32, norm, "FP32 depth")
    if int8 is not None:
        _show_depth(fig, axes[2, 0], int8, norm, f"{int8_label} depth")
        dev = np.abs(int8 - fp32) * 1000.0
        top = max(1.0, float(np.percentile(dev, 99)))
        im = axes[2, 1].imshow(dev, cmap=DEVIATION_CMAP, vmin=0.0, vmax=top, interpolation="nearest")
        fig.colorbar(im, ax=axes[2, 1], fraction=0.04, pad=0.01, label="mm")
        axes[2, 1].set_title(f"|{int8_label} - FP32| (median {np.median(dev):.0f} mm, "
                             f"max {dev.max():.0f} mm)", fontsize=9)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    if title:
        fig.suptitle(title, fontsize=10)
    fig.savefig(path)


def depth_bands(min_depth: float, max_depth: float, count: int = 5) -> list[tuple[float, float]]:
    """``count`` geometric bands over the depth range, edges rounded to two digits."""
    edges = [float(f"{x:.2g}") for x in np.geomspace(min_depth, max_depth, count + 1)]
    edges[0], edges[-1] = min_depth, max_depth
    return list(zip(edges[:-1], edges[1:]))


class _BandErrors:
    """Pixel-pooled absolute and relative error per ground-truth depth band."""

    def __init__(self, bands: list[tuple[float, float]]) -> None:
        self.bands = bands
        self.abs = np.zeros(len(bands))
        self.rel = np.zeros(len(bands))
        self.pixels = np.zeros(len(bands), np.int64)

    def add(self, pred: np.ndarray, gt: np.ndarray) -> None:
        lows = np.array([lo for lo, _ in self.bands])
        band = np.searchsorted(lows, gt, side="right") - 1
        err = np.abs(pred - gt)
        self.abs += np.bincount(band, err, len(self.bands))
        self.rel += np.bincount(band, err / gt, len(self.bands))
        self.pixels += np.bincount(band, minlength=len(self.bands))

    def result(self) -> dict:
        n = np.maximum(self.pixels, 1)
        return {"mae_m": (self.abs / n).tolist(), "abs_rel": (self.rel / n).tolist(),
                "pixels": self.pixels.tolist()}


def band_plot(path: str | Path, bands: list[tuple[float, float]], errors: dict[str, dict]) -> None:
    """Grouped bars: mean absolute error (m) and abs_rel per depth band, one bar per model."""
    fig = Figure(figsize=(9.0, 3.4), dpi=DPI, layout="constrained")
    axes = fig.subplots(1, 2)
    labels = [f"{lo:g}-{hi:g}" for lo, hi in bands]
    x = np.arange(len(bands))
    width = 0.8 / len(errors)
    colours = ("#3b6ea8", "#d1603d", "#5b9e5b")
    for ax, key, name in ((axes[0], "mae_m", "mean |error| (m)"), (axes[1], "abs_rel", "abs_rel")):
        for i, (model, e) in enumerate(errors.items()):
            ax.bar(x + (i - (len(errors) - 1) / 2) * width, e[key], width, label=model, color=colours[i])
        ax.set_xticks(x, labels)
        ax.set_xlabel("ground-truth depth band (m)")
        ax.set_ylabel(name)
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend()
    pixels = next(iter(errors.values()))["pixels"]
    axes[1].set_title("pixels per band: " + ", ".join(f"{p:,}" for p in pixels), fontsize=8)
    fig.savefig(path)


def deviation_plot(path: str | Path, counts: np.ndarray, bin_mm: float, int8_label: str = "INT8") -> None:
    """Histogram of |INT8 - FP32| (mm) from fine-bin counts, shown up to the 99.9th percentile."""
    total = max(int(counts.sum()), 1)
    cumulative = np.cumsum(counts)
    last = int(np.searchsorted(cumulative, 0.999 * total)) + 1     # fine bins shown
    group = math.ceil(last / 60)                                   # at most 60 bars
    n = math.ceil(last / group)
    shown = np.pad(counts, (0, max(0, n * group - counts.size)))[:n * group].reshape(n, group).sum(1)
    edges = np.arange(n + 1) * group * bin_mm
    mean = float((counts * (np.arange(counts.size) + 0.5)).sum() / total * bin_mm)
    median = float((np.searchsorted(cumulative, 0.5 * total) + 0.5) * bin_mm)
    fig = Figure(figsize=(6.0, 3.4), dpi=DPI, layout="constrained")
    ax = fig.subplots()
    ax.stairs(shown / total, edges, fill=True, color="#d1603d", alpha=0.8)
    ax.axvline(median, color="black", lw=1, ls="--", label=f"median {median:.0f} mm")
    ax.set_xlabel(f"|{int8_label} - FP32| depth (mm)")
    ax.set_ylabel("share of valid pixels")
    ax.set_title(f"{total:,} pixels, mean {mean:.0f} mm (99.9 % shown)", fontsize=9)
    ax.legend()
    ax.grid(alpha=0.3)
    fig.savefig(path)


def save_split_pictures(out_dir: str | Path, batches: Iterable[dict], fp32: Predict, int8: Predict | None,
                        *, min_depth: float, max_depth: float, num: int, garg_crop: bool = False,
                        int8_label: str = "INT8") -> dict:
    """Panels of the first ``num`` images and the summary plots over all ``batches``.

    Errors count the pixels the metrics count (ground truth inside the depth range, Garg
    crop if set). Returns what was written and the band errors (also ``summary.json``).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    bands = depth_bands(min_depth, max_depth)
    errors = {"FP32": _BandErrors(bands)}
    if int8 is not None:
        errors[int8_label] = _BandErrors(bands)
    bin_mm = 1.0
    counts = np.zeros(int(max_depth * 1000 / bin_mm) + 1, np.int64)
    panels: list[str] = []
    for batch in batches:
        depth_fp32 = fp32(batch["rgb"], batch["lidar"])
        depth_int8 = int8(batch["rgb"], batch["lidar"]) if int8 is not None else None
        mask = np.asarray(valid_mask(batch["depth"], min_depth, max_depth, garg_crop))
        gt = batch["depth"][mask]
        errors["FP32"].add(depth_fp32[mask], gt)
        if depth_int8 is not None:
            errors[int8_label].add(depth_int8[mask], gt)
            dev = np.abs(depth_int8[mask] - depth_fp32[mask]) * 1000.0
            counts += np.bincount(np.minimum(dev / bin_mm, counts.size - 1).astype(np.int64),
                                  minlength=counts.size)
        for i, name in enumerate(batch["name"]):
            if len(panels) >= num:
                break
            path = out / f"{len(panels):03d}_{name.replace('/', '_')}.png"
            depth_panel(path, batch["rgb"][i], batch["lidar"][i], batch["depth"][i], depth_fp32[i],
                        None if depth_int8 is None else depth_int8[i], min_depth=min_depth,
                        max_depth=max_depth, title=name, int8_label=int8_label)
            panels.append(path.name)
    result = {k: e.result() for k, e in errors.items()}
    band_plot(out / "error_by_depth.png", bands, result)
    written = {"panels": panels, "error_by_depth": "error_by_depth.png"}
    if int8 is not None and counts.sum():
        deviation_plot(out / "deviation_hist.png", counts, bin_mm, int8_label)
        written["deviation_hist"] = "deviation_hist.png"
    summary = {"bands_m": bands, "errors": result, "files": written}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def save_eval_pictures(evaluator: Evaluator, variables: dict, split: str, out_dir: str | Path,
                       num: int) -> dict:
    """``save_split_pictures`` for a checkpoint: FP32 and, when it holds activation ranges,
    the integer INT8 forward of its export (fake-quant INT8 if it cannot be exported)."""
    cfg, enc = evaluator.cfg, evaluator.encoding
    use_lidar, bs = cfg.model.sparse, cfg.eval.batch_size

    def batched(fn: Callable, *args: dict) -> Predict:
        return lambda rgb, lidar: np.asarray(fn(*args, pad_batch(rgb, bs), pad_batch(lidar, bs)))[:len(rgb)]

    int8, label = None, "INT8"
    if has_ranges(variables):
        try:
            graph = export_graph(cfg, variables, cfg.data.height, cfg.data.width, use_lidar)
            forward = make_integer_forward(graph)
            decode = output_decoder(cfg.model, use_lidar)
            int8 = batched(lambda rgb, lidar: decode(forward(rgb, lidar), lidar))
        except ExportError:
            int8 = batched(evaluator.predictor("fake", use_lidar), freeze(evaluator.models["fake"], variables, use_lidar))
            label = "INT8 fake-quant"
    return save_split_pictures(out_dir, eval_pipeline(cfg, split).epoch(0),
                               batched(evaluator.predictor("float", use_lidar), variables), int8,
                               min_depth=enc.min_depth, max_depth=enc.max_depth, num=num,
                               garg_crop=cfg.eval.garg_crop, int8_label=label)
