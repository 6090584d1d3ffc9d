"""Integer forward == fake-quant forward, on whatever backend JAX runs on (CPU, GPU, TPU).

For every quantization preset, with and without LiDAR: random weights, min-max ranges
calibrated on random data, then the head codes of the exported integer model against
the fake-quant forward's on another random batch. Both must agree on every code on every
backend: the parameters are derived once (``quant.freeze``), the accumulators are exact
integers, the inputs are quantized by one compiled function. Prints a table and one JSON
line; exits 1 on any difference. Usage:
    python bench/exactness.py [--config configs/default.yaml] [--steps 2] [--set k=v ...]
(--steps: batches compared per case.)
"""
from __future__ import annotations

import json
import sys

import numpy as np
from common import bench_args, machine


def main() -> int:
    args = bench_args(__doc__)
    import jax

    from jaxdepth.config import load_config
    from jaxdepth.evaluate import make_head_codes
    from jaxdepth.export.exporter import export_graph
    from jaxdepth.export.integer import make_integer_forward
    from jaxdepth.models import build_model, quant_for
    from jaxdepth.quant.calibrate import calibrate
    from jaxdepth.quant.freeze import freeze

    rng = np.random.default_rng(0)
    rows = {}
    for preset in ("npu_strict", "per_channel", "symmetric"):
        cfg = load_config(args.config, [*args.overrides, f"quant.preset={preset}"])
        h, w, n = cfg.data.height, cfg.data.width, cfg.data.batch_size

        def batch() -> dict:
            lidar = np.where(rng.random((n, h, w)) < 0.05, rng.uniform(0.5, 15.0, (n, h, w)), 0.0)
            return {"rgb": rng.random((n, h, w, 3), np.float32), "lidar": lidar.astype(np.float32)}

        model = build_model(cfg.model)
        first = batch()
        variables = jax.jit(lambda k: model.init(k, first["rgb"][:1], first["lidar"][:1]))(jax.random.PRNGKey(0))
        variables = {**variables, "quant": calibrate(model, variables, [first], cfg.model.sparse)}
        fake = build_model(cfg.model, quant_for(cfg, "fake"))
        for use_lidar in ([True, False] if cfg.model.sparse else [False]):
            frozen = freeze(fake, variables, use_lidar)
            graph = export_graph(cfg, variables, h, w, use_lidar)
            forward = make_integer_forward(graph)
            fake_codes = make_head_codes(fake, use_lidar)
            equal = total = max_diff = 0
            for _ in range(args.steps):
                b = batch()
                a = np.asarray(forward(b["rgb"], b["lidar"]), np.int32)
                f = np.asarray(fake_codes(frozen, b["rgb"], b["lidar"]))
                equal += int((a == f).sum())
                total += a.size
                max_diff = max(max_diff, int(np.abs(a - f).max()))
            rows[f"{preset} {'lidar' if use_lidar else 'monocular'}"] = {
                "equal": equal / total, "max_diff": max_diff, "codes": total}
    print(f"integer vs fake-quant head codes on {machine()}")
    print(f"{'case':<26}{'equal %':>10}{'max diff':>10}{'codes':>12}")
    for name, r in rows.items():
        print(f"{name:<26}{100 * r['equal']:>10.3f}{r['max_diff']:>10d}{r['codes']:>12,d}")
    print(json.dumps({"bench": "exactness", "machine": machine(), "results": rows}))
    return 0 if all(r["max_diff"] == 0 for r in rows.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
