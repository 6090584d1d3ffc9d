"""Output encodings: how depth is represented by the sigmoid heads.

Each encoding defines the number of head channels, ``encode`` (depth -> head targets),
``decode`` (head outputs -> depth in metres) and its ``loss``. Training, export and
evaluation all go through this module, so an encoding is defined in exactly one place.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import jax
import jax.numpy as jnp


class Encoding(Protocol):
    name: str
    channels: int
    min_depth: float
    max_depth: float

    def encode(self, depth: jax.Array) -> jax.Array: ...

    def decode(self, heads: jax.Array) -> jax.Array: ...

    def loss(self, heads: jax.Array, depth: jax.Array, mask: jax.Array) -> jax.Array: ...


def masked_mean(x: jax.Array, mask: jax.Array) -> jax.Array:
    """Mean of ``x`` over ``mask``; 0 when the mask is empty (no NaN)."""
    mask = mask.astype(x.dtype)
    return (x * mask).sum() / jnp.maximum(mask.sum(), 1.0)


@dataclass(frozen=True)
class InverseDepth:
    """Single head: depth = 1 / (1/max + (1/min - 1/max) * s)."""

    min_depth: float = 0.5
    max_depth: float = 15.0
    depth_weight: float = 0.5
    name: str = "inverse"
    channels: int = 1

    def encode(self, depth: jax.Array) -> jax.Array:
        lo, hi = 1.0 / self.max_depth, 1.0 / self.min_depth
        d = jnp.clip(depth, self.min_depth, self.max_depth)
        return ((1.0 / d - lo) / (hi - lo))[..., None]

    def decode(self, heads: jax.Array) -> jax.Array:
        lo, hi = 1.0 / self.max_depth, 1.0 / self.min_depth
        return 1.0 / (lo + (hi - lo) * heads[..., 0])

    def loss(self, heads: jax.Array, depth: jax.Array, mask: jax.Array) -> jax.Array:
        target = self.encode(depth)[..., 0]
        l_head = masked_mean(jnp.abs(heads[..., 0] - target), mask)
        l_depth = masked_mean(jnp.abs(self.decode(heads) - depth), mask)
        return l_head + self.depth_weight * l_depth


@dataclass(frozen=True)
class LogDepth:
    """Single head on a log scale: depth = min * (max / min) ** s.

    Uniform relative precision, the INT8-friendly single head: an 8-bit output over
    0.5-15 m has a step of ln(30) / 255 = 1.33 % of the depth at every distance (the
    inverse-depth head's step grows with d, to 7.6 % at 10 m). Loss: L1 on log depth.
    """

    min_depth: float = 0.5
    max_depth: float = 15.0
    name: str = "log"
    channels: int = 1

    @property
    def log_range(self) -> float:
        return math.log(self.max_depth / self.min_depth)

    def encode(self, depth: jax.Array) -> jax.Array:
        d = jnp.clip(depth, self.min_depth, self.max_depth)
        return (jnp.log(d / self.min_depth) / self.log_range)[..., None]

    def decode(self, heads: jax.Array) -> jax.Array:
        return self.min_depth * jnp.exp(heads[..., 0] * self.log_range)

    def loss(self, heads: jax.Array, depth: jax.Array, mask: jax.Array) -> jax.Array:
        target = self.encode(depth)[..., 0]
        return self.log_range * masked_mean(jnp.abs(heads[..., 0] - target), mask)


@dataclass(frozen=True)
class IntegerFraction:
    """Dual head: depth = max_depth * s_int + s_frac.

    Targets: s_int = floor(d) / max_depth, s_frac = d - floor(d). Loss (reference
    defaults) L1_int + 10 L1_frac + 0.5 L1(depth).
    """

    min_depth: float = 0.5
    max_depth: float = 15.0
    int_weight: float = 1.0
    frac_weight: float = 10.0
    depth_weight: float = 0.5
    name: str = "intfrac"
    channels: int = 2

    def encode(self, depth: jax.Array) -> jax.Array:
        d = jnp.clip(depth, 0.0, self.max_depth)
        whole = jnp.floor(d)
        return jnp.stack([whole / self.max_depth, d - whole], axis=-1)

    def decode(self, heads: jax.Array) -> jax.Array:
        return self.max_depth * heads[..., 0] + heads[..., 1]

    def loss(self, heads: jax.Array, depth: jax.Array, mask: jax.Array) -> jax.Array:
        target = self.encode(depth)
        l_int = masked_mean(jnp.abs(heads[..., 0] - target[..., 0]), mask)
        l_frac = masked_mean(jnp.abs(heads[..., 1] - target[..., 1]), mask)
        l_depth = masked_mean(jnp.abs(self.decode(heads) - depth), mask)
        return self.int_weight * l_int + self.frac_weight * l_frac + self.depth_weight * l_depth


ENCODINGS = {"inverse": InverseDepth, "log": LogDepth, "intfrac": IntegerFraction}


def get_encoding(model_cfg) -> Encoding:
    """The encoding named by a ``ModelConfig``, with its depth range and loss weights."""
    name = model_cfg.encoding
    if name == "inverse":
        return InverseDepth(model_cfg.min_depth, model_cfg.max_depth, model_cfg.depth_weight)
    if name == "log":
        return LogDepth(model_cfg.min_depth, model_cfg.max_depth)
    if name == "intfrac":
        return IntegerFraction(model_cfg.min_depth, model_cfg.max_depth, model_cfg.int_weight,
                               model_cfg.frac_weight, model_cfg.depth_weight)
    raise ValueError(f"model.encoding: unknown encoding {name!r}; choose one of {sorted(ENCODINGS)}")
