"""Train step time and images/s at the default config and at 192x640 batch 2.

Prints a readable table and one JSON line. Usage:
    python bench/train_speed.py [--config configs/default.yaml] [--steps 5] [--set k=v ...]
"""
from __future__ import annotations

import json

from common import machine, bench_args, time_steps


def main() -> None:
    args = bench_args(__doc__)
    from jaxdepth.config import load_config

    cfg = load_config(args.config, args.overrides)
    big = load_config(args.config, args.overrides + ["data.height=192", "data.width=640", "data.batch_size=2"])
    rows = {"default": time_steps(cfg, args.steps), "192x640 b2": time_steps(big, args.steps)}
    print(f"{'setting':<12}{'HxW':>10}{'batch':>7}{'step s':>9}{'img/s':>8}{'1st step s':>12}")
    for name, r in rows.items():
        print(f"{name:<12}{r['height']:>5}x{r['width']:<4}{r['batch']:>7}{r['step_s']:>9.3f}"
              f"{r['images_per_s']:>8.2f}{r['first_step_s']:>12.1f}")
    print(json.dumps({"bench": "train_speed", "machine": machine(), "results": rows}))


if __name__ == "__main__":
    main()
