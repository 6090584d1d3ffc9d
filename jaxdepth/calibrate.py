"""Post-training quantization of an FP32 checkpoint:
``python -m jaxdepth.calibrate CKPT [--preset NAME | --method mse --num 300 --select stratified
[--cle] [--bias-correction] [--adaround] ...] --out DIR``.

Calibration images come from the checkpoint's ``calib`` split (``--split``), chosen at
random or stratified by per-image mean depth (``--bins``/``--shares``, default the
reference's [0,3) 25 %, [3,8) 40 %, [8,15) 25 %, [15,inf) 10 %). DIR receives a run folder
whose checkpoint holds the transformed weights and the activation ranges, and whose
config names the quantization preset (per-tensor or per-channel weights):
``python eval.py DIR`` and ``python -m jaxdepth.export DIR`` read it unchanged.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

from jaxdepth.cli import setup_jax

# Named recipes (docs/ptq.md has the measurements behind them).
PRESETS: dict[str, dict] = {
    "minmax": {},                                                    # the NPU toolchain's default
    "mse": {"activations": "mse"},                                   # the best measured (docs/ptq.md)
    "npu": {"activations": "mse", "weights": "mse", "cle": True, "bias_correction": True},
    "npu_adaround": {"activations": "mse", "weights": "mse", "cle": True, "bias_correction": True,
                     "adaround": True},
    "per_channel": {"activations": "mse", "weights": "mse", "per_channel": True,
                    "bias_correction": True},
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    from jaxdepth.data.selection import METHODS, REFERENCE_EDGES, REFERENCE_SHARES
    from jaxdepth.quant.ranges import ESTIMATORS
    from jaxdepth.quant.weight_ranges import METHODS as WEIGHT_METHODS

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="FP32 checkpoint: run folder, checkpoints/<name> or step folder")
    p.add_argument("--out", required=True, metavar="DIR", help="run folder to write (must not hold checkpoints)")
    p.add_argument("--preset", choices=sorted(PRESETS), default=None,
                   help="named recipe; explicit options below override it")
    p.add_argument("--method", choices=ESTIMATORS, default=None, help="activation range estimator (minmax)")
    p.add_argument("--weights", choices=WEIGHT_METHODS, default=None, help="weight range method (minmax)")
    p.add_argument("--per-channel", action="store_const", const=True, default=None,
                   help="per-output-channel weight scales (not NPU-legal; default per tensor)")
    p.add_argument("--cle", action="store_const", const=True, default=None, help="cross-layer equalization")
    p.add_argument("--bias-correction", action="store_const", const=True, default=None,
                   help="empirical bias correction")
    p.add_argument("--adaround", action="store_const", const=True, default=None, help="AdaRound weight rounding")
    p.add_argument("--num", type=int, default=None, help="calibration images (default: the whole split)")
    p.add_argument("--select", choices=METHODS, default="random", help="how to choose --num images")
    p.add_argument("--bins", type=float, nargs="+", default=list(REFERENCE_EDGES), metavar="M",
                   help="depth bin edges in metres for --select stratified (inf allowed)")
    p.add_argument("--shares", type=float, nargs="+", default=list(REFERENCE_SHARES), metavar="S",
                   help="share of the calibration set per depth bin")
    p.add_argument("--seed", type=int, default=0, help="seed of the image selection")
    p.add_argument("--split", default="calib", help="split the calibration images come from")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value of the checkpoint (e.g. data.root=...)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p.parse_args(argv)


def recipe_of(args: argparse.Namespace):
    """The preset's recipe with every option given on the command line replacing its value."""
    from jaxdepth.quant.calibrate import Recipe

    fields = dict(PRESETS[args.preset]) if args.preset else {}
    given = {"activations": args.method, "weights": args.weights, "per_channel": args.per_channel,
             "cle": args.cle, "bias_correction": args.bias_correction, "adaround": args.adaround}
    fields.update({k: v for k, v in given.items() if v is not None})
    return Recipe(**fields)


def calibration_batches(cfg, split: str, num: int | None, select: str, seed: int,
                        edges: list[float], shares: list[float],
                        batch_size: int | None = None) -> tuple[list[dict], list[str]]:
    """The calibration batches (unaugmented) and the chosen image names. ``batch_size``
    defaults to the largest divisor of the image count up to ``eval.batch_size``: equal
    batches, so each jitted calibration pass compiles once."""
    from jaxdepth.data.pipeline import Pipeline
    from jaxdepth.data.selection import Subset
    from jaxdepth.data.selection import select as select_images
    from jaxdepth.data.sources import open_dataset

    dataset = open_dataset(cfg, split)
    indices = (range(len(dataset)) if num is None
               else select_images(dataset, select, num, seed, edges, shares))
    subset = Subset(dataset, indices)
    if batch_size is None:
        batch_size = max(d for d in range(1, cfg.eval.batch_size + 1) if len(subset) % d == 0)
    pipeline = Pipeline(subset, batch_size=batch_size, height=cfg.data.height,
                        width=cfg.data.width, shuffle=False, augment=None, seed=0,
                        drop_remainder=False, prefetch=cfg.data.prefetch, workers=cfg.data.workers)
    batches = list(pipeline.epoch(0))
    return batches, [n for b in batches for n in b["name"]]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_jax()

    from jaxdepth import checkpoint
    from jaxdepth.config import ConfigError, absolute_paths, config_from_dict, to_dict
    from jaxdepth.data import DataError
    from jaxdepth.data.sources import check_splits
    from jaxdepth.quant.calibrate import post_training_quantize

    out = Path(args.out)
    if (out / "checkpoints").exists():
        print(f"error: --out {out} already holds checkpoints; choose another folder or delete it",
              file=sys.stderr)
        return 2
    try:
        recipe = recipe_of(args)
        state, meta, step_dir = checkpoint.load(args.checkpoint)
        cfg = absolute_paths(config_from_dict(meta["config"], args.overrides))
        check_splits(cfg, [args.split])
        t0 = time.perf_counter()
        batches, names = calibration_batches(cfg, args.split, args.num, args.select, args.seed,
                                             args.bins, args.shares)
        variables = {k: state[k] for k in ("params", "batch_stats", "quant")}
        variables, preset = post_training_quantize(cfg.model, cfg.quant.preset, variables, batches,
                                                   cfg.model.sparse, recipe, progress=not args.no_progress)
    except (ConfigError, DataError, checkpoint.CheckpointError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    cfg = dataclasses.replace(cfg, quant=dataclasses.replace(cfg.quant, preset=preset),
                              train=dataclasses.replace(cfg.train, run_dir=str(out.absolute())))
    ptq = {"source": str(step_dir), "recipe": dataclasses.asdict(recipe), "preset": args.preset,
           "split": args.split, "select": args.select if args.num else "all", "images": names,
           "seconds": round(time.perf_counter() - t0, 1)}
    step = int(state.get("step", 0))
    checkpoint.Checkpoints(out, keep=1).save(step, variables, {"config": to_dict(cfg), "phase": "ptq",
                                                               "metrics": None, "ptq": ptq})
    print(f"calibrated on {len(names)} images ({ptq['select']}) in {ptq['seconds']} s: "
          f"{json.dumps(ptq['recipe'])}, quantization preset {preset}")
    print(f"checkpoint written to {out}\nevaluate: python eval.py {out}\n"
          f"export:   python -m jaxdepth.export {out} --out NPU_DIR")
    return 0


if __name__ == "__main__":
    sys.exit(main())
