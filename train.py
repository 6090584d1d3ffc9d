"""Train a depth network: ``python train.py [--config configs/NAME.yaml] [--set key=value ...]``.

Started again on the same run folder, it resumes from the latest checkpoint; a different
config there is an error listing the differences, unless ``--restart`` is given.
"""
from __future__ import annotations

import argparse
import sys

from jaxdepth.cli import add_distributed_args, restart_with_huge_page_malloc, setup_jax


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/default.yaml", help="YAML config file")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set train.steps=100 (repeatable)")
    parser.add_argument("--init-from", default=None, metavar="CKPT",
                        help="start from this checkpoint's weights (e.g. QAT from an FP32 run)")
    parser.add_argument("--restart", action="store_true",
                        help="start over in an existing run folder, deleting its checkpoints and logs")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_distributed_args(parser)
    args = parser.parse_args(argv)
    setup_jax(args)

    import jax

    from jaxdepth.checkpoint import CheckpointError
    from jaxdepth.config import ConfigError, load_config
    from jaxdepth.data import DataError
    from jaxdepth.evaluate import format_table
    from jaxdepth.trainer import NonFiniteLoss, Trainer

    show = print if jax.process_index() == 0 else (lambda *a, **k: None)
    try:
        trainer = Trainer(load_config(args.config, args.overrides), init_from=args.init_from,
                          progress=not args.no_progress, restart=args.restart)
        cfg = trainer.cfg
        if cfg.quant.qat_steps > 0 and int(trainer.state.step) < cfg.train.steps:
            trainer.fit(stop_at=cfg.train.steps)        # FP32 results first, then QAT
            show(f"\nend of the FP32 phase, test split '{cfg.eval.split}':")
            show(format_table(trainer.test_report()), flush=True)
        trainer.fit()
        rows = trainer.test_report()
    except (ConfigError, DataError, CheckpointError, NonFiniteLoss, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    show(f"\ntest split '{cfg.eval.split}' (step {int(trainer.state.step)}):")
    show(format_table(rows))
    show("\nevaluate again: " + "\n                ".join(
        f"python eval.py {path}" for path in trainer.report_checkpoints()))
    return 0


if __name__ == "__main__":
    restart_with_huge_page_malloc()
    sys.exit(main())
