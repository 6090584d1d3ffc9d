"""Training state, optimizer, jitted train step and data-parallel sharding.

One code path for 1 or N devices on 1 or N hosts: the batch is sharded over a 1-D
``data`` mesh of all devices (each process contributes the rows it loaded), the state is
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
from jaxdepth.encodings import Encoding, get_fill_prior, get_lidar_encoding
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
    """FP32 phase: linear warm-up from 0 over ``warmup_steps``, then ``lr`` times
    ``lr_decay`` per boundary passed (boundaries are fractions of ``train.steps``, counted
    from step 0); QAT phase: constant ``qat_lr``.

    Written as one function of the global step: ``optax.join_schedules`` would hand the
    later schedule ``step - warmup_steps`` and move every boundary by the warm-up.
    """
    t = cfg.train
    boundaries = jnp.array([int(f * t.steps) for f in t.lr_boundaries], jnp.int32)
    qat = cfg.quant.qat_steps > 0

    def schedule(step: jax.Array) -> jax.Array:
        step = jnp.asarray(step, jnp.int32)
        lr = t.lr * t.lr_decay ** jnp.sum(step >= boundaries)
        if t.warmup_steps > 0:
            lr = jnp.where(step < t.warmup_steps, t.lr * step / t.warmup_steps, lr)
        if qat:
            lr = jnp.where(step >= t.steps, cfg.quant.qat_lr, lr)
        return jnp.asarray(lr, jnp.float32)

    return schedule


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
    key = jax.random.PRNGKey(seed)
    init = jax.jit(lambda key: model.init(key, rgb, lidar, train=False, all_scales=True))
    # It runs once, in 0.2 s. XLA's backend optimisation level 1 compiled the default model's
    # init in 6 s instead of 16 s, to the same values bit for bit (2-core CPU, docs/speed.md).
    variables = init.lower(key).compile(compiler_options={"xla_backend_optimization_level": 1})(key)
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

    FP32: BatchNorm uses batch statistics. QAT: BatchNorm is frozen and folded, the
    activation ranges follow an EMA of the batch min/max. A model with a SAN trains both
    modes at every step (``train.mono_weight`` > 0): the loss of the RGB + LiDAR heads,
    plus ``mono_weight`` times the loss of the RGB-only heads, plus ``consistency_weight``
    times the gap of the RGB skips to the fused ones. In QAT the decoder's ranges thereby
    follow both modes, so the INT8 monocular model is trained too. With linear heads over
    the fill, ``correction_weight`` adds the finest head's loss in correction codes
    (``FillCorrection.code_loss``).
    """
    mutable = ["quant"] if qat else ["batch_stats"]
    t = cfg.train
    dual = cfg.model.sparse and t.mono_weight > 0
    prior = get_fill_prior(cfg.model)
    lidar_encoding = get_lidar_encoding(cfg.model)
    correction = prior is not None and t.correction_weight > 0

    def loss_fn(params, state: TrainState, batch: dict):
        variables = {**state.variables, "params": params}
        lidar = batch["lidar"] if cfg.model.sparse else None
        out, updates = model.apply(variables, batch["rgb"], lidar, train=True, all_scales=True,
                                   dual=dual, mutable=mutable)
        mask = valid_mask(batch["depth"], encoding.min_depth, encoding.max_depth)
        heads = out.lidar if dual else out
        loss = multiscale_loss(heads, batch["depth"], encoding, mask)
        parts = {"loss_lidar": loss} if dual or correction else {}
        if correction:
            parts["loss_correction"] = prior.code_loss(
                heads[0], encoding.encode(batch["depth"]), lidar_encoding.fill_channel(batch["lidar"]), mask)
            loss = loss + t.correction_weight * parts["loss_correction"]
        if dual:
            parts.update(loss_mono=multiscale_loss(out.mono, batch["depth"], encoding, mask),
                         consistency=out.consistency)
            loss = loss + t.mono_weight * parts["loss_mono"] + t.consistency_weight * parts["consistency"]
        return loss, (updates, {"loss": loss, **parts})

    def step(state: TrainState, batch: dict):
        (_, (updates, stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params, state, batch)
        upd, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, upd)
        new = state.replace(step=state.step + 1, params=params, opt_state=opt_state, **updates)
        return new, {**stats, "grad_norm": optax.tree.norm(grads)}

    repl = NamedSharding(mesh, P())
    return jax.jit(step, in_shardings=(repl, batch_sharding(mesh)), out_shardings=(repl, repl),
                   donate_argnums=0)


def make_mesh() -> Mesh:
    """All devices of all processes, grouped by process: process i's devices hold the
    i-th contiguous part of the batch, the rows its data pipeline loaded."""
    devices = sorted(jax.devices(), key=lambda d: (d.process_index, d.id))
    return Mesh(np.array(devices), ("data",))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P("data"))


def shard_batch(batch: dict, mesh: Mesh) -> dict:
    """Host-local numpy batch -> global arrays sharded over ``data`` (multi-host safe)."""
    sharding = batch_sharding(mesh)
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(batch[k]))
            for k in ("rgb", "depth", "lidar")}


def replicate(tree: Any, mesh: Mesh) -> Any:
    return jax.device_put(tree, NamedSharding(mesh, P()))
