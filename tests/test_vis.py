"""Pictures: one panel rendered from arrays, and the pictures of a trained tiny run."""
from __future__ import annotations

import json

import numpy as np
from PIL import Image

from jaxdepth.vis import DPI, PANEL_WIDTH_IN, depth_bands, depth_panel


def _scene(h: int, w: int) -> dict:
    rng = np.random.default_rng(0)
    rows = np.linspace(1.0, 0.0, h)[:, None] * np.ones((1, w))
    gt = (0.5 + 14.0 * (1.0 - rows) ** 2).astype(np.float32)
    lidar = np.where(rng.random((h, w)) < 0.05, gt, 0.0).astype(np.float32)
    fp32 = gt * 1.03
    int8 = np.exp(np.round(np.log(fp32) * 40.0) / 40.0)
    rgb = np.stack([rows, 1.0 - rows, np.full_like(rows, 0.5)], axis=-1)
    return {"rgb": rgb, "lidar": lidar, "gt": gt, "fp32": fp32, "int8": int8}


def test_panel_is_drawn(tmp_path):
    s = _scene(48, 160)
    path = tmp_path / "panel.png"
    depth_panel(path, s["rgb"], s["lidar"], s["gt"], s["fp32"], s["int8"], min_depth=0.5,
                max_depth=15.0, title="scene")
    image = np.asarray(Image.open(path).convert("RGB"))
    h, w, _ = image.shape
    assert w >= 2 * PANEL_WIDTH_IN * DPI and h > w / 4          # 3 x 2 cells of 160:48 images
    pixels = image.reshape(-1, 3)
    assert pixels.std() > 40                                    # not blank
    assert len(np.unique(pixels[::7], axis=0)) > 200            # colour maps, not flat fills
    depth_panel(tmp_path / "fp32_only.png", s["rgb"], s["lidar"], s["gt"], s["fp32"], None,
                min_depth=0.5, max_depth=15.0)
    assert Image.open(tmp_path / "fp32_only.png").size[1] < h   # two rows without INT8


def test_depth_bands_cover_the_range():
    bands = depth_bands(1.0, 80.0)
    assert bands[0][0] == 1.0 and bands[-1][1] == 80.0
    assert all(a[1] == b[0] for a, b in zip(bands, bands[1:]))


def test_eval_pictures_of_a_trained_run(finished_run, tmp_path):
    """The pictures eval.py --save-vis writes (the command itself runs in test_docs)."""
    from jaxdepth.vis import save_eval_pictures

    trainer, _ = finished_run
    out = tmp_path / "vis"
    summary = save_eval_pictures(trainer.evaluate, trainer.state.variables, "test", out, 2)
    assert json.loads((out / "summary.json").read_text())["files"] == summary["files"]
    assert len(summary["files"]["panels"]) == 2
    assert set(summary["errors"]) == {"FP32", "INT8"}           # the integer forward of the export
    for name in summary["files"]["panels"] + ["error_by_depth.png", "deviation_hist.png"]:
        image = np.asarray(Image.open(out / name).convert("L"))
        assert image.std() > 10, name
