"""Each output encoding trained with one budget through the whole INT8 path.

For every encoding: FP32 training, PTQ min-max calibration, QAT, integer export (the
trainer's own phases, with the config's budget), then on the test split the FP32, PTQ
and QAT INT8 metrics of the integer model and its deviation from FP32 in millimetres
(median, p99, max; overall and per depth band), before QAT (the PTQ model against its
FP32 weights) and after (the QAT model against its weights run in FP32). The rows show
whether QAT makes an encoding's fine channels robust. Every encoding ends in sigmoid
heads (``model.fill_prior`` off): the table compares the encodings themselves, and the
fill prior exists only for the log and inverse heads. Runs go to OUT/<encoding>
(resumed if there). Usage:
    python bench/encodings_trained.py [--encodings log,intfrac,phase,inverse]
        [--config configs/default.yaml] [--set key=value ...] [--out runs/encodings]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from common import machine


def _args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--encodings", default="log,intfrac,phase,inverse")
    parser.add_argument("--config", default="configs/default.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--out", default="runs/encodings")
    args = parser.parse_args()
    from jaxdepth.cli import setup_jax
    setup_jax()
    return args


def _variables(state: dict) -> dict:
    return {k: state[k] for k in ("params", "batch_stats", "quant")}


def measure(cfg, run: Path) -> dict:
    """Trains (or resumes) one run and measures its FP32, PTQ and QAT integer models."""
    from jaxdepth import checkpoint
    from jaxdepth.evaluate import Evaluator
    from jaxdepth.export.compare import compare
    from jaxdepth.trainer import Trainer

    Trainer(cfg, progress=False).fit()
    fp32, _, _ = checkpoint.load(run / "checkpoints" / "fp32")
    qat, _, _ = checkpoint.load(run / "checkpoints" / "best_qat")
    evaluator = Evaluator(cfg)
    split = cfg.eval.split
    ptq = compare(evaluator, _variables(fp32), split)
    after = compare(evaluator, _variables(qat), split)
    return {"fp32": evaluator(_variables(fp32), split, "float")["metrics"],
            "ptq integer": ptq["metrics"]["int8 integer"],
            "qat integer": after["metrics"]["int8 integer"],
            "deviation_mm": {"ptq": ptq["deviation_mm"], "qat": after["deviation_mm"]},
            "integer_equals_fake": {"ptq": ptq["agreement"]["equal"], "qat": after["agreement"]["equal"]}}


def table(results: dict[str, dict]) -> str:
    head = (f"{'encoding':<10}{'FP32':>8}{'PTQ':>8}{'QAT':>8}  "
            f"{'|int-FP32| mm before QAT (median/p99/max)':<44}{'after QAT (median/p99/max)'}")
    lines = [head]
    for name, r in results.items():
        dev = lambda d: f"{d['median']:.1f} / {d['p99']:.1f} / {d['max']:.0f}"
        lines.append(f"{name:<10}{r['fp32']['abs_rel']:>8.4f}{r['ptq integer']['abs_rel']:>8.4f}"
                     f"{r['qat integer']['abs_rel']:>8.4f}  {dev(r['deviation_mm']['ptq']['all']):<44}"
                     f"{dev(r['deviation_mm']['qat']['all'])}")
    lines.append("")
    lines.append(f"{'after QAT, median / p99 mm by band':<36}" + "".join(
        f"{band:>18}" for band in next(iter(results.values()))["deviation_mm"]["qat"] if band != "all"))
    for name, r in results.items():
        bands = {b: d for b, d in r["deviation_mm"]["qat"].items() if b != "all"}
        lines.append(f"{name:<36}" + "".join(
            f"{'-':>18}" if d["median"] is None else f"{d['median']:>9.1f} / {d['p99']:<6.1f}"
            for d in bands.values()))
    return "\n".join(lines)


def main() -> None:
    args = _args()
    from jaxdepth.config import load_config, replace

    base = load_config(args.config, args.overrides)
    if base.quant.qat_steps <= 0:
        raise SystemExit("quant.qat_steps: this benchmark needs a QAT phase (> 0)")
    results = {}
    for name in args.encodings.split(","):
        run = Path(args.out) / name
        cfg = replace(base, model={"encoding": name, "fill_prior": False}, train={"run_dir": str(run)})
        results[name] = measure(cfg, run)
    print(f"abs_rel on the '{base.eval.split}' split, {base.train.steps} FP32 + "
          f"{base.quant.qat_steps} QAT steps each ({args.config}, {' '.join(args.overrides) or 'no overrides'})")
    print(table(results))
    print(json.dumps({"bench": "encodings_trained", "machine": machine(), "config": args.config,
                      "overrides": args.overrides, "results": results}))


if __name__ == "__main__":
    main()
