"""Depth for your own image: ``python -m jaxdepth.predict MODEL --rgb IMG [--lidar PNG] --out DIR``.

MODEL is a checkpoint (a run folder, ``checkpoints/<name>`` or a step folder: the FP32
model) or an export folder (``manifest.json`` + ``weights.npz``: the integer model, as the
NPU runs it). IMG is any image PIL reads (PNG, JPEG, ...) of any size; LIDAR, optional, is a
16-bit PNG of the same size, metres x 256, 0 = no return. The inputs are resized to the
model's size (the image bilinearly, every LiDAR return kept) and the depth is resized back.

DIR receives ``<name>_depth.png`` (16-bit, metres x 256, the folder format's encoding) and
``<name>_depth_color.png`` (the depth coloured over the model's depth range, near bright).
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from jaxdepth.cli import setup_jax
from jaxdepth.data.folder import DataError, read_depth_png, write_depth_png
from jaxdepth.data.pipeline import resize_sample

DEPTH_CMAP = "magma_r"


@dataclass(frozen=True)
class DepthModel:
    """A loaded model: ``predict(rgb (1, H, W, 3), lidar (1, H, W) or None) -> depth (H, W)``
    at its fixed input size."""

    predict: Callable[[np.ndarray, np.ndarray | None], np.ndarray]
    height: int
    width: int
    min_depth: float
    max_depth: float
    takes_lidar: bool
    integer: bool
    source: str


def load_model(path: str | Path) -> DepthModel:
    """An export folder (integer model) or a checkpoint (FP32 model)."""
    path = Path(path)
    if (path / "manifest.json").is_file():
        return _load_export(path)
    return _load_checkpoint(path)


def _load_export(path: Path) -> DepthModel:
    import jax.numpy as jnp

    from jaxdepth.encodings import get_encoding, output_decoder
    from jaxdepth.export import artifact
    from jaxdepth.export.integer import make_integer_forward

    graph, cfg = artifact.load(path)
    enc = get_encoding(cfg.model)
    ops = {n.op: n.output for n in graph.nodes}
    _, height, width, _ = graph.tensors[ops["input_rgb"]].shape
    forward = make_integer_forward(graph)
    takes_lidar = "input_sparse" in ops
    decode = output_decoder(cfg.model, takes_lidar)

    def predict(rgb: np.ndarray, lidar: np.ndarray | None) -> np.ndarray:
        lidar = None if lidar is None else jnp.asarray(lidar)
        return np.asarray(decode(forward(jnp.asarray(rgb), lidar), lidar))[0]

    return DepthModel(predict, height, width, enc.min_depth, enc.max_depth, takes_lidar, True,
                      f"integer INT8 export {path}")


def _load_checkpoint(path: Path) -> DepthModel:
    from jaxdepth import checkpoint
    from jaxdepth.config import config_from_dict
    from jaxdepth.evaluate import Evaluator

    state, meta, step_dir = checkpoint.load(path)
    cfg = config_from_dict(meta["config"])
    variables = {k: state[k] for k in ("params", "batch_stats", "quant")}
    evaluator = Evaluator(cfg)

    def predict(rgb: np.ndarray, lidar: np.ndarray | None) -> np.ndarray:
        fn = evaluator.predictor("float", lidar is not None)
        return np.asarray(fn(variables, rgb, np.zeros(rgb.shape[:3], np.float32) if lidar is None else lidar))[0]

    return DepthModel(predict, cfg.data.height, cfg.data.width, evaluator.encoding.min_depth,
                      evaluator.encoding.max_depth, cfg.model.sparse, False, f"FP32 checkpoint {step_dir}")


def read_image(path: str | Path) -> np.ndarray:
    """Any image PIL can read, as float32 RGB (H, W, 3) in [0, 1]."""
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"), np.float32) / 255.0
    except FileNotFoundError:
        raise DataError(f"{path}: file is missing") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError(f"{path}: cannot be read as an image ({exc})") from exc


def predict_depth(model: DepthModel, rgb: np.ndarray, lidar: np.ndarray | None) -> np.ndarray:
    """Depth (metres) at the image's own size."""
    h, w = rgb.shape[:2]
    sample = resize_sample({"rgb": rgb, "depth": np.zeros((h, w), np.float32),
                            "lidar": np.zeros((h, w), np.float32) if lidar is None else lidar},
                           model.height, model.width)
    depth = model.predict(sample["rgb"][None].astype(np.float32),
                          None if lidar is None else sample["lidar"][None].astype(np.float32))
    if depth.shape != (h, w):
        depth = np.asarray(Image.fromarray(depth.astype(np.float32)).resize(
            (w, h), Image.Resampling.BILINEAR))
    return depth


def colour_depth(depth: np.ndarray, min_depth: float, max_depth: float) -> np.ndarray:
    """uint8 RGB picture of the depth with the panels' colour map and range."""
    from matplotlib import colormaps

    scaled = (np.clip(depth, min_depth, max_depth) - min_depth) / (max_depth - min_depth)
    return (colormaps[DEPTH_CMAP](scaled)[..., :3] * 255.0 + 0.5).astype(np.uint8)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jaxdepth.predict", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="checkpoint (FP32) or export folder (integer INT8)")
    parser.add_argument("--rgb", required=True, help="the image")
    parser.add_argument("--lidar", default=None, help="16-bit LiDAR PNG of the same size (metres x 256)")
    parser.add_argument("--out", required=True, help="output folder")
    args = parser.parse_args(argv)
    setup_jax()

    try:
        rgb = read_image(args.rgb)
        lidar = None
        if args.lidar:
            lidar = read_depth_png(args.lidar)
            if lidar.shape != rgb.shape[:2]:
                raise DataError(f"{args.lidar}: size {lidar.shape[1]}x{lidar.shape[0]} does not match "
                                f"{args.rgb} ({rgb.shape[1]}x{rgb.shape[0]})")
        model = load_model(args.model)
        if lidar is not None and not model.takes_lidar:
            raise DataError(f"{args.model}: this model is monocular (RGB only); leave out --lidar")
        if lidar is None and model.takes_lidar and model.integer:
            raise DataError(f"{args.model}: this export takes LiDAR; give --lidar, or export the "
                            "RGB-only graph with python -m jaxdepth.export CKPT --monocular")
        depth = predict_depth(model, rgb, lidar)
    except (DataError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = Path(args.rgb).stem
    write_depth_png(out / f"{stem}_depth.png", depth)
    Image.fromarray(colour_depth(depth, model.min_depth, model.max_depth)).save(out / f"{stem}_depth_color.png")
    mode = "RGB + LiDAR" if lidar is not None else "RGB only"
    print(f"{model.source}, {mode}, input {rgb.shape[1]}x{rgb.shape[0]} run at {model.width}x{model.height}: "
          f"depth {depth.min():.2f}-{depth.max():.2f} m (median {np.median(depth):.2f} m)")
    print(f"written to {out / f'{stem}_depth.png'} and {out / f'{stem}_depth_color.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
