"""The training loop: FP32 phase, optional QAT phase, validation, checkpoints, resume.

Steps ``[0, train.steps)`` train in FP32; steps ``[train.steps, train.steps +
quant.qat_steps)`` fine-tune with INT8 fake quantization, starting from min-max ranges
calibrated on the ``calib`` split (the PTQ baseline). A run interrupted anywhere resumes
from its latest readable checkpoint, with the checkpoint's config, and sees the same
batches it would have seen. Every process of a multi-host run runs this loop on its own
rows of each batch; only process 0 writes the log, the config and the reports.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import jax
from jax.experimental import multihost_utils
from tqdm import tqdm

from jaxdepth import checkpoint
from jaxdepth.config import (Config, ConfigError, absolute_paths, config_diff, config_from_dict,
                             save_config, to_dict, with_runtime_keys)
from jaxdepth.data.sources import check_splits, dataset_root, eval_pipeline, train_pipeline
from jaxdepth.evaluate import Evaluator
from jaxdepth.quant.calibrate import calibrate
from jaxdepth.quant.freeze import weights_on_grid
from jaxdepth.train_lib import (TrainState, init_state, make_mesh, make_optimizer, make_train_step,
                                replicate, shard_batch)

RUN_OUTPUTS = ("checkpoints", "eval", "log.jsonl", "test_metrics.json", "config.yaml")
OTHER_STATES = 4   # checkpoints beside train.keep: the one being written, best FP32, best QAT, fp32


class NonFiniteLoss(RuntimeError):
    """Training produced a NaN/Inf loss or gradient; the last good checkpoint is kept."""


def _sync(name: str) -> None:
    """Barrier across the processes of a multi-host run."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


def _check_devices(cfg: Config) -> None:
    n = jax.device_count()
    if cfg.data.batch_size % n:
        raise ConfigError(f"data.batch_size: {cfg.data.batch_size} does not split over the {n} "
                          f"devices of this run; choose a multiple of {n}")


def _prepare_run_dir(run_dir: Path, restart: bool) -> None:
    """Fails before any work if the run folder cannot be written; ``restart`` deletes
    what an earlier run left there."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / f".write-test-{jax.process_index()}"
        with open(probe, "wb") as f:
            f.write(bytes(1 << 16))
            f.flush()
            os.fsync(f.fileno())
        probe.unlink()
    except OSError as e:
        raise ConfigError(f"train.run_dir: cannot write to {run_dir} ({e.strerror or e})") from None
    if restart and jax.process_index() == 0:
        for name in RUN_OUTPUTS:
            path = run_dir / name
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
    _sync("run_dir")


def _check_free_space(run_dir: Path, state: TrainState, keep: int) -> None:
    """A run whose checkpoints cannot fit on the disk fails now, not hours later."""
    state_bytes = sum(x.nbytes for x in jax.tree.leaves(state))
    need = state_bytes * (keep + OTHER_STATES)
    free = shutil.disk_usage(run_dir).free
    if free < need:
        raise ConfigError(
            f"train.run_dir: {free / 1e6:.0f} MB free on the disk of {run_dir}; this run's "
            f"checkpoints need about {need / 1e6:.0f} MB ({keep + OTHER_STATES} states of "
            f"{state_bytes / 1e6:.1f} MB: train.keep={keep} latest, one being written, best FP32, "
            "best QAT, end of FP32). Free some space, lower train.keep or choose another "
            "train.run_dir")


class Trainer:
    """Owns the run folder, the data, the jitted steps and the checkpoints of one run.

    Every check that can fail (config, data splits, devices, run folder, disk space)
    runs before the data is rendered or a step compiled. ``restart`` starts over in an
    existing run folder; without it a run folder with checkpoints is resumed, and a
    config that differs from the checkpoint's is an error listing the differences.
    """

    def __init__(self, cfg: Config, init_from: str | None = None, progress: bool = True,
                 restart: bool = False) -> None:
        cfg = absolute_paths(cfg)
        self.primary = jax.process_index() == 0
        self.progress = progress and self.primary
        self.run_dir = Path(cfg.train.run_dir)
        _check_devices(cfg)
        check_splits(cfg, ["train", "val", cfg.eval.split] + (["calib"] if cfg.quant.qat_steps else []))
        _prepare_run_dir(self.run_dir, restart)
        self.ckpts = checkpoint.Checkpoints(self.run_dir, cfg.train.keep)
        self.cfg = cfg = self._resumed_config(cfg, init_from)
        if self.primary:
            save_config(cfg, self.run_dir / "config.yaml")
        self.evaluate = Evaluator(cfg)
        self.encoding, self.models = self.evaluate.encoding, self.evaluate.models
        self.mesh = make_mesh()
        self.optimizer = make_optimizer(cfg)
        self.state = self._initial_state(init_from)
        _check_free_space(self.run_dir, self.state, cfg.train.keep)
        if self.primary:
            dataset_root(cfg, progress=self.progress)      # renders the embedded data once
        _sync("data")
        self.train_data = train_pipeline(cfg, (jax.process_index(), jax.process_count()))
        self._steps: dict[bool, Any] = {}
        self._qat_step_ahead: Future | None = None
        self._last_val: tuple[int, dict] | None = None        # (step, val metrics) of the last validation
        self._fp32_rows: dict[str, dict] | None = None        # the FP32 phase's test rows

    @property
    def total_steps(self) -> int:
        return self.cfg.train.steps + self.cfg.quant.qat_steps

    def _resumed_config(self, cfg: Config, init_from: str | None) -> Config:
        """The config of the checkpoint to resume from (with this run's ``RUNTIME_KEYS``),
        or ``cfg`` in a run folder without checkpoints."""
        found = self.ckpts.latest_meta()
        if found is None:
            return cfg
        meta, step, _ = found
        if init_from is not None:
            raise ConfigError(
                f"--init-from {init_from}: {self.run_dir} already holds checkpoints (latest step "
                f"{step}), which a run resumes from; pass --restart to start over in this folder "
                "from the --init-from weights, or choose another train.run_dir")
        try:
            stored = absolute_paths(config_from_dict(meta["config"]))
        except ConfigError as e:
            raise ConfigError(f"{self.run_dir}: the config of its checkpoint at step {step} does "
                              f"not load ({e}); pass --restart to start over") from None
        diff = config_diff(stored, cfg)
        if diff:
            lines = "\n".join(f"  {k}: {a!r} -> {b!r}" for k, (a, b) in diff.items())
            raise ConfigError(
                f"{self.run_dir} holds a run with another config; keys that differ (checkpoint "
                f"-> asked):\n{lines}\nResume with the checkpoint's config, pass --restart to start "
                "over in this folder, or choose another train.run_dir")
        return with_runtime_keys(stored, cfg)

    def _initial_state(self, init_from: str | None) -> TrainState:
        d = self.cfg.data
        state = replicate(init_state(self.models["float"], self.optimizer, self.cfg.train.seed,
                                     d.height, d.width), self.mesh)
        if self.ckpts.latest_step() is not None:
            state, _, skipped = self.ckpts.restore_latest(state)
            for message in skipped:
                self._warn(message)
            self.ckpts.discard_after(int(state.step))
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
        if self.primary:
            with open(self.run_dir / "log.jsonl", "a") as f:
                f.write(json.dumps({"time": time.time(), **record}) + "\n")

    def _warn(self, message: str) -> None:
        if self.primary:
            print(f"warning: {message}", file=sys.stderr, flush=True)
        self._log({"event": "warning", "message": message})

    def _make_step(self, qat: bool):
        return make_train_step(self.models["fake" if qat else "float"], self.encoding, self.optimizer,
                               self.cfg, self.mesh, qat)

    def _train_step(self, qat: bool):
        if qat not in self._steps:
            ahead = self._qat_step_ahead if qat else None
            self._steps[qat] = ahead.result() if ahead is not None else self._make_step(qat)
        return self._steps[qat]

    def _compile_qat_step_ahead(self, batch: dict) -> None:
        """Starts compiling the QAT step in a background thread at the end of the FP32
        phase. The QAT step is the run's largest compilation (about a minute on 2 CPU cores,
        most of it on one); it then overlaps with the FP32 test report, the calibration and
        the PTQ evaluation, which compile and run their own, smaller programs."""
        args = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                            (self.state, batch))
        step = self._make_step(qat=True)
        pool = ThreadPoolExecutor(1, thread_name_prefix="compile-qat-step")
        self._qat_step_ahead = pool.submit(lambda: step.lower(*args).compile())
        pool.shutdown(wait=False)

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
        quant = self.calibrate(self.state.variables)
        self.state = self.state.replace(quant=replicate(quant, self.mesh))
        steps = self.cfg.train.steps
        fp32_val = (self._last_val[1] if self._last_val and self._last_val[0] == steps
                    else self.evaluate(self.state.variables, "val", "float")["metrics"])
        ptq_val = self.evaluate(self.state.variables, "val", "fake")["metrics"]
        self.ckpts.save_named("fp32", steps, self.state, self._meta("fp32", fp32_val))
        self._log({"event": "ptq_calibrated", "step": steps,
                   "val_fp32": fp32_val, "val_ptq": ptq_val})

    def _end_qat(self) -> None:
        """End of the QAT phase (its last step checked finite): the weights on their INT8
        grid, so that its FP32 rows and checkpoint are the integer model's weights in float."""
        params = weights_on_grid(self.models["fake"], self.state.variables)["params"]
        self.state = self.state.replace(params=replicate(params, self.mesh))

    def _check(self, pending: list[tuple[int, dict]]) -> list[tuple[int, dict[str, float]]]:
        """(step, stats) of the steps since the last check: the loop's one host sync, every
        ``train.log_every`` steps and before every checkpoint, so a checkpoint never holds
        a state after a non-finite step."""
        values = jax.device_get([stats for _, stats in pending])
        out = []
        for (step, _), stats in zip(pending, values):
            stats = {k: float(v) for k, v in stats.items()}
            loss, gnorm = stats["loss"], stats["grad_norm"]
            if not (math.isfinite(loss) and math.isfinite(gnorm)):
                self._log({"event": "non_finite", "step": step, "loss": loss, "grad_norm": gnorm})
                raise NonFiniteLoss(
                    f"non-finite loss {loss} / gradient norm {gnorm} at step {step}; stopped. "
                    f"Last good checkpoint: step {self.ckpts.latest_step()} in {self.ckpts.root}")
            out.append((step, stats))
        return out

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
        pending: list[tuple[int, dict]] = []
        t_last, n_last = time.perf_counter(), start
        for step in bar:
            qat = step >= cfg.train.steps
            if qat and step == cfg.train.steps:
                self._enter_qat()
                t_last = time.perf_counter()
            batch = shard_batch(next(batches), self.mesh)
            self.state, stats = self._train_step(qat)(self.state, batch)
            pending.append((step, stats))
            done = step + 1
            phase = "qat" if qat else "fp32"
            end_of_phase = done in (cfg.train.steps, self.total_steps)
            validate = done % cfg.train.val_every == 0 or end_of_phase
            save = validate or done % cfg.train.ckpt_every == 0
            if save or done % cfg.train.log_every == 0 or done == stop:
                checked = self._check(pending)
                pending = []
                now = time.perf_counter()
                rate = (done - n_last) * cfg.data.batch_size / max(now - t_last, 1e-9)
                t_last, n_last = now, done
                for s, values in checked:
                    if (s + 1) % cfg.train.log_every == 0:
                        self._log({"step": s + 1, "phase": phase, **values, "images_per_s": rate})
                bar.set_postfix(loss=f"{checked[-1][1]['loss']:.4f}", img_s=f"{rate:.1f}",
                                phase=phase)
            if done == cfg.train.steps and cfg.quant.qat_steps > 0:
                self._compile_qat_step_ahead(batch)     # the steps were checked finite just above
            if qat and done == self.total_steps:
                self._end_qat()
            if validate:
                val = self.evaluate(self.state.variables, "val", "fake" if qat else "float")["metrics"]
                self._last_val = (done, val)
                self._log({"step": done, "phase": phase, "val": val})
                self._save(done, phase, val)
                t_last = time.perf_counter()
            elif save:
                self._save(done, phase)
                t_last = time.perf_counter()
        self.ckpts.wait()
        return self.state

    def report_checkpoints(self) -> list[Path]:
        """The step folders ``eval.py`` reproduces ``test_report``'s rows from: the current
        state (the latest checkpoint) and, after QAT, the end of the FP32 phase."""
        latest = self.ckpts.root / checkpoint.LAST / str(int(self.state.step))
        if int(self.state.step) > self.cfg.train.steps:
            return [latest, checkpoint.resolve(self.ckpts.root / "fp32")]
        return [latest]

    def test_report(self) -> dict[str, dict]:
        """Test metrics of the current state: FP32 (with LiDAR, median-scaled, monocular)
        and, after QAT, the PTQ min-max baseline and the QAT model in FP32 and INT8."""
        step, split = int(self.state.step), self.cfg.eval.split
        if step > self.cfg.train.steps:
            fp32_vars = self.ckpts.restore_named("fp32", self.state)[0].variables
            rows = self.evaluate.report(self.state.variables, split, int8=True,
                                        fp32_variables=fp32_vars, fp32_rows=self._fp32_rows)
        else:
            fp32_rows = self.evaluate.float_rows(self.state.variables, split)
            if step == self.cfg.train.steps:
                self._fp32_rows = fp32_rows      # the same weights' rows in the table after QAT
            rows = self.evaluate.report(self.state.variables, split, int8=False, fp32_rows=fp32_rows)
        if self.primary:
            (self.run_dir / "test_metrics.json").write_text(json.dumps(rows, indent=2))
        return rows
