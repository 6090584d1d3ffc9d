"""The RGB-only reference of a completion run, and the run's monocular mode beside it.

Trains the same encoder and decoder without a SAN (``model.sparse=false``) with the run's
own config, data and FP32 budget, into ``RUN_DIR/rgb_only`` (resumed if there), then
prints the test metrics of that reference and of the completion run's FP32 checkpoint
run without LiDAR (same weights as its completion row), and their abs_rel ratio.
Usage:
    python bench/monocular_reference.py [RUN_DIR (default runs/default)] [--split test]
"""
from __future__ import annotations

import json
from pathlib import Path

from common import machine, run_args


def main() -> None:
    args = run_args(__doc__, "run_dir")
    from jaxdepth import checkpoint
    from jaxdepth.config import config_from_dict, replace
    from jaxdepth.evaluate import Evaluator, format_table
    from jaxdepth.trainer import Trainer

    run = Path(args.run_dir)
    state, meta, fp32_dir = checkpoint.load(run / "checkpoints" / "fp32")
    cfg = config_from_dict(meta["config"])
    if not cfg.model.sparse:
        raise SystemExit(f"{fp32_dir}: this run has no SAN; it is an RGB-only model already")
    ref_cfg = replace(cfg, model={"sparse": False}, quant={"qat_steps": 0},
                      train={"run_dir": str(run / "rgb_only")})
    trainer = Trainer(ref_cfg)
    trainer.fit()

    completion = Evaluator(cfg).report({k: state[k] for k in ("params", "batch_stats", "quant")},
                                       args.split, int8=False)
    reference = Evaluator(ref_cfg)(trainer.state.variables, args.split, "float")["metrics"]
    rows = {"rgb-only reference": reference, "fp32 monocular (same weights)": completion["fp32 monocular"],
            "fp32": completion["fp32"], "lidar nearest fill": completion["lidar nearest fill"],
            "constant": completion["constant"]}
    ratio = rows["fp32 monocular (same weights)"]["abs_rel"] / reference["abs_rel"]
    print(f"run {run}, split '{args.split}', {cfg.train.steps} FP32 steps each")
    print(format_table(rows))
    print(f"monocular abs_rel / RGB-only reference abs_rel = {ratio:.3f}")
    print(json.dumps({"bench": "monocular_reference", "machine": machine(), "run": str(run),
                      "split": args.split, "steps": cfg.train.steps,
                      "monocular_over_reference_abs_rel": round(ratio, 4), "results": rows}))


if __name__ == "__main__":
    main()
