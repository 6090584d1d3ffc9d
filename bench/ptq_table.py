"""Post-training INT8 quantization: which calibration recipe gets closest to FP32?

For each run folder (one trained model per output encoding), INT8 test metrics of its
FP32 checkpoint calibrated with every activation range estimator x calibration set size
x selection (random, depth-stratified) x weight granularity (per tensor, per channel) x
cross-layer equalization (off, on), then the named recipes of ``jaxdepth.calibrate``
asked for (``--recipes``), then the run's QAT checkpoint. First come FP32, the baselines
without a network and the output floor: the FP32 network with only its head output
rounded to the uint8 codes the INT8 model emits, which no calibration can beat. Prints a
markdown table and one JSON line. Usage:

    python bench/ptq_table.py RUN [RUN ...] [--quick] [--split test] [--json PATH]

``--quick``: min-max and MSE, 100 images, CLE off and on (the CI-sized subset);
``--estimators``, ``--nums``, ``--selects``, ``--weights``, ``--cle`` pick other subsets.
INT8 metrics are the fake-quant model's, whose codes the integer export reproduces exactly
(tests/test_export.py, tests/test_ptq.py).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from common import machine

ESTIMATORS = ("minmax", "percentile", "mse", "kl")
NUMS = (100, 300)
SELECTS = ("random", "stratified")
METRICS = ("abs_rel", "rmse", "a1")
CALIB_BATCH = 4      # divides 100 and 300: one compilation of each calibration pass


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", help="run folders (their checkpoints/fp32 and best_qat)")
    p.add_argument("--quick", action="store_true", help="min-max and MSE, 100 images only")
    p.add_argument("--estimators", nargs="+", choices=ESTIMATORS, default=None, help="subset of the grid")
    p.add_argument("--nums", nargs="+", type=int, default=None, help="subset of the grid")
    p.add_argument("--selects", nargs="+", choices=SELECTS, default=list(SELECTS), help="subset of the grid")
    p.add_argument("--weights", nargs="+", choices=("tensor", "channel"), default=["tensor", "channel"],
                   help="subset of the grid")
    p.add_argument("--cle", nargs="+", choices=("off", "on"), default=["off", "on"], help="subset of the grid")
    p.add_argument("--split", default="test")
    p.add_argument("--calib-split", default="calib")
    p.add_argument("--recipes", nargs="*", default=[],
                   help="named recipes of jaxdepth.calibrate to add as rows (on the largest "
                        "stratified set)")
    p.add_argument("--json", default=None, help="also write the JSON line to this file")
    args = p.parse_args()
    from jaxdepth.cli import setup_jax
    setup_jax()
    return args


def load(path: Path):
    from jaxdepth import checkpoint
    from jaxdepth.config import absolute_paths, config_from_dict

    state, meta, step_dir = checkpoint.load(path)
    return (absolute_paths(config_from_dict(meta["config"])),
            {k: state[k] for k in ("params", "batch_stats", "quant")}, step_dir)


def with_preset(cfg, preset: str):
    import dataclasses
    return dataclasses.replace(cfg, quant=dataclasses.replace(cfg.quant, preset=preset))


def output_floor(evaluator, variables: dict, split: str) -> dict:
    """Metrics of the FP32 network whose head output alone is rounded to the INT8 graph's
    output codes (``encodings.output_grid``)."""
    import jax

    from jaxdepth.data.sources import eval_pipeline
    from jaxdepth.encodings import output_grid
    from jaxdepth.evaluate import evaluate

    cfg, model, enc = evaluator.cfg, evaluator.models["float"], evaluator.encoding
    rounded = output_grid(cfg.model, cfg.model.sparse)

    @jax.jit
    def predict(variables, rgb, lidar):
        heads = model.apply(variables, rgb, lidar if cfg.model.sparse else None, train=False)
        return rounded(heads[0], lidar)

    return evaluate(predict, variables, eval_pipeline(cfg, split).epoch(0), cfg.eval.batch_size, enc,
                    cfg.eval.garg_crop, median_scaling=False)["metrics"]


def table_for(run: Path, args: argparse.Namespace, log) -> list[dict]:
    """Every row of one run folder."""
    from jaxdepth.calibrate import PRESETS, calibration_batches
    from jaxdepth.evaluate import Evaluator
    from jaxdepth.models import build_model
    from jaxdepth.quant import numerics as qn
    from jaxdepth.quant.calibrate import Recipe, post_training_quantize, weights_preset
    from jaxdepth.quant.cle import equalize
    from jaxdepth.quant.ranges import collect_histograms, estimate, with_ranges

    fp32_dir = run / "checkpoints" / "fp32"
    cfg, fp32, _ = load(fp32_dir if fp32_dir.is_dir() else run)
    enc, use_lidar = cfg.model.encoding, cfg.model.sparse
    evaluators: dict[str, Evaluator] = {}

    def evaluator(preset: str) -> Evaluator:
        if preset not in evaluators:
            evaluators[preset] = Evaluator(with_preset(cfg, preset))
        return evaluators[preset]

    def row(kind: str, metrics: dict, **fields) -> dict:
        r = {"encoding": enc, "row": kind, **fields, **{k: metrics[k] for k in METRICS}}
        log(r)
        return r

    base = evaluator(cfg.quant.preset)
    fp32_metrics = base(fp32, args.split, "float")["metrics"]
    rows = [row("fp32", fp32_metrics)]
    rows += [row(f"baseline {name}", m) for name, m in base.baselines(args.split).items()]
    rows.append(row("fp32, uint8 output (floor)", output_floor(base, fp32, args.split)))

    estimators = args.estimators or (("minmax", "mse") if args.quick else ESTIMATORS)
    nums = args.nums or ((100,) if args.quick else NUMS)
    def calibration_set(n: int, select: str) -> list[dict]:
        return calibration_batches(cfg, args.calib_split, n, select, 0, *_reference_bins(),
                                   batch_size=CALIB_BATCH)[0]

    batches = {(n, s): calibration_set(n, s) for n in nums for s in args.selects}
    float_model = build_model(cfg.model)
    activation_format = qn.get_scheme(cfg.quant.preset).activation

    def estimator_rows(weights: dict, hists: dict, est: str, **fields) -> list[dict]:
        """The rows of one estimator: its ranges, then each weight granularity's metrics."""
        t0 = time.perf_counter()
        ranges = estimate(hists, est, activation_format)
        fields = {**fields, "estimator": est, "estimate_s": round(time.perf_counter() - t0, 1)}
        variables = {**weights, "quant": with_ranges(weights["quant"], ranges)}
        out = []
        for per_channel in (w == "channel" for w in args.weights):
            preset = weights_preset(cfg.quant.preset, per_channel)
            m = evaluator(preset)(variables, args.split, "fake")["metrics"]
            out.append(row("ptq", m, **fields, weights="channel" if per_channel else "tensor"))
        return out

    # Two rows at a time: XLA:CPU keeps two cores busier with two forwards than with one,
    # and the numpy KL search runs beside an evaluation.
    for granularity in args.weights:     # evaluators and predictors built before the threads
        evaluator(weights_preset(cfg.quant.preset, granularity == "channel")).predictor("fake", use_lidar)
    with ThreadPoolExecutor(2) as pool:
        for cle in (c == "on" for c in args.cle):
            weights = equalize(fp32)[0] if cle else fp32
            for (n, select), b in batches.items():
                t0 = time.perf_counter()
                hists = collect_histograms(float_model, weights, b, use_lidar, progress=False)
                info = dict(images=n, select=select, cle=cle, histograms_s=round(time.perf_counter() - t0, 1))
                jobs = [pool.submit(estimator_rows, weights, hists, est, **info) for est in estimators]
                rows += [r for job in jobs for r in job.result()]
    recipe_set = (nums[-1], "stratified")
    b = batches[recipe_set] if recipe_set in batches else calibration_set(*recipe_set)
    for name in args.recipes:
        t0 = time.perf_counter()
        variables, preset = post_training_quantize(cfg.model, cfg.quant.preset, fp32, b, use_lidar,
                                                   Recipe(**PRESETS[name]))
        calib_s = round(time.perf_counter() - t0, 1)
        m = evaluator(preset)(variables, args.split, "fake")["metrics"]
        rows.append(row(f"recipe {name}", m, images=nums[-1], select="stratified",
                        weights="channel" if qn.get_scheme(preset).per_channel_weights else "tensor",
                        calib_s=calib_s))
    qat_dir = run / "checkpoints" / "best_qat"
    if qat_dir.is_dir():
        qcfg, qat, _ = load(qat_dir)
        rows.append(row("qat", Evaluator(qcfg)(qat, args.split, "fake")["metrics"]))
    for r in rows:
        r["vs_fp32"] = round(r["abs_rel"] / fp32_metrics["abs_rel"], 3)
    return rows


def _reference_bins():
    from jaxdepth.data.selection import REFERENCE_EDGES, REFERENCE_SHARES
    return list(REFERENCE_EDGES), list(REFERENCE_SHARES)


def markdown(rows: list[dict]) -> str:
    head = ("| encoding | row | estimator | images | selection | weights | CLE | abs_rel | rmse (m) "
            "| a1 | abs_rel / FP32 |")
    lines = [head, "|" + "---|" * 11]
    for r in rows:
        cle = {True: "on", False: "off"}.get(r.get("cle"), "")
        lines.append(f"| {r['encoding']} | {r['row']} | {r.get('estimator', '')} | {r.get('images', '')} "
                     f"| {r.get('select', '')} | {r.get('weights', '')} | {cle} | {r['abs_rel']:.4f} "
                     f"| {r['rmse']:.3f} | {r['a1']:.4f} | {r['vs_fp32']:.3f} |")
    return "\n".join(lines)


def main() -> None:
    args = parse_args()
    t0 = time.perf_counter()
    log = lambda r: print(json.dumps(r), file=sys.stderr, flush=True)
    rows = [r for run in args.runs for r in table_for(Path(run), args, log)]
    print(markdown(rows))
    record = {"bench": "ptq_table", "machine": machine(), "quick": args.quick, "split": args.split,
              "seconds": round(time.perf_counter() - t0), "rows": rows}
    line = json.dumps(record)
    print(line)
    if args.json:
        Path(args.json).write_text(line + "\n")


if __name__ == "__main__":
    main()
