"""Faults a long run meets: SIGKILL, damaged checkpoints, an unwritable or full disk."""
from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from conftest import tiny_cfg, tiny_overrides
from jaxdepth import checkpoint
from jaxdepth.config import ConfigError
from jaxdepth.trainer import Trainer

ROOT = Path(__file__).parents[1]


def _log(run: Path) -> list[dict]:
    path = run / "log.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.endswith("}")]


def _train(run: Path, overrides: list[str], kill_after_step: int | None) -> int:
    """Runs train.py on the config defaults plus ``overrides``; with ``kill_after_step``,
    SIGKILLs it once the log shows that step. Returns the last step the log showed."""
    defaults = run.parent / "defaults.yaml"
    defaults.write_text("{}\n")
    cmd = [sys.executable, "train.py", "--no-progress", "--config", str(defaults)]
    cmd += [a for o in overrides for a in ("--set", o)]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "tests")}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    try:
        while kill_after_step is not None and proc.poll() is None and time.monotonic() < deadline:
            steps = [r["step"] for r in _log(run) if "loss" in r]
            if steps and steps[-1] >= kill_after_step:
                os.kill(proc.pid, signal.SIGKILL)
                break
            time.sleep(0.02)
        _, err = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        if proc.poll() is None:
            proc.kill()
    if kill_after_step is None:
        assert proc.returncode == 0, err.decode()[-3000:]
    else:
        assert proc.returncode == -signal.SIGKILL, (proc.returncode, err.decode()[-3000:])
    return max([r["step"] for r in _log(run) if "loss" in r], default=0)


def _leaves(tree) -> dict[str, np.ndarray]:
    return {jax.tree_util.keystr(path): np.asarray(x)
            for path, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def test_sigkill_at_random_steps_then_restart_gives_the_uninterrupted_parameters(tiny_data, tmp_path):
    seed = int(os.environ.get("JAXDEPTH_FAULT_SEED", random.randrange(1 << 16)))
    rng = random.Random(seed)
    extra = dict(train__steps=6)
    straight = Trainer(tiny_cfg(tiny_data, tmp_path / "straight", **extra), progress=False)
    straight.fit()
    run = tmp_path / "killed"
    overrides = tiny_overrides(tiny_data, run, **extra)
    # SIGKILL once the log shows a random step after the first checkpoint (step 2), and
    # again after a later one: kills land in a step, a validation or a checkpoint write.
    reached = _train(run, overrides, kill_after_step=rng.randint(3, 4))
    if reached < 5:
        reached = _train(run, overrides, kill_after_step=rng.randint(reached + 1, 5))
    _train(run, overrides, kill_after_step=None)
    resumed_at = [r["step"] for r in _log(run) if r.get("event") == "resume"]
    assert resumed_at and max(resumed_at) <= reached, (seed, resumed_at, reached)
    state, _, step_dir = checkpoint.load(run / "checkpoints" / "last")
    assert step_dir.name == "6", seed
    for name in ("params", "batch_stats"):
        want, got = _leaves(getattr(straight.state, name)), _leaves(state[name])
        assert want.keys() == got.keys()
        assert all(np.array_equal(want[k], got[k]) for k in want), (seed, name)


def _corrupt(step_dir: Path, how: str) -> None:
    big = max((p for p in (step_dir / "state").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    data = big.read_bytes()
    if how == "truncated":
        big.write_bytes(data[:len(data) // 2])
    else:
        mid = len(data) // 2
        big.write_bytes(data[:mid] + bytes(64) + data[mid + 64:])


@pytest.mark.parametrize("how", ["truncated", "corrupted"])
def test_damaged_latest_checkpoint_falls_back_to_the_previous_one(finished_run, tiny_data, tmp_path,
                                                                  capsys, how):
    straight, _ = finished_run
    run = tmp_path / "damaged"
    shutil.copytree(straight.run_dir, run)
    _corrupt(run / "checkpoints" / "last" / "6", how)
    with pytest.raises(checkpoint.CheckpointError, match=r"does not match its recorded sha256"):
        checkpoint.load(run / "checkpoints" / "last" / "6")       # as eval.py and --init-from do
    resumed = Trainer(tiny_cfg(tiny_data, run, quant__qat_steps=2), progress=False)
    err = capsys.readouterr().err
    assert f"warning: checkpoint {run / 'checkpoints' / 'last' / '6'} is unreadable" in err
    assert int(resumed.state.step) == 4
    assert any(r.get("event") == "warning" and "is unreadable" in r["message"] for r in _log(run))
    if how == "truncated":
        return                      # training on from there is checked once, below
    resumed.fit()
    for a, b in zip(jax.tree.leaves(straight.state.variables), jax.tree.leaves(resumed.state.variables)):
        assert np.array_equal(np.asarray(a), np.asarray(b))


def test_unwritable_run_folder_is_an_error_before_any_work(tiny_data, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.raises(ConfigError, match=r"train\.run_dir: cannot write to .*a_file/run"):
        Trainer(tiny_cfg(tiny_data, blocker / "run"), progress=False)


def test_full_disk_is_an_error_before_training(tiny_data, tmp_path, monkeypatch):
    import jaxdepth.trainer as trainer_mod

    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(trainer_mod.shutil, "disk_usage", lambda _: usage._replace(free=10**6))
    run = tmp_path / "full"
    with pytest.raises(ConfigError, match=r"train\.run_dir: 1 MB free on the disk of .*full; this "
                                          r"run's checkpoints need about \d+ MB \(6 states of"):
        Trainer(tiny_cfg(tiny_data, run), progress=False)
    assert not (run / "checkpoints" / "last" / "2").exists()
