"""Where the integer depth's deviation from FP32 comes from, on a data split of a run.

The integer head codes differ from the FP32 head for three reasons: the LiDAR input is
stored in 8 bits (its input grid), the head is (its output grid), and so is every
activation between them (the network's INT8 noise). Rows separate them, each the
|depth - FP32 depth| in mm over valid pixels, beside the row's abs_rel on the split:

* ``fp32, LiDAR input rounded``: the FP32 network fed the LiDAR input on its uint8 grid
  (with the SAN); the head unrounded. 0 with ``model.grid_inputs``, whose FP32 network
  takes those codes anyway.
* ``fp32, head rounded``: the FP32 head rounded to the uint8 output grid, no other
  quantization: what a perfect INT8 network with this head would deviate.
* ``fp32, input and head rounded``: both grids, the FP32 network between them.
* ``integer, head unrounded``: the integer forward up to the head's conv, whose exact
  int32 accumulator then goes through the head in float (sigmoid, or the linear head's
  correction added to the host's fill), unrounded: the network's INT8 noise alone.
* ``integer``: the integer forward's head codes (what ``eval.py`` reports).

Prints a table and one JSON line. Usage:
    python bench/deviation.py [CHECKPOINT (default runs/default)] [--split test]
"""
from __future__ import annotations

import json

import numpy as np
from common import machine, run_args


def head_unrounded(graph, codes: dict, prior, fill: np.ndarray) -> np.ndarray:
    """The head in float from the integer forward's input to its last conv."""
    import jax
    import jax.numpy as jnp

    from jaxdepth.quant import integer_ops as iops

    nodes = {n.output: n for n in graph.nodes}
    head = nodes[graph.outputs[0]]
    conv = head if head.op == "conv" else nodes[head.inputs[0]]
    x, spec = codes[conv.inputs[0]], graph.tensors[conv.inputs[0]]
    p, pad = conv.int_params, conv.attrs["padding"]
    acc = iops.conv_accumulate(jnp.asarray(x, jnp.int32) - spec.zero_point, jnp.asarray(p["weight"]),
                               (conv.attrs["stride"],) * 2, ((pad, pad), (pad, pad)), conv.name)
    y = np.asarray(acc + p["bias"], np.float64) * (spec.scale * np.asarray(p["weight_scale"], np.float64))
    if head.op == "sigmoid":
        return np.asarray(jax.nn.sigmoid(y))
    return np.asarray(prior.head(jnp.asarray(y, jnp.float32), fill))


def main() -> None:
    args = run_args(__doc__, "checkpoint")
    import jax

    from jaxdepth import checkpoint
    from jaxdepth.config import config_from_dict
    from jaxdepth.data.sources import eval_pipeline
    from jaxdepth.encodings import get_encoding, get_fill_prior, get_lidar_encoding, output_decoder, output_grid
    from jaxdepth.export.compare import BANDS, band_name, deviation_stats
    from jaxdepth.export.exporter import export_graph
    from jaxdepth.export.integer import make_intermediates
    from jaxdepth.metrics import MetricAccumulator, image_metrics, valid_mask
    from jaxdepth.models import build_model

    state, meta, step_dir = checkpoint.load(args.checkpoint)
    cfg = config_from_dict(meta["config"])
    variables = {k: state[k] for k in ("params", "batch_stats", "quant")}
    enc = get_encoding(cfg.model)
    graph = export_graph(cfg, variables, cfg.data.height, cfg.data.width, cfg.model.sparse)
    intermediates = make_intermediates(graph)
    model = build_model(cfg.model)
    fp32 = jax.jit(lambda v, rgb, lidar, host: model.apply(v, rgb, lidar if cfg.model.sparse else None,
                                                           train=False, host_lidar=host)[0])
    depth = lambda heads: np.asarray(enc.decode(np.asarray(heads, np.float32)))
    lidar_enc, prior = get_lidar_encoding(cfg.model), get_fill_prior(cfg.model)
    decode, rounded = output_decoder(cfg.model, cfg.model.sparse), output_grid(cfg.model, cfg.model.sparse)
    on_output_grid = lambda heads, lidar: np.asarray(rounded(heads, lidar))
    sparse_input = next((n.output for n in graph.nodes if n.op == "input_sparse"), None)

    def lidar_on_grid(codes: dict) -> np.ndarray:
        """Metres decoded from the integer forward's own LiDAR input codes."""
        spec = graph.tensors[sparse_input]
        x = (np.asarray(codes[sparse_input], np.float32) - spec.zero_point) * spec.scale
        return np.asarray(lidar_enc.decode(x))

    names = ["fp32", "fp32, LiDAR input rounded", "fp32, head rounded", "fp32, input and head rounded",
             "integer, head unrounded", "integer"]
    if not cfg.model.sparse:
        names = [n for n in names if "input" not in n]
    rows = {name: [] for name in names[1:]}
    scores = {name: MetricAccumulator() for name in names}
    gts = []
    for batch in eval_pipeline(cfg, args.split).epoch(0):
        rgb, lidar, gt = batch["rgb"], batch["lidar"], batch["depth"]
        fill = np.asarray(lidar_enc.fill_channel(lidar)) if prior is not None else None
        heads = np.asarray(fp32(variables, rgb, lidar, None))
        codes = intermediates(rgb, lidar)
        mask = np.asarray(valid_mask(gt, enc.min_depth, enc.max_depth, cfg.eval.garg_crop))
        outputs = {"fp32": depth(heads), "fp32, head rounded": on_output_grid(heads, lidar),
                   "integer, head unrounded": depth(head_unrounded(graph, codes, prior, fill)),
                   "integer": np.asarray(decode(codes[graph.outputs[0]], lidar))}
        if cfg.model.sparse:
            # the network sees the LiDAR on its input grid; the host's fill stays exact
            heads_q = np.asarray(fp32(variables, rgb, lidar_on_grid(codes), lidar))
            outputs.update({"fp32, LiDAR input rounded": depth(heads_q),
                            "fp32, input and head rounded": on_output_grid(heads_q, lidar)})
        ref = outputs["fp32"]
        for name in names:
            d = outputs[name]
            scores[name].add(*image_metrics(d, gt, enc.min_depth, enc.max_depth, cfg.eval.garg_crop))
            if name in rows:
                rows[name].append(np.abs(d - ref)[mask] * 1000.0)
        gts.append(gt[mask])
    gt_m = np.concatenate(gts)
    result = {}
    for name, errs in rows.items():
        e = np.concatenate(errs)
        result[name] = {"all": deviation_stats(e)}
        for lo, hi in BANDS:
            result[name][band_name(lo, hi)] = deviation_stats(e[(gt_m >= lo) & (gt_m < hi)])

    abs_rel = {name: round(acc.result()["abs_rel"], 5) for name, acc in scores.items()}

    print(f"{step_dir} ({cfg.model.encoding} head, {cfg.quant.preset}), split '{args.split}': "
          "|depth - FP32 depth| in mm, and abs_rel against the ground truth")
    print(f"{'row':<30}{'band':<10}{'median':>9}{'p95':>9}{'p99':>9}{'max':>9}{'abs_rel':>9}")
    print(f"{'fp32':<30}{'all':<10}{'':>36}{abs_rel['fp32']:>9.4f}")
    for name, bands in result.items():
        for band, s in bands.items():
            vals = "".join(f"{s[k]:>9.1f}" if s[k] is not None else f"{'-':>9}"
                           for k in ("median", "p95", "p99", "max"))
            score = f"{abs_rel[name]:>9.4f}" if band == "all" else ""
            print(f"{name:<30}{band:<10}{vals}{score}")
    print(json.dumps({"bench": "deviation", "machine": machine(), "checkpoint": str(step_dir),
                      "encoding": cfg.model.encoding, "preset": cfg.quant.preset, "split": args.split,
                      "abs_rel": abs_rel, "deviation_mm": result}))


if __name__ == "__main__":
    main()
