"""Train step time and images/s at the default config and at 192x640 batch 2.

Prints a readable table and one JSON line. Usage:
    python bench/train_speed.py [--config configs/default.yaml] [--steps 5] [--set k=v ...]
"""
from __future__ import annotations

import argparse
import json
import platform
import time

from jaxdepth.cli import setup_jax


def time_steps(cfg, steps: int, qat: bool = False) -> dict:
    import jax
    import numpy as np

    from jaxdepth.encodings import get_encoding
    from jaxdepth.models import build_model, quant_for
    from jaxdepth.train_lib import init_state, make_mesh, make_optimizer, make_train_step, replicate, shard_batch

    d = cfg.data
    mesh = make_mesh()
    opt = make_optimizer(cfg)
    model = build_model(cfg.model, quant_for(cfg, "fake" if qat else "float"))
    state = replicate(init_state(build_model(cfg.model), opt, 0, d.height, d.width), mesh)
    step = make_train_step(model, get_encoding(cfg.model), opt, cfg, mesh, qat)
    rng = np.random.default_rng(0)
    batch = {"rgb": rng.random((d.batch_size, d.height, d.width, 3), np.float32),
             "depth": rng.uniform(0.5, 15, (d.batch_size, d.height, d.width)).astype(np.float32),
             "lidar": np.where(rng.random((d.batch_size, d.height, d.width)) < 0.05,
                               rng.uniform(0.5, 15, (d.batch_size, d.height, d.width)), 0).astype(np.float32)}
    batch = shard_batch(batch, mesh)
    t0 = time.perf_counter()
    state, stats = step(state, batch)
    jax.block_until_ready(stats)
    compile_s = time.perf_counter() - t0
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        state, stats = step(state, batch)
        jax.block_until_ready(stats)
        times.append(time.perf_counter() - t0)
    step_s = float(np.median(times))
    return {"height": d.height, "width": d.width, "batch": d.batch_size, "qat": qat,
            "first_step_s": round(compile_s, 2), "step_s": round(step_s, 3),
            "images_per_s": round(d.batch_size / step_s, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/default.yaml")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    setup_jax()
    import jax
    from jaxdepth.config import load_config

    cfg = load_config(args.config, args.overrides)
    big = load_config(args.config, args.overrides + ["data.height=192", "data.width=640", "data.batch_size=2"])
    rows = {"default": time_steps(cfg, args.steps), "192x640 b2": time_steps(big, args.steps)}
    print(f"{'setting':<12}{'HxW':>10}{'batch':>7}{'step s':>9}{'img/s':>8}{'1st step s':>12}")
    for name, r in rows.items():
        print(f"{name:<12}{r['height']:>5}x{r['width']:<4}{r['batch']:>7}{r['step_s']:>9.3f}"
              f"{r['images_per_s']:>8.2f}{r['first_step_s']:>12.1f}")
    print(json.dumps({"bench": "train_speed", "machine": f"{platform.machine()} {jax.device_count()}x "
                      f"{jax.devices()[0].platform}", "results": rows}))


if __name__ == "__main__":
    main()
