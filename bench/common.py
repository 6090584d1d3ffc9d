"""Shared timing helpers of the benchmark scripts."""
from __future__ import annotations

import argparse
import os
import platform
import time
from typing import Callable


def bench_args(doc: str, repeats: str = "steps",
               extra: Callable[[argparse.ArgumentParser], None] | None = None,
               huge_pages: bool = True) -> argparse.Namespace:
    """--config, --<repeats> (timed repetitions), --set of every benchmark, and the
    arguments ``extra`` adds; sets up the process as ``train.py`` does (JAX and, with
    ``huge_pages``, the huge-page malloc)."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/default.yaml")
    parser.add_argument(f"--{repeats}", type=int, default=5)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    if extra:
        extra(parser)
    args = parser.parse_args()
    from jaxdepth.cli import restart_with_huge_page_malloc, setup_jax
    if huge_pages:
        restart_with_huge_page_malloc()
    setup_jax()
    return args


def run_args(doc: str, target: str) -> argparse.Namespace:
    """``<target>`` (a run or checkpoint folder, default runs/default) and --split of the
    benchmarks that evaluate a trained model; sets up the process as ``eval.py`` does."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(target, nargs="?", default="runs/default")
    parser.add_argument("--split", default="test")
    args = parser.parse_args()
    from jaxdepth.cli import restart_with_huge_page_malloc, setup_jax
    restart_with_huge_page_malloc()
    setup_jax()
    return args


def machine() -> str:
    import jax
    return f"{platform.machine()} {platform.processor() or ''} {jax.device_count()}x {jax.devices()[0].platform}".replace("  ", " ")


def reference_config(config: str, overrides: list[str], shape: str, variant: str):
    """The config of the network ``bench/torch_reference.py`` rebuilds in PyTorch, at
    ``shape`` (HxWxB), RGB only (``variant`` "rgb") or with the SAN ("san"): the
    integer/fraction dual head and an inverse-depth LiDAR input without the fill channel."""
    from jaxdepth.config import load_config

    h, w, b = (int(v) for v in shape.split("x"))
    return load_config(config, overrides + [
        f"data.height={h}", f"data.width={w}", f"data.batch_size={b}", "model.encoding=intfrac",
        "model.fill_prior=false", "model.lidar_fill=false", "model.lidar_encoding=inverse",
        f"model.sparse={'true' if variant == 'san' else 'false'}"])


def random_batch(d) -> dict:
    """A fixed random batch (numpy) of the data config ``d``'s shape: RGB, depth and a LiDAR
    with returns on 5 % of the pixels."""
    import numpy as np

    b, h, w = d.batch_size, d.height, d.width
    rng = np.random.default_rng(0)
    return {"rgb": rng.random((b, h, w, 3), np.float32),
            "depth": rng.uniform(0.5, 15, (b, h, w)).astype(np.float32),
            "lidar": np.where(rng.random((b, h, w)) < 0.05, rng.uniform(0.5, 15, (b, h, w)), 0).astype(np.float32)}


def train_step_runner(cfg, qat: bool = False, options: dict | None = None) -> tuple[Callable[[], float], float]:
    """A function that runs one jitted train step (FP32 or QAT) on a fixed random batch of
    the config's shape and returns its loss, compiled with XLA ``options``; and the seconds
    the compilation and first step took."""

    from jaxdepth.encodings import get_encoding
    from jaxdepth.models import build_model, quant_for
    from jaxdepth.train_lib import init_state, make_mesh, make_optimizer, make_train_step, replicate, shard_batch

    d = cfg.data
    mesh = make_mesh()
    opt = make_optimizer(cfg)
    model = build_model(cfg.model, quant_for(cfg, "fake" if qat else "float"))
    state = replicate(init_state(build_model(cfg.model), opt, 0, d.height, d.width), mesh)
    batch = shard_batch(random_batch(d), mesh)
    t0 = time.perf_counter()
    step = make_train_step(model, get_encoding(cfg.model), opt, cfg, mesh, qat)
    step = step.lower(state, batch).compile(compiler_options=options)

    def run() -> float:
        nonlocal state
        state, stats = step(state, batch)
        return float(stats["loss"])

    run()
    return run, time.perf_counter() - t0


def alternating(fns: dict[str, Callable[[], object]], rounds: int) -> tuple[dict[str, list[float]], dict]:
    """Seconds of each call of ``rounds`` rounds that call every function in turn (A B C
    A B C ...), so that the machine's drift falls on all alike; and each one's last result."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    last = {}
    for _ in range(rounds):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            last[name] = fn()
            times[name].append(time.perf_counter() - t0)
    return times, last


def time_steps(cfg, steps: int, qat: bool = False) -> dict:
    """Median seconds of a jitted train step (FP32 or QAT) on random data of the config's shape."""
    import numpy as np

    run, compile_s = train_step_runner(cfg, qat)
    times = []
    cpu0 = os.times()
    for _ in range(steps):
        t0 = time.perf_counter()
        loss = run()
        times.append(time.perf_counter() - t0)
    cpu1 = os.times()
    d = cfg.data
    step_s = float(np.median(times))
    return {"height": d.height, "width": d.width, "batch": d.batch_size, "qat": qat,
            "last_loss": loss,
            "first_step_s": round(compile_s, 2), "step_s": round(step_s, 3),
            "images_per_s": round(d.batch_size / step_s, 2),
            # how many of the machine's cores the steps kept busy
            "cpu_s_per_s": round((cpu1.user + cpu1.system - cpu0.user - cpu0.system) / sum(times), 2)}
