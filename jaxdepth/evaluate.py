"""Jitted inference over a data split and the metric report (FP32 or fake-quant INT8)."""
from __future__ import annotations

import json
from functools import cached_property
from typing import Callable, Iterable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from jaxdepth.baselines import baseline_predictors, train_median_depth
from jaxdepth.config import Config
from jaxdepth.data.sources import eval_pipeline
from jaxdepth.encodings import Encoding, get_encoding
from jaxdepth.metrics import NAMES, MetricAccumulator, image_metrics
from jaxdepth.models import build_model, quant_for
from jaxdepth.models.layers import input_codes
from jaxdepth.quant.freeze import freeze


def _on_input_codes(model: nn.Module, fn: Callable, use_lidar: bool) -> Callable:
    """``fn`` of a fake-quant model fed inputs quantized by ``input_codes``, as the integer
    runtime's are, and the LiDAR in metres for the host's share (``host_lidar``)."""
    def run(variables, rgb, lidar):
        lidar = lidar if use_lidar else None
        q_rgb, q_sparse = input_codes(rgb, lidar, model.quant.scheme.activation, model.lidar_encoding)
        return fn(variables, q_rgb, q_sparse, lidar)
    return run


def make_predict(model: nn.Module, encoding: Encoding, use_lidar: bool) -> Callable:
    """``(variables, rgb, lidar) -> depth (B, H, W)`` from the scale-0 head, jitted.

    A fake-quant model runs on inputs quantized by ``input_codes``; give it the variables
    of ``quant.freeze`` to run the integer parameters the export holds.
    """
    @jax.jit
    def predict(variables, rgb, lidar, host_lidar=None):
        heads = model.apply(variables, rgb, lidar if use_lidar else None, train=False,
                            host_lidar=host_lidar)
        return encoding.decode(heads[0])

    return _on_input_codes(model, predict, use_lidar) if model.quant.fake else predict


def make_head_codes(model: nn.Module, use_lidar: bool) -> Callable:
    """``(variables, rgb, lidar) -> int32 output codes (B, H, W, C)`` of a fake-quant model
    (the codes its scale-0 head sows), comparable code for code with the integer forward's."""
    @jax.jit
    def codes(variables, rgb, lidar, host_lidar):
        _, state = model.apply(variables, rgb, lidar, train=False, host_lidar=host_lidar,
                               mutable=["intermediates"])
        (head_codes,) = jax.tree.leaves(state["intermediates"])
        return head_codes

    return _on_input_codes(model, codes, use_lidar)


def pad_batch(x: np.ndarray, n: int) -> np.ndarray:
    """Pads a partial last batch with zeros to n samples, so one compilation serves all."""
    if len(x) == n:
        return x
    return np.concatenate([x, np.zeros((n - len(x),) + x.shape[1:], x.dtype)])


def evaluate(predict: Callable, variables: dict, batches: Iterable[dict], batch_size: int,
             encoding: Encoding, garg_crop: bool = False, median_scaling: bool = True) -> dict:
    """Metrics over all batches; the last partial batch is padded (no recompilation)."""
    metric_fn = jax.jit(image_metrics, static_argnums=(2, 3, 4, 5))
    plain, scaled = MetricAccumulator(), MetricAccumulator()
    for batch in batches:
        n = len(batch["rgb"])
        depth = predict(variables, pad_batch(batch["rgb"], batch_size), pad_batch(batch["lidar"], batch_size))
        gt = jnp.asarray(pad_batch(batch["depth"], batch_size))
        args = (encoding.min_depth, encoding.max_depth, garg_crop)
        m, ok = metric_fn(depth, gt, *args, False)
        plain.add(np.asarray(m)[:n], np.asarray(ok)[:n])
        if median_scaling:
            m, ok = metric_fn(depth, gt, *args, True)
            scaled.add(np.asarray(m)[:n], np.asarray(ok)[:n])
    out = {"metrics": plain.result()}
    if median_scaling:
        out["median_scaled"] = scaled.result()
    return out


class Evaluator:
    """The models of one config in FP32 and fake-quant INT8, with cached jitted predictors."""

    def __init__(self, cfg: Config, progress: bool = False) -> None:
        self.cfg = cfg
        self.progress = progress
        self.encoding = get_encoding(cfg.model)
        self.models = {m: build_model(cfg.model, quant_for(cfg, m)) for m in ("float", "fake")}
        self._predict: dict[tuple[str, bool], Callable] = {}
        self._baselines: dict[str, dict[str, dict]] = {}

    def predictor(self, mode: str, use_lidar: bool) -> Callable:
        key = (mode, use_lidar)
        if key not in self._predict:
            self._predict[key] = make_predict(self.models[mode], self.encoding, use_lidar)
        return self._predict[key]

    @cached_property
    def train_median(self) -> float:
        """The constant baseline's depth: one pass over the train split per evaluator."""
        return train_median_depth(self.cfg)

    def baselines(self, split: str) -> dict[str, dict]:
        """Rows of the predictors without a network, on the batches the network sees;
        computed once per split, as they depend on nothing else."""
        cfg = self.cfg
        if split not in self._baselines:
            self._baselines[split] = {
                name: evaluate(predict, {}, eval_pipeline(cfg, split).epoch(0), cfg.eval.batch_size,
                               self.encoding, cfg.eval.garg_crop, median_scaling=False)["metrics"]
                for name, predict in baseline_predictors(cfg, self.train_median).items()
            }
        return self._baselines[split]

    def __call__(self, variables: dict, split: str, mode: str = "float",
                 use_lidar: bool | None = None) -> dict:
        cfg = self.cfg
        use_lidar = cfg.model.sparse if use_lidar is None else use_lidar
        pipeline = eval_pipeline(cfg, split)
        batches = tqdm(pipeline.epoch(0), total=pipeline.steps_per_epoch, disable=not self.progress,
                       leave=False, dynamic_ncols=True,
                       desc=f"{split} {mode}{'' if use_lidar else ' monocular'}")
        if mode == "fake":
            variables = freeze(self.models["fake"], variables, use_lidar)
        return evaluate(self.predictor(mode, use_lidar), variables, batches,
                        cfg.eval.batch_size, self.encoding, cfg.eval.garg_crop, cfg.eval.median_scaling)

    def float_rows(self, variables: dict, split: str) -> dict[str, dict]:
        """The report's FP32 rows: with LiDAR, median-scaled and, with a SAN, monocular."""
        full = self(variables, split, "float")
        rows = {"fp32": full["metrics"]}
        if "median_scaled" in full:
            rows["fp32 median-scaled"] = full["median_scaled"]
        if self.cfg.model.sparse:
            rows["fp32 monocular"] = self(variables, split, "float", use_lidar=False)["metrics"]
        return rows

    def report(self, variables: dict, split: str, int8: bool, fp32_variables: dict | None = None,
               fp32_rows: dict[str, dict] | None = None) -> dict:
        """Rows of the standard table, the baselines without a network last. ``fp32_variables``:
        the FP32 model a QAT run started from; its PTQ min-max INT8 row is the baseline QAT must
        beat. ``fp32_rows``: ``float_rows`` of that model on this split, when already computed."""
        base = fp32_variables if fp32_variables is not None else variables
        rows = dict(fp32_rows) if fp32_rows is not None else self.float_rows(base, split)
        if fp32_variables is not None:
            rows["int8 ptq min-max"] = self(fp32_variables, split, "fake")["metrics"]
            rows["qat weights in fp32"] = self(variables, split, "float")["metrics"]
        if int8:
            rows["int8 qat" if fp32_variables is not None else "int8 fake-quant"] = \
                self(variables, split, "fake")["metrics"]
        rows.update(self.baselines(split))
        return rows


def format_table(rows: dict[str, dict]) -> str:
    """A fixed-width table: one row per named result, one column per metric."""
    head = f"{'':<28}" + "".join(f"{k:>10}" for k in NAMES) + f"{'images':>8}"
    lines = [head, "-" * len(head)]
    for name, m in rows.items():
        lines.append(f"{name:<28}" + "".join(f"{m[k]:>10.4f}" for k in NAMES) + f"{m['images']:>8d}")
    skipped = {n: m["skipped_images"] for n, m in rows.items() if m.get("skipped_images")}
    if skipped:
        lines.append("images without a valid pixel (skipped): " + json.dumps(skipped))
    return "\n".join(lines)
