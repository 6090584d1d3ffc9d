"""Evaluate a checkpoint: ``python eval.py CHECKPOINT [--split test] [--save-vis DIR]``.

CHECKPOINT is a run folder (its best checkpoint), a ``checkpoints/<name>`` folder (its
latest) or a step folder. A checkpoint with calibrated or QAT ranges is evaluated in FP32,
in fake-quant INT8 and in integer INT8 (the exported graph, as the NPU computes it), with
the integer/fake-quant code agreement and the integer depth's deviation from FP32 in mm.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from jaxdepth.cli import restart_with_huge_page_malloc, setup_jax


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint")
    parser.add_argument("--split", default=None, help="data split (default: the config's eval.split)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value of the checkpoint (e.g. eval.garg_crop=true)")
    parser.add_argument("--json", default=None, help="where to write the metrics (default: beside the run)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("--save-vis", default=None, metavar="DIR",
                        help="write depth panels of the first --num-vis images and summary plots to DIR")
    parser.add_argument("--num-vis", type=int, default=8, metavar="K", help="panels to write (default 8)")
    args = parser.parse_args(argv)
    setup_jax()

    from jaxdepth import checkpoint
    from jaxdepth.config import ConfigError, absolute_paths, config_from_dict
    from jaxdepth.data import DataError
    from jaxdepth.data.sources import check_splits
    from jaxdepth.evaluate import Evaluator, format_table
    from jaxdepth.export.compare import compare, format_comparison
    from jaxdepth.export.exporter import ExportError

    try:
        state, meta, step_dir = checkpoint.load(args.checkpoint)
        cfg = absolute_paths(config_from_dict(meta["config"], args.overrides))
        split = args.split or cfg.eval.split
        check_splits(cfg, [split])
        variables = {k: state[k] for k in ("params", "batch_stats", "quant")}
        int8 = checkpoint.has_ranges(variables)
        evaluator = Evaluator(cfg, progress=not args.no_progress)
        rows = evaluator.report(variables, split, int8=int8)
        integer, not_exported = None, None
        if int8:
            try:
                integer = compare(evaluator, variables, split)
                rows["int8 integer"] = integer["metrics"]["int8 integer"]
            except ExportError as e:
                not_exported = str(e)
    except (ConfigError, DataError, checkpoint.CheckpointError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"checkpoint {step_dir} (phase {meta.get('phase')}), split '{split}':")
    print(format_table(rows))
    if integer:
        print(format_comparison(integer))
    if not_exported:
        print(f"integer INT8: not exportable: {not_exported}")
    out = Path(args.json) if args.json else step_dir.parents[1].parent / "eval" / \
        f"{step_dir.parent.name}_{step_dir.name}_{split}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    record = {"checkpoint": str(step_dir), "split": split, "results": rows}
    if integer:
        record["integer"] = {k: integer[k] for k in ("agreement", "deviation_mm")}
    out.write_text(json.dumps(record, indent=2))
    print(f"metrics written to {out}")
    if args.save_vis:
        from jaxdepth.vis import save_eval_pictures

        written = save_eval_pictures(evaluator, variables, split, args.save_vis, args.num_vis)["files"]
        print(f"pictures written to {args.save_vis}: {len(written['panels'])} panels, "
              + ", ".join(v for k, v in written.items() if k != "panels"))
    return 0


if __name__ == "__main__":
    restart_with_huge_page_malloc()
    sys.exit(main())
