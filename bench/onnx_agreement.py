"""The exported ONNX models in onnxruntime against jaxdepth, on a data split of a run.

* FP32 model vs the JAX FP32 forward: max |difference| of the head values (for linear
  heads over the fill, the graph's correction plus the host's fill).
* INT8 QDQ model (onnxruntime's own quantized kernels, fed jaxdepth's input codes) vs
  jaxdepth's integer forward: share of equal head codes and the largest difference.
* Integer model (the artifact's integer arithmetic in ONNX integer ops) vs jaxdepth's
  integer forward: the same two figures.

Prints a table and one JSON line. Usage:
    python bench/onnx_agreement.py [CHECKPOINT (default runs/default)] [--split test]
"""
from __future__ import annotations

import json

import numpy as np
from common import machine, run_args


def main() -> None:
    args = run_args(__doc__, "checkpoint")
    import jax

    from jaxdepth import checkpoint
    from jaxdepth.config import config_from_dict
    from jaxdepth.data.sources import eval_pipeline
    from jaxdepth.encodings import get_fill_prior, get_lidar_encoding
    from jaxdepth.export import onnx as xonnx
    from jaxdepth.export.compare import code_agreement
    from jaxdepth.export.exporter import export_graph
    from jaxdepth.export.integer import make_integer_forward
    from jaxdepth.models import build_model

    state, meta, step_dir = checkpoint.load(args.checkpoint)
    cfg = config_from_dict(meta["config"])
    variables = {k: state[k] for k in ("params", "batch_stats", "quant")}
    enc = cfg.model.encoding
    graph = export_graph(cfg, variables, cfg.data.height, cfg.data.width, use_lidar=True)
    forward = make_integer_forward(graph)
    model = build_model(cfg.model)
    prior, lidar_enc = get_fill_prior(cfg.model), get_lidar_encoding(cfg.model)
    fp32 = jax.jit(lambda v, rgb, lidar: model.apply(v, rgb, lidar, train=False)[0])
    sessions = {name: xonnx.session(m) for name, m in (
        ("fp32", xonnx.to_fp32(graph, enc)),
        ("int8 qdq", xonnx.to_qdq(graph, enc, weights="uint8", code_inputs=True)),
        ("int8 integer", xonnx.to_integer(graph, enc)))}

    max_abs, got, want = 0.0, {"int8 qdq": [], "int8 integer": []}, []
    for batch in eval_pipeline(cfg, args.split).epoch(0):
        rgb, lidar = batch["rgb"], batch["lidar"]
        heads = xonnx.heads(sessions["fp32"], graph, enc, xonnx.feeds(graph, rgb, lidar))
        if prior is not None:   # the graph outputs the correction z (its copies); the host adds its fill
            heads = np.asarray(prior.head(heads, lidar_enc.fill_channel(lidar)))
        max_abs = max(max_abs, float(np.abs(heads - np.asarray(fp32(variables, rgb, lidar))).max()))
        codes = xonnx.code_feeds(graph, rgb, lidar)
        for name in got:
            got[name].append(xonnx.heads(sessions[name], graph, enc, codes))
        want.append(np.asarray(forward(rgb, lidar)))
    want = np.concatenate(want)
    rows = {name: code_agreement(np.concatenate(g), want) for name, g in got.items()}

    print(f"{step_dir} ({cfg.quant.preset}), split '{args.split}', onnxruntime CPU")
    print(f"fp32 ONNX vs JAX FP32 heads: max |difference| {max_abs:.2e}")
    print(f"{'vs jaxdepth integer forward':<30}{'equal codes':>13}{'max diff':>10}")
    for name, r in rows.items():
        print(f"{name:<30}{100 * r['equal']:>12.3f}%{r['max_diff']:>10}")
    print(json.dumps({"bench": "onnx_agreement", "machine": machine(), "checkpoint": str(step_dir),
                      "preset": cfg.quant.preset, "split": args.split,
                      "fp32_max_abs_diff": max_abs, "results": rows}))


if __name__ == "__main__":
    main()
