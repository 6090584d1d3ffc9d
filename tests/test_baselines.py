"""The baseline rows: nearest fill and the constant, checked against hand-computed values."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import tiny_cfg
from jaxdepth.baselines import CONSTANT, NEAREST_FILL, baseline_predictors, nearest_fill, train_median_depth
from jaxdepth.config import ModelConfig
from jaxdepth.data import write_depth_png, write_rgb_png
from jaxdepth.encodings import get_encoding
from jaxdepth.evaluate import evaluate

# 4x6 image, returns at (0, 0) = 2 m and (3, 5) = 8 m: pixel (r, c) is nearer the first
# when r^2 + c^2 < (r - 3)^2 + (c - 5)^2, i.e. 3r + 5c < 17 (never equal: no ties).
LIDAR = np.zeros((1, 4, 6), np.float32)
LIDAR[0, 0, 0], LIDAR[0, 3, 5] = 2.0, 8.0
FILLED = np.array([[2, 2, 2, 2, 8, 8],
                   [2, 2, 2, 8, 8, 8],
                   [2, 2, 2, 8, 8, 8],
                   [2, 2, 8, 8, 8, 8]], np.float32)
GT = np.tile(np.array([2, 2, 4, 4, 8, 8], np.float32), (1, 4, 1))
GT[0, 0, 0] = 0.0                     # invalid: 23 valid pixels


def rows_of(sparse: bool, constant: float) -> dict[str, dict]:
    """Both baselines through the network's evaluation path; batch of 2 pads the one image."""
    batch = {"rgb": np.zeros((1, 4, 6, 3), np.float32), "lidar": LIDAR, "depth": GT}
    cfg = tiny_cfg("unused", "unused", model__sparse=sparse)
    return {name: evaluate(predict, {}, [batch], 2, get_encoding(ModelConfig()), median_scaling=False)["metrics"]
            for name, predict in baseline_predictors(cfg, constant).items()}


def test_nearest_fill_takes_the_nearest_return_of_its_own_image():
    both = np.concatenate([LIDAR, np.zeros_like(LIDAR)])
    filled = nearest_fill(both, fallback=5.0)
    np.testing.assert_array_equal(filled[0], FILLED)
    np.testing.assert_array_equal(filled[1], np.full((4, 6), 5.0))    # no return: the constant


def test_rows_match_hand_computed_metrics():
    rows = rows_of(sparse=True, constant=4.0)
    assert list(rows) == [NEAREST_FILL, CONSTANT]
    fill, const = rows[NEAREST_FILL], rows[CONSTANT]
    # nearest fill is wrong in columns 2 and 3 only: 2 m for 4 m at 4 pixels (rel 0.5),
    # 8 m for 4 m at 4 pixels (rel 1)
    assert fill["abs_rel"] == pytest.approx((4 * 0.5 + 4 * 1.0) / 23)
    assert fill["rmse"] == pytest.approx(np.sqrt((4 * 4 + 4 * 16) / 23))
    assert fill["images"] == 1 and fill["skipped_images"] == 0
    # 4 m everywhere: 7 valid pixels at 2 m (error 2, rel 1), 8 at 4 m (0), 8 at 8 m (4, rel 0.5)
    assert const["abs_rel"] == pytest.approx((7 * 1.0 + 8 * 0.5) / 23)
    assert const["rmse"] == pytest.approx(np.sqrt((7 * 4 + 8 * 16) / 23))


def test_without_lidar_only_the_constant_applies():
    assert list(rows_of(sparse=False, constant=4.0)) == [CONSTANT]


def test_constant_is_the_median_of_the_train_ground_truth(tmp_path):
    rng = np.random.default_rng(0)
    depths = [np.round(rng.uniform(0.0, 20.0, (32, 64)) * 256) / 256 for _ in range(3)]
    (tmp_path / "depth").mkdir()
    (tmp_path / "rgb").mkdir()
    for i, depth in enumerate(depths):
        write_depth_png(tmp_path / "depth" / f"{i}.png", depth)
        write_rgb_png(tmp_path / "rgb" / f"{i}.png", np.zeros((32, 64, 3)))
    (tmp_path / "train.txt").write_text("0\n1\n2\n")
    all_gt = np.concatenate([d.ravel() for d in depths])
    expected = np.median(all_gt[(all_gt > 0.5) & (all_gt < 15.0)])
    assert train_median_depth(tiny_cfg(tmp_path, tmp_path / "run")) == pytest.approx(expected, abs=1e-6)


def test_report_carries_both_baseline_rows(finished_run):
    trainer, rows = finished_run
    assert list(rows)[-2:] == [NEAREST_FILL, CONSTANT]
    for name in (NEAREST_FILL, CONSTANT):
        assert rows[name]["images"] == 6 and 0.0 < rows[name]["abs_rel"] < 10.0
    assert rows[CONSTANT]["abs_rel"] != rows[NEAREST_FILL]["abs_rel"]
