"""Resuming is safe: a run folder is resumed with its own config, or the user says otherwise."""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
import yaml

from conftest import tiny_cfg, tiny_overrides
from jaxdepth.config import ConfigError
from jaxdepth.trainer import Trainer

ROOT = Path(__file__).parents[1]


def _cli_args(overrides: list[str], tmp_path: Path) -> list[str]:
    """train.py arguments for the config defaults (as ``tiny_cfg``) plus ``overrides``."""
    defaults = tmp_path / "defaults.yaml"
    defaults.write_text("{}\n")
    return ["--config", str(defaults), "--no-progress"] + [a for o in overrides for a in ("--set", o)]


def test_other_config_on_a_run_folder_is_an_error_listing_the_keys(finished_run, tiny_data, tmp_path,
                                                                    capsys):
    trainer, _ = finished_run
    before = (trainer.run_dir / "config.yaml").read_text()
    sys.path.insert(0, str(ROOT))
    import train as train_cli

    overrides = tiny_overrides(tiny_data, trainer.run_dir, quant__qat_steps=2, train__lr=0.005,
                               model__num_scales=1)
    assert train_cli.main(_cli_args(overrides, tmp_path)) == 2
    err = capsys.readouterr().err
    assert "holds a run with another config" in err and "Traceback" not in err
    listed = [line for line in err.splitlines() if line.startswith("  ")]
    assert listed == ["  model.num_scales: 2 -> 1", "  train.lr: 0.001 -> 0.005"]
    assert "--restart" in err
    assert (trainer.run_dir / "config.yaml").read_text() == before


def test_init_from_on_a_run_folder_with_checkpoints_is_an_error(finished_run, tiny_data):
    trainer, _ = finished_run
    with pytest.raises(ConfigError, match=r"--init-from .*already holds checkpoints \(latest step 6\)"):
        Trainer(tiny_cfg(tiny_data, trainer.run_dir, quant__qat_steps=2), progress=False,
                init_from=str(trainer.run_dir / "checkpoints" / "fp32"))


def test_resume_uses_the_checkpoint_config(finished_run, tiny_data, tmp_path, monkeypatch):
    trainer, _ = finished_run
    run = tmp_path / "copy"
    shutil.copytree(trainer.run_dir, run)
    monkeypatch.chdir(tiny_data.parent)
    # The same run asked with a relative data.root and another loader thread count.
    cfg = tiny_cfg(Path(tiny_data.name), run, quant__qat_steps=2, data__workers=2)
    resumed = Trainer(cfg, progress=False)
    assert int(resumed.state.step) == 6
    assert resumed.cfg.data.root == str(tiny_data)         # stored absolute
    assert resumed.cfg.data.workers == 2                  # a key that changes no result
    assert resumed.cfg.model == trainer.cfg.model and resumed.cfg.train.run_dir == str(run)
    stored = yaml.safe_load((run / "config.yaml").read_text())
    assert stored["data"]["root"] == str(tiny_data)


def test_restart_starts_over_in_the_same_folder(finished_run, tiny_data, tmp_path):
    trainer, _ = finished_run
    run = tmp_path / "copy"
    shutil.copytree(trainer.run_dir, run)
    fresh = Trainer(tiny_cfg(tiny_data, run, quant__qat_steps=2, train__lr=0.005), progress=False,
                    restart=True)
    assert int(fresh.state.step) == 0
    assert fresh.cfg.train.lr == 0.005
    assert not (run / "checkpoints" / "last" / "6").exists()
    assert not (run / "test_metrics.json").exists() and not (run / "log.jsonl").exists()
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["lr"] == 0.005
