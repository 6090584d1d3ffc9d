"""Multi-host data parallelism: two processes, one CPU device each, coordinator on localhost."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np

from conftest import tiny_cfg, tiny_overrides
from jaxdepth.trainer import Trainer

ROOT = Path(__file__).parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def test_two_processes_take_the_single_process_step(tiny_data, tmp_path):
    multi = tmp_path / "two_processes"
    extra = dict(train__steps=1, data__batch_size=4)
    defaults = tmp_path / "defaults.yaml"          # the config defaults, as tiny_cfg
    defaults.write_text("{}\n")
    cmd = [sys.executable, "train.py", "--no-progress", "--config", str(defaults),
           "--coordinator", f"localhost:{_free_port()}", "--num-processes", "2"]
    cmd += [a for o in tiny_overrides(tiny_data, multi, **extra) for a in ("--set", o)]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "tests"), "XLA_FLAGS": "",
           "JAX_PLATFORMS": "cpu"}
    procs = [subprocess.Popen(cmd + ["--process-id", str(i)], cwd=ROOT, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(2)]
    try:
        outs = [p.communicate(timeout=300) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-4000:]
    assert "test split 'test' (step 1)" in outs[0][0]
    assert "test split" not in outs[1][0]                 # only process 0 reports
    log = [json.loads(line) for line in (multi / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "loss" in r] == [1]  # only process 0 logs

    single = Trainer(tiny_cfg(tiny_data, tmp_path / "one_process", **extra), progress=False)
    single.fit()
    one_log = [json.loads(line) for line in (single.run_dir / "log.jsonl").read_text().splitlines()]
    loss = lambda records: next(r["loss"] for r in records if "loss" in r)
    assert abs(loss(log) - loss(one_log)) < 1e-5 * loss(one_log)
    # The two-process checkpoint, read back by one process: the same gradient (Adam's
    # moments are linear in it), the same BatchNorm statistics of the global batch.
    # Adam's first update is +-lr wherever the gradient is not ~0, so the parameters agree
    # wherever the moments do not sit at rounding level.
    restored = Trainer(tiny_cfg(tiny_data, multi, **extra), progress=False).state
    assert int(restored.step) == 1
    for name in ("opt_state", "batch_stats"):
        for a, b in zip(jax.tree.leaves(getattr(single.state, name)), jax.tree.leaves(getattr(restored, name))):
            a, b = np.asarray(a), np.asarray(b)      # float32 sums in another order
            np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5 * np.abs(a).max())
    differ = [np.mean(np.abs(np.asarray(a) - np.asarray(b)) > 1e-6)
              for a, b in zip(jax.tree.leaves(single.state.params), jax.tree.leaves(restored.params))]
    assert max(differ) < 0.01, max(differ)
