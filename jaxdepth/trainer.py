"""The training loop: FP32 phase, optional QAT phase, validation, checkpoints, resume.

Steps ``[0, train.steps)`` train in FP32; steps ``[train.steps, train.steps +
quant.qat_steps)`` fine-tune with INT8 fake quantization, starting from min-max ranges
calibrated on the ``calib`` split (the PTQ baseline). A run interrupted anywhere resumes
from its latest checkpoint and sees the same batches it would have seen.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import jax
from tqdm import tqdm

from jaxdepth import checkpoint
from jaxdepth.config import Config, ConfigError, save_config, to_dict
from jaxdepth.data.sources import eval_pipeline, train_pipeline
from jaxdepth.evaluate import Evaluator
from jaxdepth.quant.calibrate import calibrate
from jaxdepth.train_lib import (TrainState, init_state, make_mesh, make_optimizer, make_train_step,
                                replicate, shard_batch)


class NonFiniteLoss(RuntimeError):
    """Training produced a NaN/Inf loss or gradient; the last good checkpoint is kept."""


class Trainer:
    """Owns the run folder, the data, the jitted steps and the checkpoints of one run."""

    def __init__(self, cfg: Config, init_from: str | None = None, progress: bool = True) -> None:
        self.cfg = cfg
        self.progress = progress
        self.run_dir = Path(cfg.train.run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, self.run_dir / "config.yaml")
        self.evaluate = Evaluator(cfg)
        self.encoding, self.models = self.evaluate.encoding, self.evaluate.models
        self.mesh = make_mesh()
        self.optimizer = make_optimizer(cfg)
        self.train_data = train_pipeline(cfg)
        self.ckpts = checkpoint.Checkpoints(self.run_dir, cfg.train.keep)
        self.state = self._initial_state(init_from)
        self._steps: dict[bool, Any] = {}

    @property
    def total_steps(self) -> int:
        return self.cfg.train.steps + self.cfg.quant.qat_steps

    def _initial_state(self, init_from: str | None) -> TrainState:
        d = self.cfg.data
        state = init_state(self.models["float"], self.optimizer, self.cfg.train.seed, d.height, d.width)
        if self.ckpts.latest_step() is not None:
            state, meta = self.ckpts.restore_latest(state)
            self._log({"event": "resume", "step": int(state.step)})
        elif init_from is not None:
            loaded, meta, step_dir = checkpoint.load(init_from)
            for key in ("params", "batch_stats", "quant"):
                want, got = jax.tree.structure(getattr(state, key)), jax.tree.structure(loaded[key])
                if want != got:
                    raise ConfigError(f"--init-from {step_dir}: its '{key}' do not fit this config's "
                                     "model (different model.* settings?)")
            state = state.replace(params=loaded["params"], batch_stats=loaded["batch_stats"],
                                  quant=loaded["quant"])
            self._log({"event": "init_from", "checkpoint": str(step_dir)})
        return replicate(state, self.mesh)

    def _log(self, record: dict) -> None:
        with open(self.run_dir / "log.jsonl", "a") as f:
            f.write(json.dumps({"time": time.time(), **record}) + "\n")

    def _train_step(self, qat: bool):
        if qat not in self._steps:
            model = self.models["fake" if qat else "float"]
            self._steps[qat] = make_train_step(model, self.encoding, self.optimizer, self.cfg,
                                               self.mesh, qat)
        return self._steps[qat]

    def calibrate(self, variables: dict) -> dict:
        """PTQ min-max ranges on the calib split."""
        return calibrate(self.models["float"], variables, eval_pipeline(self.cfg, "calib").epoch(0),
                         use_lidar=self.cfg.model.sparse)

    def _meta(self, phase: str, metrics: dict | None) -> dict:
        return {"config": to_dict(self.cfg), "phase": phase, "metrics": metrics}

    def _save(self, step: int, phase: str, metrics: dict | None = None) -> None:
        self.ckpts.save(step, self.state, self._meta(phase, metrics),
                        metrics=metrics, best_key=phase)

    def _enter_qat(self) -> None:
        """End of the FP32 phase: keep its weights, calibrate min-max ranges (PTQ)."""
        variables = self.state.variables
        quant = self.calibrate(variables)
        self.state = self.state.replace(quant=replicate(quant, self.mesh))
        fp32_val = self.evaluate(self.state.variables, "val", "float")["metrics"]
        ptq_val = self.evaluate(self.state.variables, "val", "fake")["metrics"]
        self.ckpts.save_named("fp32", self.cfg.train.steps, self.state,
                              self._meta("fp32", fp32_val))
        self._log({"event": "ptq_calibrated", "step": self.cfg.train.steps,
                   "val_fp32": fp32_val, "val_ptq": ptq_val})

    def fit(self, stop_at: int | None = None) -> TrainState:
        """Trains from the current step to ``stop_at`` (default: the end of the run)."""
        cfg = self.cfg
        start = int(self.state.step)
        stop = self.total_steps if stop_at is None else min(stop_at, self.total_steps)
        if start >= stop:
            return self.state
        batches = self.train_data.iterate(start)
        bar = tqdm(range(start, stop), initial=start, total=self.total_steps,
                   disable=not self.progress, dynamic_ncols=True, desc="train")
        rate, t_last = None, time.perf_counter()
        for step in bar:
            qat = step >= cfg.train.steps
            if qat and step == cfg.train.steps:
                self._enter_qat()
            batch = next(batches)
            new_state, stats = self._train_step(qat)(self.state, shard_batch(batch, self.mesh))
            loss, gnorm = float(stats["loss"]), float(stats["grad_norm"])
            if not (math.isfinite(loss) and math.isfinite(gnorm)):
                self._log({"event": "non_finite", "step": step, "loss": loss, "grad_norm": gnorm})
                raise NonFiniteLoss(
                    f"non-finite loss {loss} / gradient norm {gnorm} at step {step}; stopped. "
                    f"Last good checkpoint: step {self.ckpts.latest_step()} in {self.ckpts.root}")
            self.state = new_state
            now = time.perf_counter()
            ips = len(batch["rgb"]) / max(now - t_last, 1e-9)
            rate = ips if rate is None else 0.9 * rate + 0.1 * ips
            t_last = now
            bar.set_postfix(loss=f"{loss:.4f}", img_s=f"{rate:.1f}", phase="qat" if qat else "fp32")
            done = step + 1
            phase = "qat" if qat else "fp32"
            if done % cfg.train.log_every == 0:
                self._log({"step": done, "phase": phase, "loss": loss, "grad_norm": gnorm,
                           "images_per_s": rate})
            end_of_phase = done in (cfg.train.steps, self.total_steps)
            if done % cfg.train.val_every == 0 or end_of_phase:
                val = self.evaluate(self.state.variables, "val", "fake" if qat else "float")["metrics"]
                self._log({"step": done, "phase": phase, "val": val})
                self._save(done, phase, val)
            elif done % cfg.train.ckpt_every == 0:
                self._save(done, phase)
        self.ckpts.wait()
        return self.state

    def best_checkpoint(self) -> Path:
        """The step folder of the best checkpoint of the last phase that ran."""
        return checkpoint.resolve(self.run_dir)

    def test_report(self) -> dict[str, dict]:
        """Test metrics of the current state: FP32 (with LiDAR, median-scaled, monocular)
        and, after QAT, the PTQ min-max baseline and the QAT model in FP32 and INT8."""
        qat = int(self.state.step) > self.cfg.train.steps
        fp32_vars = self.ckpts.restore_named("fp32", self.state)[0].variables if qat else None
        rows = self.evaluate.report(self.state.variables, self.cfg.eval.split, int8=qat,
                                    fp32_variables=fp32_vars)
        (self.run_dir / "test_metrics.json").write_text(json.dumps(rows, indent=2))
        return rows
