"""Error of each output encoding's 8-bit heads alone, no network: the test split's ground
truth is encoded, rounded to uint8 per channel (code = round(s * 255)), optionally
perturbed, and decoded.

The perturbation stands for a network that is never exact: Gaussian noise of sigma 0.5,
1 and 2 codes on every channel, rounded and clamped to [0, 255] as a uint8 head's output
is. Errors are in mm per depth band of the ground truth (RMS, p99 and max of |error|).
``phase (1 m only)`` is the phase encoding with a single period, to show what the second,
coarser period is for.

The LiDAR input is measured the same way: every return of the split is encoded by each
``LidarEncoding``, rounded to its 8-bit input code and decoded (mm per band), and the
``lidar nearest fill`` baseline is recomputed from those decoded returns, the completion
a network could get by copying its integer input. Prints tables and one JSON line. Usage:
    python bench/encodings.py [--config configs/default.yaml] [--split test] [--seed 0] [--set k=v ...]
"""
from __future__ import annotations

import argparse
import json

import numpy as np
from common import machine

BANDS = ((0.5, 2.0), (2.0, 5.0), (5.0, 10.0), (10.0, 15.0))
SIGMAS = (0.0, 0.5, 1.0, 2.0)


def ground_truth(cfg, split: str) -> np.ndarray:
    """Every valid ground-truth depth of ``split`` (min < d < max), flattened."""
    from jaxdepth.data.sources import eval_pipeline

    lo, hi = cfg.model.min_depth, cfg.model.max_depth
    depth = np.concatenate([np.asarray(b["depth"]).ravel() for b in eval_pipeline(cfg, split).epoch(0)])
    return depth[(depth > lo) & (depth < hi)]


def errors_mm(enc, depth: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Decoded minus true depth in mm after uint8 rounding and ``sigma`` codes of noise."""
    import jax
    import jax.numpy as jnp

    codes = np.round(np.asarray(jax.jit(enc.encode)(jnp.asarray(depth))) * 255.0)
    if sigma > 0:
        codes = np.clip(np.round(codes + rng.normal(0.0, sigma, codes.shape)), 0.0, 255.0)
    decoded = np.asarray(jax.jit(enc.decode)(jnp.asarray(codes / 255.0, jnp.float32)), np.float64)
    return (decoded - depth) * 1000.0


def band_stats(err: np.ndarray, depth: np.ndarray) -> dict:
    """RMS, p99 and max of |error| (mm) per depth band, and over all pixels."""
    out = {}
    for lo, hi in BANDS + ((BANDS[0][0], BANDS[-1][1]),):
        a = np.abs(err[(depth >= lo) & (depth < hi)])
        out[f"{lo:g}-{hi:g}"] = {"pixels": int(a.size), "rms": round(float(np.sqrt(np.mean(a ** 2))), 2),
                                 "p99": round(float(np.percentile(a, 99)), 2), "max": round(float(a.max()), 2)}
    return out


def lidar_inputs(cfg, split: str) -> dict:
    """Per LiDAR encoding: 8-bit round-trip error of the returns (mm per band) and the
    nearest-fill metrics from the decoded returns; ``float`` is the unquantized input."""
    import jax
    import jax.numpy as jnp

    from jaxdepth.baselines import nearest_fill, train_median_depth
    from jaxdepth.data.sources import eval_pipeline
    from jaxdepth.encodings import LIDAR_ENCODINGS, LidarEncoding, get_encoding
    from jaxdepth.evaluate import evaluate

    m = cfg.model
    constant = train_median_depth(cfg)

    def through_codes(enc: LidarEncoding) -> jax.Array:
        return jax.jit(lambda d: enc.decode(jnp.round(enc.encode(d) * 255.0) / 255.0))

    lidar = np.concatenate([b["lidar"].ravel() for b in eval_pipeline(cfg, split).epoch(0)])
    returns = lidar[(lidar > m.min_depth) & (lidar < m.max_depth)]
    out = {}
    for kind in (None,) + LIDAR_ENCODINGS:
        if kind is None:
            inputs = lambda x: x
        else:
            inputs = through_codes(LidarEncoding(kind, m.min_depth, m.max_depth))
        predict = lambda v, rgb, x: nearest_fill(np.asarray(inputs(jnp.asarray(x))), constant)
        fill = evaluate(predict, {}, eval_pipeline(cfg, split).epoch(0), cfg.eval.batch_size,
                        get_encoding(m), cfg.eval.garg_crop, median_scaling=False)["metrics"]
        err = (np.asarray(inputs(jnp.asarray(returns)), np.float64) - returns) * 1000.0
        out[kind or "float"] = {"nearest_fill": fill, "returns_mm": band_stats(err, returns)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/default.yaml")
    parser.add_argument("--split", default="test")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    from jaxdepth.cli import setup_jax
    setup_jax()
    import dataclasses

    from jaxdepth.config import load_config
    from jaxdepth.encodings import ENCODINGS, PhaseDepth, get_encoding

    cfg = load_config(args.config, args.overrides)
    depth = ground_truth(cfg, args.split)
    encodings = {name: get_encoding(dataclasses.replace(cfg.model, encoding=name)) for name in ENCODINGS}
    encodings["phase (1 m only)"] = PhaseDepth(cfg.model.min_depth, cfg.model.max_depth, periods=(1.0,))
    rng = np.random.default_rng(args.seed)
    results = {name: {f"sigma_{s:g}": band_stats(errors_mm(enc, depth, s, rng), depth) for s in SIGMAS}
               for name, enc in encodings.items()}

    counts = {band: stats["pixels"] for band, stats in results["log"]["sigma_0"].items()}
    bands = list(counts)
    print(f"split '{args.split}' of {cfg.data.root}: valid pixels per band "
          + ", ".join(f"{b} m: {n}" for b, n in counts.items()))
    print("|error| in mm, rms / p99 / max; noise in codes on every channel")
    print("| encoding | noise | " + " | ".join(f"{b} m" for b in bands) + " |")
    print("|---|---|" + "---|" * len(bands))
    for name, rows in results.items():
        for key, stats in rows.items():
            cells = " | ".join(f"{s['rms']:.1f} / {s['p99']:.1f} / {s['max']:.1f}" for s in stats.values())
            print(f"| {name} | {key.split('_')[1]} | {cells} |")
    lidar = lidar_inputs(cfg, args.split)
    print()
    print("LiDAR input: |decoded 8-bit return - return| in mm, rms / p99 / max; nearest fill "
          "from the decoded returns")
    print("| input | " + " | ".join(f"{b} m" for b in bands) + " | fill abs_rel | fill rmse (m) |")
    print("|---|" + "---|" * (len(bands) + 2))
    for kind, r in lidar.items():
        cells = " | ".join(f"{s['rms']:.1f} / {s['p99']:.1f} / {s['max']:.1f}" for s in r["returns_mm"].values())
        print(f"| {kind} | {cells} | {r['nearest_fill']['abs_rel']:.4f} | {r['nearest_fill']['rmse']:.3f} |")
    print(json.dumps({"bench": "encodings", "machine": machine(), "split": args.split,
                      "pixels": int(depth.size), "seed": args.seed, "results": results,
                      "lidar_inputs": lidar}))


if __name__ == "__main__":
    main()
