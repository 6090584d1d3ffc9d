"""Error of each output encoding's 8-bit heads alone, no network: the test split's ground
truth is encoded, rounded to uint8 per channel (code = round(s * 255)), optionally
perturbed, and decoded.

The perturbation stands for a network that is never exact: Gaussian noise of sigma 0.5,
1 and 2 codes on every channel, rounded and clamped to [0, 255] as a uint8 head's output
is. Errors are in mm per depth band of the ground truth (RMS, p99 and max of |error|).
``phase (1 m only)`` is the phase encoding with a single period, to show what the second,
coarser period is for. Prints a table and one JSON line. Usage:
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
    print(json.dumps({"bench": "encodings", "machine": machine(), "split": args.split,
                      "pixels": int(depth.size), "seed": args.seed, "results": results}))


if __name__ == "__main__":
    main()
