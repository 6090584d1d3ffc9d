"""QAT step time over FP32 step time at the default config.

Prints a readable table and one JSON line. Usage:
    python bench/qat.py [--config configs/default.yaml] [--steps 5] [--set k=v ...]
"""
from __future__ import annotations

import json

from common import machine, bench_args, time_steps


def main() -> None:
    args = bench_args(__doc__)
    from jaxdepth.config import load_config

    cfg = load_config(args.config, args.overrides)
    fp32 = time_steps(cfg, args.steps, qat=False)
    qat = time_steps(cfg, args.steps, qat=True)
    ratio = qat["step_s"] / fp32["step_s"]
    print(f"{'phase':<8}{'step s':>9}{'img/s':>8}{'1st step s':>12}")
    for name, r in (("fp32", fp32), ("qat", qat)):
        print(f"{name:<8}{r['step_s']:>9.3f}{r['images_per_s']:>8.2f}{r['first_step_s']:>12.1f}")
    print(f"QAT / FP32 step time: {ratio:.3f}")
    print(json.dumps({"bench": "qat", "machine": machine(), "preset": cfg.quant.preset,
                      "fp32": fp32, "qat": qat, "ratio": round(ratio, 3)}))


if __name__ == "__main__":
    main()
