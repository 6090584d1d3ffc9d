"""python -m jaxdepth.predict on an image of a size the model never saw: FP32 checkpoint with
and without LiDAR, and the integer export."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from jaxdepth.data import read_depth_png, write_depth_png
from jaxdepth.predict import main

H, W = 45, 83          # neither the model's size nor a multiple of 32


@pytest.fixture(scope="module")
def own_image(tmp_path_factory):
    """A JPEG photo-like image and a LiDAR PNG of the same odd size."""
    folder = tmp_path_factory.mktemp("own")
    rng = np.random.default_rng(5)
    ramp = np.linspace(0, 255, W)[None, :, None] * np.ones((H, 1, 3))
    Image.fromarray(np.clip(ramp + rng.normal(0, 20, (H, W, 3)), 0, 255).astype(np.uint8)).save(
        folder / "street.jpg")
    lidar = np.where(rng.random((H, W)) < 0.1, rng.uniform(1.0, 12.0, (H, W)), 0.0)
    write_depth_png(folder / "street_lidar.png", lidar.astype(np.float32))
    return folder


def _outputs(out, min_depth=0.5, max_depth=15.0):
    depth = read_depth_png(out / "street_depth.png")
    colour = Image.open(out / "street_depth_color.png")
    assert depth.shape == (H, W) and colour.size == (W, H) and colour.mode == "RGB"
    assert depth.min() >= min_depth - 0.01 and depth.max() <= max_depth + 0.01
    return depth


def test_predict_fp32_with_and_without_lidar(finished_run, own_image, tmp_path, capsys):
    trainer, _ = finished_run
    run = str(trainer.run_dir)
    assert main([run, "--rgb", str(own_image / "street.jpg"), "--lidar", str(own_image / "street_lidar.png"),
                 "--out", str(tmp_path / "with")]) == 0
    assert "FP32 checkpoint" in capsys.readouterr().out
    assert main([run, "--rgb", str(own_image / "street.jpg"), "--out", str(tmp_path / "without")]) == 0
    with_lidar, rgb_only = _outputs(tmp_path / "with"), _outputs(tmp_path / "without")
    assert not np.array_equal(with_lidar, rgb_only)


def test_predict_integer_export(finished_run, own_image, tmp_path, capsys):
    from jaxdepth.export.__main__ import main as export_main

    trainer, _ = finished_run
    export = tmp_path / "export"
    assert export_main([str(trainer.run_dir), "--out", str(export), "--no-onnx"]) == 0
    assert main([str(export), "--rgb", str(own_image / "street.jpg"), "--lidar",
                 str(own_image / "street_lidar.png"), "--out", str(tmp_path / "int8")]) == 0
    assert "integer INT8 export" in capsys.readouterr().out
    _outputs(tmp_path / "int8")
    # the LiDAR graph needs LiDAR; a wrong-size LiDAR is named
    assert main([str(export), "--rgb", str(own_image / "street.jpg"), "--out", str(tmp_path / "x")]) == 2
    assert "--monocular" in capsys.readouterr().err
    small = tmp_path / "small.png"
    write_depth_png(small, np.ones((8, 8), np.float32))
    assert main([str(export), "--rgb", str(own_image / "street.jpg"), "--lidar", str(small),
                 "--out", str(tmp_path / "x")]) == 2
    assert "small.png: size 8x8 does not match" in capsys.readouterr().err
