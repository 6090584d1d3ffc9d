"""End to end: train a tiny model, evaluate it, resume, stop on NaN, data parallelism."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import numpy as np
import pytest

from conftest import tiny_cfg, tiny_overrides
from jaxdepth import checkpoint
from jaxdepth.config import load_config
from jaxdepth.trainer import NonFiniteLoss, Trainer

ROOT = Path(__file__).parents[1]


def test_run_writes_log_checkpoints_and_metrics(finished_run):
    trainer, rows = finished_run
    log = [json.loads(l) for l in (trainer.run_dir / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "val" in r] == [2, 4, 6]
    assert [r["step"] for r in log if "loss" in r] == list(range(1, 7))
    # Every step trains both modes: the RGB + LiDAR and the RGB-only pass, and the pull
    # of the RGB skips towards the fused ones.
    for r in (r for r in log if "loss" in r):
        parts = r["loss_lidar"] + r["loss_mono"] + 0.1 * r["consistency"]
        assert r["consistency"] > 0 and r["loss"] == pytest.approx(parts, rel=1e-5)
    assert any(r.get("event") == "ptq_calibrated" for r in log)
    assert int(trainer.state.step) == 6
    assert set(rows) == {"fp32", "fp32 median-scaled", "fp32 monocular", "int8 ptq min-max",
                         "qat weights in fp32", "int8 qat", "lidar nearest fill", "constant"}
    for m in rows.values():
        assert m["images"] == 6 and m["skipped_images"] == 0
        assert 0.0 < m["abs_rel"] < 10.0 and 0.0 <= m["a1"] <= 1.0
    assert checkpoint.resolve(trainer.run_dir).parent.name == "best_qat"
    assert json.loads((trainer.run_dir / "test_metrics.json").read_text()) == rows
    # QAT ended with its weights on their INT8 grid: putting them there again moves nothing.
    from jaxdepth.quant.freeze import weights_on_grid

    params = trainer.state.params
    again = weights_on_grid(trainer.models["fake"], trainer.state.variables)["params"]
    for a, b in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(again)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-8)


def test_eval_cli_reproduces_the_training_report(finished_run, tmp_path, capsys):
    trainer, rows = finished_run
    sys.path.insert(0, str(ROOT))
    import eval as eval_cli

    latest, fp32 = trainer.report_checkpoints()
    assert (latest.parent.name, latest.name, fp32.parent.name, fp32.name) == ("last", "6", "fp32", "4")
    out = tmp_path / "m.json"
    assert eval_cli.main([str(latest), "--json", str(out)]) == 0
    results = json.loads(out.read_text())["results"]
    assert results["int8 fake-quant"] == pytest.approx(rows["int8 qat"], rel=1e-6)
    assert results["fp32"] == pytest.approx(rows["qat weights in fp32"], rel=1e-6)
    captured = capsys.readouterr()
    assert "int8 fake-quant" in captured.out
    assert "test float" in captured.err                 # progress bars
    assert eval_cli.main([str(fp32), "--json", str(out), "--no-progress"]) == 0
    results = json.loads(out.read_text())["results"]
    for ours, reported in [("fp32", "fp32"), ("fp32 median-scaled", "fp32 median-scaled"),
                           ("fp32 monocular", "fp32 monocular"), ("int8 fake-quant", "int8 ptq min-max")]:
        assert results[ours] == pytest.approx(rows[reported], rel=1e-6)
    assert "test float" not in capsys.readouterr().err


def test_train_cli_prints_fp32_results_before_qat_then_the_int8_table(tiny_data, tmp_path, capsys):
    sys.path.insert(0, str(ROOT))
    import train as train_cli

    overrides = tiny_overrides(tiny_data, tmp_path / "cli", quant__qat_steps=2)
    assert train_cli.main([a for o in overrides for a in ("--set", o)] + ["--no-progress"]) == 0
    out = capsys.readouterr().out
    fp32_part, final = out.split("end of the FP32 phase", 1)[1].split("\ntest split", 1)
    assert "fp32 monocular" in fp32_part and "int8" not in fp32_part
    assert "int8 ptq min-max" in final and "int8 qat" in final
    row = lambda text: next(l for l in text.splitlines() if l.startswith("fp32 "))
    assert row(fp32_part) == row(final)          # the same FP32 weights, reported twice
    hint = final.split("evaluate again: ", 1)[1].split()
    run = tmp_path / "cli" / "checkpoints"
    assert hint == ["python", "eval.py", str(run / "last" / "6"), "python", "eval.py", str(run / "fp32" / "4")]


class Interrupt(Exception):
    pass


@pytest.mark.parametrize("crash_at,resume_at", [(3, 2), (5, 4)])
def test_resume_after_interruption_matches_uninterrupted_run(finished_run, tiny_data, tmp_path,
                                                             monkeypatch, crash_at, resume_at):
    # The uninterrupted run compiled its QAT step in the background at the end of the FP32
    # phase. Resumed at step 2, the run does the same; resumed at step 4 (the first QAT
    # step), it compiles the QAT step on first use. Both end where the uninterrupted run did.
    straight, _ = finished_run
    assert straight._steps[True] is straight._qat_step_ahead.result()
    cfg = tiny_cfg(tiny_data, tmp_path / "b", quant__qat_steps=2)
    first = Trainer(cfg, progress=False)
    real_step = first._train_step(False)
    calls = {"n": 0}

    def crashing(state, batch):
        calls["n"] += 1
        if calls["n"] == crash_at:
            raise Interrupt
        return real_step(state, batch)

    monkeypatch.setattr(first, "_train_step", lambda qat: crashing)
    with pytest.raises(Interrupt):
        first.fit()
    resumed = Trainer(cfg, progress=False)
    assert int(resumed.state.step) == resume_at
    resumed.fit()
    assert int(resumed.state.step) == 6
    assert (resumed._qat_step_ahead is None) == (resume_at == 4)
    for a, b in zip(jax.tree.leaves(straight.state.variables), jax.tree.leaves(resumed.state.variables)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)


def test_nan_stops_and_keeps_last_good_checkpoint(tiny_data, tmp_path, monkeypatch):
    # Checked every 4 steps and before each checkpoint: the NaN of step 2 is seen at step 4.
    trainer = Trainer(tiny_cfg(tiny_data, tmp_path / "n", quant__qat_steps=2, train__log_every=4),
                      progress=False)
    import jaxdepth.trainer as trainer_mod

    real_shard = trainer_mod.shard_batch
    calls = {"n": 0}

    def poisoned(batch, mesh):
        calls["n"] += 1
        if calls["n"] == 3:
            batch = {**batch, "rgb": np.full_like(batch["rgb"], np.nan)}
        return real_shard(batch, mesh)

    monkeypatch.setattr(trainer_mod, "shard_batch", poisoned)
    with pytest.raises(NonFiniteLoss, match="step 2"):
        trainer.fit()
    state, meta, step_dir = checkpoint.load(tmp_path / "n" / "checkpoints" / "last")
    assert step_dir.name == "2"
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(state["params"]))


class _Probe:
    """A step statistic that records how many steps had been dispatched when the host read it."""

    def __init__(self, value, reads: list, dispatched: list) -> None:
        self.value, self.reads, self.dispatched = value, reads, dispatched

    def __array__(self, dtype=None, copy=None):
        self.reads.append(self.dispatched[0])
        return np.asarray(self.value, dtype)


def test_loop_reads_step_stats_every_log_every_steps_not_every_step(tiny_data, tmp_path, monkeypatch):
    trainer = Trainer(tiny_cfg(tiny_data, tmp_path / "s", quant__qat_steps=2, train__log_every=4,
                               train__val_every=4, train__ckpt_every=4), progress=False)
    real_step = trainer._train_step(False)
    dispatched, reads = [0], []

    def step(state, batch):
        dispatched[0] += 1
        state, stats = real_step(state, batch)
        return state, {k: _Probe(v, reads, dispatched) for k, v in stats.items()}

    monkeypatch.setattr(trainer, "_train_step", lambda qat: step)
    trainer.fit(stop_at=4)
    assert dispatched[0] == 4 and set(reads) == {4}
    log = [json.loads(l) for l in (trainer.run_dir / "log.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in log if "loss" in r]
    assert len(losses) == 1 and 0.0 < losses[0] < 100.0


def test_init_from_checkpoint(finished_run, tiny_data, tmp_path):
    trainer, _ = finished_run
    qat = Trainer(tiny_cfg(tiny_data, tmp_path / "q", train__steps=0, quant__qat_steps=1),
                  init_from=str(trainer.run_dir / "checkpoints" / "last"), progress=False)
    src = jax.tree.leaves(trainer.state.params)
    dst = jax.tree.leaves(qat.state.params)
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(src, dst))
    assert int(qat.state.step) == 0


TWO_DEVICES = textwrap.dedent("""
    import jax, numpy as np, optax
    from jax.sharding import Mesh
    from conftest import tiny_overrides
    from jaxdepth.config import load_config
    from jaxdepth.encodings import get_encoding
    from jaxdepth.models import build_model
    from jaxdepth.train_lib import init_state, make_train_step, replicate, shard_batch
    assert jax.device_count() == 2
    cfg = load_config(None, tiny_overrides("unused", "unused"))
    # Plain SGD: its update is linear in the gradient, so the comparison is not dominated
    # by Adam's first step, which turns any tiny gradient into a full +-lr update.
    model, opt = build_model(cfg.model), optax.sgd(0.01)
    rng = np.random.default_rng(0)
    batch = {"rgb": rng.random((2, 32, 64, 3), np.float32),
             "depth": rng.uniform(0.6, 14, (2, 32, 64)).astype(np.float32),
             "lidar": np.where(rng.random((2, 32, 64)) < 0.05, 3.0, 0.0).astype(np.float32)}
    out = []
    for n in (1, 2):
        mesh = Mesh(np.array(jax.devices()[:n]), ("data",))
        state = replicate(init_state(model, opt, 0, 32, 64), mesh)
        step = make_train_step(model, get_encoding(cfg.model), opt, cfg, mesh, qat=False)
        state, stats = step(state, shard_batch(batch, mesh))
        assert len(state.params["encoder"]["conv1"]["kernel"].sharding.device_set) == n
        out.append((float(stats["loss"]), jax.tree.map(np.asarray, (state.params, state.batch_stats))))
    (l1, t1), (l2, t2) = out
    assert abs(l1 - l2) < 1e-5 * abs(l1), (l1, l2)
    for a, b in zip(jax.tree.leaves(t1), jax.tree.leaves(t2)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    print("ok", l1, l2)
""")


def test_two_device_step_equals_one_device_step():
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
           "PYTHONPATH": str(ROOT / "tests")}
    proc = subprocess.run([sys.executable, "-c", TWO_DEVICES], env=env, capture_output=True,
                          text=True, timeout=600, cwd=ROOT / "tests")
    assert proc.returncode == 0, proc.stderr[-6000:]
    assert proc.stdout.startswith("ok")


def test_linear_heads_add_the_correction_loss_in_z(tiny_data, tmp_path):
    """With linear heads over the fill, the step adds ``correction_weight`` times the
    finest head's L1 in correction codes; at the zero-initialised head (z = 0) that is
    the mean |z| of the targets."""
    from jaxdepth.encodings import get_encoding, get_fill_prior, get_lidar_encoding
    from jaxdepth.metrics import valid_mask
    from jaxdepth.models import build_model
    from jaxdepth.train_lib import init_state, make_mesh, make_optimizer, make_train_step, replicate, shard_batch
    from jaxdepth.data.sources import eval_pipeline

    cfg = tiny_cfg(tiny_data, tmp_path, model__encoding="log", model__lidar_encoding="log",
                   model__lidar_fill=True, model__fill_prior=True, model__correction_curve=5.0,
                   train__correction_weight=0.5)
    mesh, opt, model, enc = make_mesh(), make_optimizer(cfg), build_model(cfg.model), get_encoding(cfg.model)
    state = replicate(init_state(model, opt, 0, cfg.data.height, cfg.data.width), mesh)
    batch = {k: v[:2] for k, v in next(iter(eval_pipeline(cfg, "train").epoch(0))).items()
             if k in ("rgb", "depth", "lidar")}
    _, stats = make_train_step(model, enc, opt, cfg, mesh, qat=False)(state, shard_batch(batch, mesh))
    stats = {k: float(v) for k, v in stats.items()}
    t = cfg.train
    want = (stats["loss_lidar"] + 0.5 * stats["loss_correction"] + t.mono_weight * stats["loss_mono"]
            + t.consistency_weight * stats["consistency"])
    assert stats["loss"] == pytest.approx(want, rel=1e-5)
    prior = get_fill_prior(cfg.model)
    fill = get_lidar_encoding(cfg.model).fill_channel(batch["lidar"])
    z = np.abs(np.asarray(prior.compress(enc.encode(batch["depth"]) - prior.a * fill - prior.b)))[..., 0]
    mask = np.asarray(valid_mask(batch["depth"], enc.min_depth, enc.max_depth))
    assert stats["loss_correction"] == pytest.approx(z[mask].mean(), rel=1e-4) and z[mask].mean() > 0.01


def test_learning_rate_changes_at_the_configured_steps():
    from jaxdepth.train_lib import learning_rate

    # The default run: warm-up over 50 steps, decays at 71.2 % and 96 % of 520 steps, QAT after.
    cfg = load_config(ROOT / "configs" / "default.yaml")
    assert cfg.train.steps == 520 and cfg.quant.qat_steps == 40
    lr = learning_rate(cfg)
    at = lambda step: float(lr(step))
    assert (at(0), at(25), at(49)) == pytest.approx((0.0, 0.001, 0.002 * 49 / 50))
    assert (at(50), at(369)) == pytest.approx((0.002, 0.002))
    assert (at(370), at(498)) == pytest.approx((0.0006, 0.0006))       # int(0.712 * 520)
    assert (at(499), at(519)) == pytest.approx((0.00018, 0.00018))     # int(0.96 * 520)
    assert (at(520), at(559)) == pytest.approx((0.0001, 0.0001))       # quant.qat_lr
    # Boundaries before the end of the warm-up apply as soon as the warm-up ends.
    early = learning_rate(load_config(None, ["train.steps=100", "train.warmup_steps=30",
                                             "train.lr_boundaries=[0.2, 0.5]", "train.lr=1.0"]))
    assert [float(early(s)) for s in (19, 20, 29, 30, 49, 50)] == pytest.approx(
        [19 / 30, 20 / 30, 29 / 30, 0.3, 0.3, 0.09])


@pytest.mark.parametrize("progress", [False, True])
def test_no_progress_also_silences_the_data_rendering_bar(tmp_path, capsys, progress):
    counts = "{train: 2, val: 1, test: 1, calib: 1}"
    cfg = tiny_cfg(tmp_path / "data", tmp_path / "run", data__generate=True, data__gen_height=32,
                   data__gen_width=64, data__gen_counts=counts)
    Trainer(cfg, progress=progress)
    assert (tmp_path / "data" / "meta.json").is_file()
    assert ("synthetic data" in capsys.readouterr().err) == progress


RESTART = textwrap.dedent("""
    import os, sys
    from jaxdepth.cli import restart_with_huge_page_malloc
    print(os.getpid(), os.environ.get("GLIBC_TUNABLES"), sys.argv[1:], flush=True)
    restart_with_huge_page_malloc()
    print("ran", flush=True)
""")


KEPT = "glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=68719476736"


@pytest.mark.parametrize("env, tunables", [
    ({}, f"glibc.malloc.hugetlb=1:{KEPT}"),
    ({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}, f"glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1:{KEPT}"),
    ({"GLIBC_TUNABLES": "glibc.malloc.mmap_max=4"},
     "glibc.malloc.mmap_max=4:glibc.malloc.hugetlb=1:glibc.malloc.trim_threshold=68719476736"),
    ({"JAXDEPTH_HUGE_PAGES": "0"}, None),
])
def test_commands_restart_once_with_huge_page_malloc(tmp_path, env, tunables):
    import platform

    script = tmp_path / "cmd.py"
    script.write_text(RESTART)
    base = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "JAXDEPTH_HUGE_PAGES")}
    out = subprocess.run([sys.executable, "-u", str(script), "--flag", "x"], env={**base, **env},
                         cwd=ROOT, capture_output=True, text=True, check=True).stdout.splitlines()
    first = f"{env.get('GLIBC_TUNABLES')} ['--flag', 'x']"
    if tunables is None or platform.libc_ver()[0] != "glibc":
        assert [line.split(" ", 1)[1] for line in out[:1]] == [first] and out[1:] == ["ran"]
        return
    # The same process (exec keeps the pid) with the same arguments, then the command runs once.
    (pid0, rest0), (pid1, rest1) = (line.split(" ", 1) for line in out[:2])
    assert pid0 == pid1 and rest0 == first and rest1 == f"{tunables} ['--flag', 'x']"
    assert out[2:] == ["ran"]


DISPATCH = ("from jaxdepth.cli import setup_jax; setup_jax(); import jax; "
            "print(jax.config.values['jax_cpu_enable_async_dispatch'])")


@pytest.mark.parametrize("tunables, asynchronous", [(None, "True"), (f"glibc.malloc.hugetlb=1:{KEPT}", "False")])
def test_setup_jax_runs_steps_on_the_calling_thread_under_the_kept_malloc(tunables, asynchronous):
    env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
    if tunables:
        env["GLIBC_TUNABLES"] = tunables
    out = subprocess.run([sys.executable, "-c", DISPATCH], env=env, cwd=ROOT, capture_output=True,
                         text=True, check=True).stdout.split()
    assert out[-1] == asynchronous


KERNELS = textwrap.dedent("""
    import train  # the command's imports, before setup_jax as in its main()
    from jaxdepth.cli import setup_jax
    setup_jax()
    import jax, jax.numpy as jnp

    conv = jax.jit(lambda x, w: jax.lax.conv_general_dilated(x, w, (1, 1), "SAME",
                                                           dimension_numbers=("NHWC", "HWIO", "NHWC")))
    dot = jax.jit(lambda a, b: a @ b)
    for f, args in ((conv, (jnp.ones((8, 64, 64, 32)), jnp.ones((3, 3, 32, 32)))),
                    (dot, (jnp.ones((256, 256)), jnp.ones((256, 256))))):
        print("__ynn_fusion" in f.lower(*args).compile().as_text())
""")


@pytest.mark.parametrize("flags, on_ynnpack", [
    ("", ["False", "True"]),
    ("--xla_cpu_experimental_ynn_fusion_type=LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION", ["True", "False"]),
])
def test_setup_jax_leaves_convolutions_to_eigen(flags, on_ynnpack):
    """Convolutions on XLA's Eigen kernels, dots still on YNNPACK, even after the command's
    imports; a user's own choice of YNNPACK fusions in XLA_FLAGS wins."""
    env = {**os.environ, "XLA_FLAGS": flags, "JAX_PLATFORMS": "cpu"}
    out = subprocess.run([sys.executable, "-c", KERNELS], env=env, cwd=ROOT, capture_output=True,
                         text=True, check=True).stdout.split()
    assert out == on_ynnpack      # conv, dot
