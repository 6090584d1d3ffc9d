"""Max pooling's gradient: autodiff's select-and-scatter against ``jaxdepth.models.pooling``.

Times the forward and gradient of the network's pools alone (the ResNet stem's 3x3 stride-2
pool, the SAN's 2x2 pools) and whole train steps built with either gradient (``MaxPool``
given flax's pool for autodiff's), in turn (A B A B ...), under ``train.py``'s malloc.
The train steps: the default config, FP32 and QAT, and ``bench/torch_reference.py``'s
RGB-only network at 192x640 batch 2 and 64x224 batch 8. Usage:
    python bench/pooling.py [--rounds 8] [--ops-only]
Prints a table and one JSON line (``ratio`` = jaxdepth.models.pooling's time / autodiff's).
"""
from __future__ import annotations

import json
import time

import numpy as np
from common import alternating, bench_args, machine, reference_config, train_step_runner

# name, input shape (NHWC), window, stride, padding
POOLS = [("stem, 192x640 b2", (2, 96, 320, 64), 3, 2, 1), ("stem, 64x224 b8", (8, 32, 112, 64), 3, 2, 1),
         ("SAN stride 2, 192x640 b2", (2, 192, 640, 16), 2, 2, 0),
         ("SAN stride 2, 64x224 b8", (8, 64, 224, 16), 2, 2, 0)]
STEPS = [("default", "default", False), ("default, QAT", "default", True),
         ("RGB only, 192x640 b2", "192x640x2", False), ("RGB only, 64x224 b8", "64x224x8", False)]


def flax_pool(x, window: int, stride: int, padding: int):
    import flax.linen as nn
    return nn.max_pool(x, (window,) * 2, (stride,) * 2, ((padding, padding),) * 2)


def op_rows(rounds: int) -> list[dict]:
    import jax

    from jaxdepth.models.pooling import max_pool

    rows = []
    for name, shape, window, stride, padding in POOLS:
        x = jax.random.normal(jax.random.PRNGKey(0), shape)
        fns, outs = {}, {}
        for kind, pool in (("autodiff", flax_pool), ("dense", max_pool)):
            def grad(x, pool=pool):
                y, back = jax.vjp(lambda v: pool(v, window, stride, padding), x)
                return back(y)[0]
            fn = jax.jit(grad)
            outs[kind] = fn(x)
            fns[kind] = lambda fn=fn: fn(x).block_until_ready()
        times = alternating(fns, rounds)[0]
        rows.append({"what": f"pool {name}", **medians(times),
                     "same_result": bool((outs["autodiff"] == outs["dense"]).all())})
    return rows


def step_rows(config: str, overrides: list[str], rounds: int) -> list[dict]:
    from jaxdepth.config import load_config
    from jaxdepth.models import layers, pooling

    rows = []
    for name, shape, qat in STEPS:
        cfg = (load_config(config, overrides) if shape == "default"
               else reference_config(config, overrides, shape, "rgb"))
        fns = {}
        for kind, pool in (("autodiff", flax_pool), ("dense", pooling.max_pool)):
            layers.max_pool = pool          # what MaxPool calls when the step is traced
            fns[kind] = train_step_runner(cfg, qat)[0]
        layers.max_pool = pooling.max_pool
        times, losses = alternating(fns, rounds)
        rows.append({"what": f"train step {name}", **medians(times),
                     "losses": {k: float(v) for k, v in losses.items()}})
    return rows


def medians(times: dict[str, list[float]]) -> dict:
    ms = {k: float(np.median(v)) * 1e3 for k, v in times.items()}
    return {"autodiff_ms": round(ms["autodiff"], 2), "dense_ms": round(ms["dense"], 2),
            "ratio": round(ms["dense"] / ms["autodiff"], 3)}


def main() -> None:
    args = bench_args(__doc__, "rounds", lambda p: p.add_argument("--ops-only", action="store_true"))
    t0 = time.time()
    rows = op_rows(max(args.rounds, 20))
    if not args.ops_only:
        rows += step_rows(args.config, args.overrides, args.rounds)
    print(f"{'':<36}{'autodiff ms':>12}{'dense ms':>10}{'ratio':>7}")
    for r in rows:
        print(f"{r['what']:<36}{r['autodiff_ms']:>12.1f}{r['dense_ms']:>10.1f}{r['ratio']:>7.2f}")
    print(json.dumps({"bench": "pooling", "machine": machine(), "rounds": args.rounds,
                      "seconds": round(time.time() - t0), "results": rows}))


if __name__ == "__main__":
    main()
