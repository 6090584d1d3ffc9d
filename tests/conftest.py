"""Shared fixtures: the persistent compilation cache and a tiny rendered data set."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(Path.home() / ".cache" / "jaxdepth" / "xla-tests"))

from jaxdepth.cli import setup_jax  # noqa: E402

setup_jax()

TINY_COUNTS = {"train": 16, "val": 4, "test": 6, "calib": 4}


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    from jaxdepth.data import generate_dataset

    root = tmp_path_factory.mktemp("data") / "synthetic"
    generate_dataset(root, height=64, width=96, counts=TINY_COUNTS, seed=3)
    return root


def tiny_overrides(data_root: Path, run_dir: Path, **extra: object) -> list[str]:
    """A ResNet-18 + SAN small enough to train a few steps on CPU in seconds."""
    base = {
        "data.root": str(data_root), "data.generate": False, "data.height": 32, "data.width": 64,
        "data.batch_size": 2, "data.workers": 1, "eval.batch_size": 4,
        "model.san_kernels": "[3,3,3,3,3]", "model.san_path_depths": "[1]",
        "model.decoder_channels": "[4,8,8,16,16]", "model.num_scales": 2,
        "train.steps": 4, "train.log_every": 1, "train.val_every": 2, "train.ckpt_every": 2,
        "train.run_dir": str(run_dir),
    }
    base.update({k.replace("__", "."): v for k, v in extra.items()})
    return [f"{k}={v}" for k, v in base.items()]


TINY_MODEL = dict(san_kernels=(3, 3, 3, 3, 3), san_path_depths=(1,), decoder_channels=(4, 8, 8, 16, 16))


@pytest.fixture(scope="session")
def tiny_model():
    """(model, variables) of a small ResNet-18 + SAN at 32x64, random weights."""
    import jax
    import jax.numpy as jnp

    from jaxdepth.config import ModelConfig
    from jaxdepth.models import build_model

    model = build_model(ModelConfig(**TINY_MODEL))
    init = jax.jit(lambda k: model.init(k, jnp.zeros((1, 32, 64, 3)), jnp.zeros((1, 32, 64)),
                                        all_scales=True))
    return model, init(jax.random.PRNGKey(0))


def tiny_cfg(data: Path, run: Path, **extra: object):
    from jaxdepth.config import load_config
    return load_config(None, tiny_overrides(data, run, **extra))


@pytest.fixture(scope="session")
def finished_run(tiny_data, tmp_path_factory):
    """A finished 4-step FP32 + 2-step QAT run of the tiny model, and its test report."""
    from jaxdepth.trainer import Trainer

    run = tmp_path_factory.mktemp("run")
    trainer = Trainer(tiny_cfg(tiny_data, run, quant__qat_steps=2), progress=False)
    trainer.fit()
    return trainer, trainer.test_report()
