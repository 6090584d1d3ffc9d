"""Train a depth network: ``python train.py [--config configs/NAME.yaml] [--set key=value ...]``."""
from __future__ import annotations

import argparse
import sys

from jaxdepth.cli import setup_jax


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", default="configs/default.yaml", help="YAML config file")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set train.steps=100 (repeatable)")
    parser.add_argument("--init-from", default=None, metavar="CKPT",
                        help="start from this checkpoint's weights (e.g. QAT from an FP32 run)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    setup_jax()

    from jaxdepth.config import ConfigError, load_config
    from jaxdepth.data import DataError
    from jaxdepth.evaluate import format_table
    from jaxdepth.trainer import NonFiniteLoss, Trainer

    try:
        cfg = load_config(args.config, args.overrides)
        trainer = Trainer(cfg, init_from=args.init_from, progress=not args.no_progress)
        if cfg.quant.qat_steps > 0 and int(trainer.state.step) < cfg.train.steps:
            trainer.fit(stop_at=cfg.train.steps)        # FP32 results first, then QAT
            print(f"\nend of the FP32 phase, test split '{cfg.eval.split}':")
            print(format_table(trainer.test_report()), flush=True)
        trainer.fit()
        rows = trainer.test_report()
    except (ConfigError, DataError, NonFiniteLoss, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"\ntest split '{cfg.eval.split}':")
    print(format_table(rows))
    print(f"\nevaluate again: python eval.py {trainer.best_checkpoint()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
