"""Inference speed of FP32, fake-quant INT8 and integer INT8 (and of the three ONNX models
in onnxruntime), export time and artifact sizes, at the default config's resolution.

Random weights with min-max ranges calibrated on random data: speed and size do not
depend on the values. The integer forward compiles its graph's parameters in as
constants (``export.integer``); the ``fp32, weights compiled in`` row does the same for
the FP32 forward, which otherwise takes its weights as arguments, as evaluation runs it. Prints a table and one JSON line. Usage:
    python bench/integer.py [--config configs/default.yaml] [--runs 5] [--set k=v ...]
"""
from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
from common import alternating, bench_args, machine


def timed(fns: dict[str, Callable[[], object]], runs: int, batch: int) -> dict[str, dict]:
    """First call of each (compilation included), then ``runs`` rounds calling each in
    turn, so that every forward sees the same machine load; medians."""
    first = {}
    for k, fn in fns.items():
        t0 = time.perf_counter()
        fn()
        first[k] = time.perf_counter() - t0
    times, _ = alternating(fns, runs)
    out = {}
    for k in fns:
        s = float(np.median(times[k]))
        out[k] = {"first_call_s": round(first[k], 2), "batch_s": round(s, 4),
                  "images_per_s": round(batch / s, 2)}
    return out


def main() -> None:
    args = bench_args(__doc__, repeats="runs")
    import jax

    from jaxdepth.config import load_config
    from jaxdepth.export import artifact
    from jaxdepth.export import onnx as xonnx
    from jaxdepth.export.exporter import export_graph, used_parameter_count
    from jaxdepth.export.integer import make_integer_forward
    from jaxdepth.models import build_model, quant_for
    from jaxdepth.quant.calibrate import calibrate

    cfg = load_config(args.config, args.overrides)
    h, w, n = cfg.data.height, cfg.data.width, cfg.data.batch_size
    rng = np.random.default_rng(0)
    rgb = rng.random((n, h, w, 3), np.float32)
    lidar = np.where(rng.random((n, h, w)) < 0.05, rng.uniform(0.5, 15.0, (n, h, w)), 0.0).astype(np.float32)
    model = build_model(cfg.model)
    variables = jax.jit(lambda k: model.init(k, rgb[:1], lidar[:1]))(jax.random.PRNGKey(0))
    variables = {**variables, "quant": calibrate(model, variables, [{"rgb": rgb, "lidar": lidar}], True)}
    t0 = time.perf_counter()
    graph = export_graph(cfg, variables, h, w)
    export_s = time.perf_counter() - t0

    heads = {mode: jax.jit(lambda v, r, l, m=build_model(cfg.model, quant_for(cfg, mode)): m.apply(v, r, l)[0])
             for mode in ("float", "fake")}
    forward = make_integer_forward(graph)      # the integer parameters compiled in
    constant = jax.tree.map(np.asarray, variables)
    fp32_constants = jax.jit(lambda r, l: model.apply(constant, r, l)[0])
    onnx_models = {"fp32": xonnx.to_fp32(graph, cfg.model.encoding),
                   "qdq": xonnx.to_qdq(graph, cfg.model.encoding),
                   "integer": xonnx.to_integer(graph, cfg.model.encoding)}
    feeds = {"fp32": xonnx.feeds(graph, rgb, lidar), "qdq": xonnx.feeds(graph, rgb, lidar),
             "integer": xonnx.code_feeds(graph, rgb, lidar)}
    sessions = {k: xonnx.session(m) for k, m in onnx_models.items()}
    rows = timed({
        "fp32": lambda: heads["float"](variables, rgb, lidar).block_until_ready(),
        "int8 fake-quant": lambda: heads["fake"](variables, rgb, lidar).block_until_ready(),
        "fp32, weights compiled in": lambda: fp32_constants(rgb, lidar).block_until_ready(),
        "int8 integer": lambda: forward(rgb, lidar).block_until_ready(),
        **{f"onnxruntime {k}": lambda s=s, k=k: s.run(None, feeds[k]) for k, s in sessions.items()},
    }, args.runs, n)
    for r in rows.values():
        r["x_fp32"] = round(r["batch_s"] / rows["fp32"]["batch_s"], 3)
    with tempfile.TemporaryDirectory() as tmp:
        sizes = artifact.save(graph, cfg, tmp, used_parameter_count(graph, variables))
        for name, m in onnx_models.items():
            path = Path(tmp) / f"{name}.onnx"
            path.write_bytes(m.SerializeToString())
            sizes[f"{name}_onnx_bytes"] = path.stat().st_size

    print(f"{cfg.model.encoder} + SAN at {h}x{w}, batch {n}, preset {cfg.quant.preset}; "
          f"export {export_s:.1f} s ({len(graph.nodes)} layers)")
    print(f"{'forward':<28}{'batch s':>9}{'x FP32':>8}{'img/s':>9}{'1st call s':>12}")
    for name, r in rows.items():
        print(f"{name:<28}{r['batch_s']:>9.3f}{r['x_fp32']:>8.2f}{r['images_per_s']:>9.2f}"
              f"{r['first_call_s']:>12.1f}")
    print(f"integer artifact {sizes['integer_bytes']:,} B = {sizes['ratio']:.3f} x FP32 parameters "
          f"({sizes['fp32_bytes']:,} B); ONNX fp32 {sizes['fp32_onnx_bytes']:,} B, "
          f"qdq {sizes['qdq_onnx_bytes']:,} B, integer {sizes['integer_onnx_bytes']:,} B")
    print(json.dumps({"bench": "integer", "machine": machine(), "height": h, "width": w, "batch": n,
                      "preset": cfg.quant.preset, "export_s": round(export_s, 2), "results": rows,
                      "sizes": sizes}))


if __name__ == "__main__":
    main()
