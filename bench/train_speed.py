"""Train step time and images/s at the default config and at 192x640 batch 2, each with
the config's SAN and RGB-only (``model.sparse=false``), what the SAN costs, and how many CPU
cores the steps keep busy (process CPU seconds per second).

Prints a readable table and one JSON line. Usage:
    python bench/train_speed.py [--config configs/default.yaml] [--steps 5] [--set k=v ...]
"""
from __future__ import annotations

import json

from common import machine, bench_args, time_steps


def main() -> None:
    args = bench_args(__doc__)
    from jaxdepth.config import load_config

    shapes = {"default": [], "192x640 b2": ["data.height=192", "data.width=640", "data.batch_size=2"]}
    rows = {}
    for name, shape in shapes.items():
        for variant, sparse in (("san", "true"), ("rgb", "false")):
            cfg = load_config(args.config, args.overrides + shape + [f"model.sparse={sparse}"])
            rows[f"{name} {variant}"] = time_steps(cfg, args.steps)
        san, rgb = rows[f"{name} san"], rows[f"{name} rgb"]
        san["san_over_rgb"] = round(san["step_s"] / rgb["step_s"], 3)
    print(f"{'setting':<16}{'HxW':>10}{'batch':>7}{'step s':>9}{'img/s':>8}{'1st step s':>12}{'CPU s/s':>9}"
          f"{'SAN/RGB':>9}")
    for name, r in rows.items():
        ratio = f"{r['san_over_rgb']:>9.2f}" if "san_over_rgb" in r else ""
        print(f"{name:<16}{r['height']:>5}x{r['width']:<4}{r['batch']:>7}{r['step_s']:>9.3f}"
              f"{r['images_per_s']:>8.2f}{r['first_step_s']:>12.1f}{r['cpu_s_per_s']:>9.2f}{ratio}")
    print(json.dumps({"bench": "train_speed", "machine": machine(), "results": rows}))


if __name__ == "__main__":
    main()
