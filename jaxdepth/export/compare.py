"""Fake-quant INT8 vs integer INT8 vs FP32 on a data split.

The fake-quant forward is what training optimises and what the INT8 metrics report;
the integer forward is what the NPU runs. ``compare`` measures how far apart they are
on real data: the share of head codes that are equal and the largest code difference,
both sets of metrics, and how far the integer depth is from the FP32 depth in
millimetres, overall and per ground-truth depth band.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxdepth.data.sources import eval_pipeline
from jaxdepth.encodings import output_decoder
from jaxdepth.evaluate import Evaluator, make_head_codes, pad_batch
from jaxdepth.export.exporter import export_graph
from jaxdepth.export.graph import Graph
from jaxdepth.export.integer import make_integer_forward
from jaxdepth.metrics import MetricAccumulator, image_metrics, valid_mask
from jaxdepth.quant.freeze import freeze

BANDS = ((0.5, 2.0), (2.0, 5.0), (5.0, 10.0), (10.0, 15.0))   # metres of ground truth


def code_agreement(a: np.ndarray, b: np.ndarray) -> dict:
    """Share of equal codes and the largest absolute difference of two code arrays."""
    d = np.abs(np.asarray(a, np.int32) - np.asarray(b, np.int32))
    return {"equal": float(np.mean(d == 0)), "max_diff": int(d.max(initial=0)), "codes": int(d.size)}


def deviation_stats(errors_mm: np.ndarray) -> dict:
    """Median, p95, p99 and max of absolute depth errors (mm); None when empty."""
    if errors_mm.size == 0:
        return {"pixels": 0, "median": None, "p95": None, "p99": None, "max": None}
    p = np.percentile(errors_mm, [50, 95, 99])
    return {"pixels": int(errors_mm.size), "median": float(p[0]), "p95": float(p[1]),
            "p99": float(p[2]), "max": float(errors_mm.max())}


def band_name(lo: float, hi: float) -> str:
    return f"{lo:g}-{hi:g} m"


def compare(evaluator: Evaluator, variables: dict, split: str, graph: Graph | None = None) -> dict:
    """Metrics of the fake-quant and integer forwards, their code agreement and the
    integer depth's deviation from FP32 on ``split`` (valid ground-truth pixels), in one
    pass over the data.

    ``graph`` defaults to the export of ``variables`` at the config's resolution. Raises
    ``exporter.ExportError`` when the model cannot be exported.
    """
    cfg, enc = evaluator.cfg, evaluator.encoding
    use_lidar = cfg.model.sparse
    if graph is None:
        graph = export_graph(cfg, variables, cfg.data.height, cfg.data.width, use_lidar)
    forward = make_integer_forward(graph)
    decode = output_decoder(cfg.model, use_lidar)
    fake = evaluator.models["fake"]
    fake_vars = freeze(fake, variables, use_lidar)
    fake_codes_of = make_head_codes(fake, use_lidar)
    fp32 = evaluator.predictor("float", use_lidar)
    metric_fn = jax.jit(image_metrics, static_argnums=(2, 3, 4, 5))
    accumulators = {"int8 fake-quant": MetricAccumulator(), "int8 integer": MetricAccumulator()}
    int_codes, fake_codes, errors, gts = [], [], [], []
    bs = cfg.eval.batch_size
    for batch in eval_pipeline(cfg, split).epoch(0):
        n = len(batch["rgb"])
        rgb, lidar = pad_batch(batch["rgb"], bs), pad_batch(batch["lidar"], bs)
        codes = forward(rgb, lidar)
        fake_c = fake_codes_of(fake_vars, rgb, lidar)
        gt = jnp.asarray(pad_batch(batch["depth"], bs))
        # both rows decoded by the same function: they differ only by the codes
        depth = {name: decode(c, lidar) for name, c in (("int8 fake-quant", fake_c), ("int8 integer", codes))}
        for name, d in depth.items():
            m, ok = metric_fn(d, gt, enc.min_depth, enc.max_depth, cfg.eval.garg_crop, False)
            accumulators[name].add(np.asarray(m)[:n], np.asarray(ok)[:n])
        int_codes.append(np.asarray(codes)[:n])
        fake_codes.append(np.asarray(fake_c)[:n])
        mask = np.asarray(valid_mask(gt, enc.min_depth, enc.max_depth, cfg.eval.garg_crop))[:n]
        err = np.abs(np.asarray(depth["int8 integer"])[:n] - np.asarray(fp32(variables, rgb, lidar))[:n]) * 1000.0
        errors.append(err[mask])
        gts.append(batch["depth"][mask])
    errors_mm, gt_m = np.concatenate(errors), np.concatenate(gts)
    deviation = {"all": deviation_stats(errors_mm)}
    for lo, hi in BANDS:
        deviation[band_name(lo, hi)] = deviation_stats(errors_mm[(gt_m >= lo) & (gt_m < hi)])
    return {"metrics": {name: acc.result() for name, acc in accumulators.items()},
            "agreement": code_agreement(np.concatenate(int_codes), np.concatenate(fake_codes)),
            "deviation_mm": deviation}


def format_comparison(result: dict) -> str:
    """The agreement line and the millimetre deviation table of ``compare``."""
    a = result["agreement"]
    lines = [f"integer INT8 vs fake-quant INT8 head codes: {100 * a['equal']:.3f}% equal, "
             f"max difference {a['max_diff']} ({a['codes']} codes)",
             f"{'|integer - FP32| depth (mm)':<28}{'pixels':>10}{'median':>10}{'p95':>10}{'p99':>10}{'max':>10}"]
    for band, s in result["deviation_mm"].items():
        vals = "".join(f"{s[k]:>10.1f}" if s[k] is not None else f"{'-':>10}"
                       for k in ("median", "p95", "p99", "max"))
        lines.append(f"{band:<28}{s['pixels']:>10d}{vals}")
    return "\n".join(lines)
