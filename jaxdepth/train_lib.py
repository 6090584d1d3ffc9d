"""Training state, optimizer, jitted train step and data-parallel sharding.

One code path for 1 or N devices: the batch is sharded over a 1-D ``data`` mesh of all
devices (multi-host ready: each host contributes its local slice), the state is
replicated, and XLA inserts the gradient and BatchNorm all-reduces.
"""
from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxdepth.config import Config
from jaxdepth.encodings import Encoding
from jaxdepth.metrics import valid_mask


@struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    batch_stats: Any
    quant: Any
    opt_state: Any

    @property
    def variables(self) -> dict:
        return {"params": self.params, "batch_stats": self.batch_stats, "quant": self.quant}


def learning_rate(cfg: Config) -> optax.Schedule:
    """FP32 phase: linear warm-up, then step decay at fractions of ``train.steps``;
    QAT phase: constant ``qat_lr``."""
    t = cfg.train
    fp32 = optax.piecewise_constant_schedule(
        t.lr, {int(f * t.steps): t.lr_decay for f in t.lr_boundaries})
    if t.warmup_steps > 0:
        warmup = optax.linear_schedule(0.0, t.lr, t.warmup_steps)
        fp32 = optax.join_schedules([warmup, fp32], [t.warmup_steps])
    if cfg.quant.qat_steps <= 0:
        return fp32
    return optax.join_schedules([fp32, optax.constant_schedule(cfg.quant.qat_lr)], [t.steps])


def make_optimizer(cfg: Config) -> optax.GradientTransformation:
    parts = []
    if cfg.train.grad_clip > 0:
        parts.append(optax.clip_by_global_norm(cfg.train.grad_clip))
    parts.append(optax.adamw(learning_rate(cfg), weight_decay=cfg.train.weight_decay))
    return optax.chain(*parts)


def init_state(model: nn.Module, optimizer: optax.GradientTransformation, seed: int,
               height: int, width: int) -> TrainState:
    rgb = jnp.zeros((1, height, width, 3), jnp.float32)
    lidar = jnp.zeros((1, height, width), jnp.float32)
    init = jax.jit(lambda key: model.init(key, rgb, lidar, train=False, all_scales=True))
    variables = init(jax.random.PRNGKey(seed))
    params = variables["params"]
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      batch_stats=variables["batch_stats"], quant=variables["quant"],
                      opt_state=optimizer.init(params))


def multiscale_loss(heads: list[jax.Array], depth: jax.Array, encoding: Encoding,
                    mask: jax.Array) -> jax.Array:
    """Mean of the encoding's loss over the scales, heads upsampled to full resolution."""
    b, h, w = depth.shape
    losses = []
    for head in heads:
        if head.shape[1:3] != (h, w):
            head = jax.image.resize(head, (b, h, w, head.shape[-1]), "bilinear")
        losses.append(encoding.loss(head, depth, mask))
    return sum(losses) / len(losses)


def make_train_step(model: nn.Module, encoding: Encoding, optimizer: optax.GradientTransformation,
                    cfg: Config, mesh: Mesh, qat: bool) -> Callable:
    """Jitted ``(state, batch) -> (state, stats)``.

    FP32: BatchNorm uses batch statistics; a share ``data.lidar_drop`` of the samples runs
    without LiDAR so the monocular path keeps working. QAT: BatchNorm is frozen and folded,
    the activation ranges follow an EMA of the batch min/max.
    """
    mutable = ["quant"] if qat else ["batch_stats"]
    base_key = jax.random.PRNGKey(cfg.train.seed)

    def loss_fn(params, state: TrainState, batch: dict):
        variables = {**state.variables, "params": params}
        has_lidar = None
        if not qat and cfg.data.lidar_drop > 0:
            key = jax.random.fold_in(base_key, state.step)
            has_lidar = jax.random.uniform(key, (batch["rgb"].shape[0],)) >= cfg.data.lidar_drop
        lidar = batch["lidar"] if cfg.model.sparse else None
        heads, updates = model.apply(variables, batch["rgb"], lidar, train=True, all_scales=True,
                                     has_lidar=has_lidar, mutable=mutable)
        mask = valid_mask(batch["depth"], encoding.min_depth, encoding.max_depth)
        return multiscale_loss(heads, batch["depth"], encoding, mask), updates

    def step(state: TrainState, batch: dict):
        (loss, updates), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, state, batch)
        upd, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, upd)
        new = state.replace(step=state.step + 1, params=params, opt_state=opt_state, **updates)
        return new, {"loss": loss, "grad_norm": optax.tree.norm(grads)}

    repl = NamedSharding(mesh, P())
    return jax.jit(step, in_shardings=(repl, batch_sharding(mesh)), out_shardings=(repl, repl),
                   donate_argnums=0)


def make_mesh() -> Mesh:
    return Mesh(np.array(jax.devices()), ("data",))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P("data"))


def shard_batch(batch: dict, mesh: Mesh) -> dict:
    """Host-local numpy batch -> global arrays sharded over ``data`` (multi-host safe)."""
    sharding = batch_sharding(mesh)
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(batch[k]))
            for k in ("rgb", "depth", "lidar")}


def replicate(tree: Any, mesh: Mesh) -> Any:
    return jax.device_put(tree, NamedSharding(mesh, P()))
