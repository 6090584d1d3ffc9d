"""FP32, PTQ min-max INT8 and QAT INT8 test metrics of a finished run.

The run must have a QAT phase (``quant.qat_steps > 0``, as ``configs/default.yaml``):
its ``checkpoints/fp32`` holds the FP32 weights with their min-max ranges (the PTQ
baseline), its best QAT checkpoint the fine-tuned model. Usage:
    python bench/fidelity.py [RUN_DIR (default runs/default)] [--split test]
"""
from __future__ import annotations

import json
from pathlib import Path

from common import machine, run_args


def main() -> None:
    args = run_args(__doc__, "run_dir")
    from jaxdepth import checkpoint
    from jaxdepth.config import config_from_dict
    from jaxdepth.evaluate import Evaluator, format_table

    run = Path(args.run_dir)
    qat_state, meta, qat_dir = checkpoint.load(run / "checkpoints" / "best_qat")
    fp32_state, _, fp32_dir = checkpoint.load(run / "checkpoints" / "fp32")
    cfg = config_from_dict(meta["config"])
    pick = lambda s: {k: s[k] for k in ("params", "batch_stats", "quant")}
    rows = Evaluator(cfg).report(pick(qat_state), args.split, int8=True, fp32_variables=pick(fp32_state))
    ratio = rows["int8 qat"]["abs_rel"] / rows["fp32"]["abs_rel"]
    print(f"run {run} ({cfg.quant.preset}), split '{args.split}'")
    print(format_table(rows))
    print(f"INT8 QAT abs_rel / FP32 abs_rel = {ratio:.3f}; "
          f"PTQ min-max / FP32 = {rows['int8 ptq min-max']['abs_rel'] / rows['fp32']['abs_rel']:.3f}")
    print(json.dumps({"bench": "fidelity", "machine": machine(), "run": str(run), "split": args.split,
                      "fp32_checkpoint": str(fp32_dir), "qat_checkpoint": str(qat_dir),
                      "qat_over_fp32_abs_rel": round(ratio, 4), "results": rows}))


if __name__ == "__main__":
    main()
