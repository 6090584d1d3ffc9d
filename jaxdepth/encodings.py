"""Depth encodings: how depth is represented by the sigmoid heads, and the LiDAR input.

Each encoding defines the number of head channels, ``encode`` (depth -> head targets),
``decode`` (head outputs -> depth in metres), its ``loss`` and the names of its head
channels (the ONNX outputs). Training, export and evaluation all go through this module,
so an encoding is defined in exactly one place. ``decode`` accepts any finite head values,
inconsistent or outside [0, 1] (a noisy network, a saturated code), and always returns a
finite depth inside [min_depth, max_depth].
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Protocol

import jax
import jax.numpy as jnp


class Encoding(Protocol):
    name: str
    channels: int
    min_depth: float
    max_depth: float
    head_names: tuple[str, ...]

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
    head_names: tuple[str, ...] = ("depth_inverse",)

    def encode(self, depth: jax.Array) -> jax.Array:
        lo, hi = 1.0 / self.max_depth, 1.0 / self.min_depth
        d = jnp.clip(depth, self.min_depth, self.max_depth)
        return ((1.0 / d - lo) / (hi - lo))[..., None]

    def decode(self, heads: jax.Array) -> jax.Array:
        lo, hi = 1.0 / self.max_depth, 1.0 / self.min_depth
        depth = 1.0 / (lo + (hi - lo) * jnp.clip(heads[..., 0], 0.0, 1.0))   # s < 0 would flip the sign
        return jnp.clip(depth, self.min_depth, self.max_depth)                  # float32 rounding at the ends

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
    head_names: tuple[str, ...] = ("depth_log",)

    @property
    def log_range(self) -> float:
        return math.log(self.max_depth / self.min_depth)

    def encode(self, depth: jax.Array) -> jax.Array:
        d = jnp.clip(depth, self.min_depth, self.max_depth)
        return (jnp.log(d / self.min_depth) / self.log_range)[..., None]

    def decode(self, heads: jax.Array) -> jax.Array:
        return jnp.clip(self.min_depth * jnp.exp(heads[..., 0] * self.log_range), self.min_depth, self.max_depth)

    def loss(self, heads: jax.Array, depth: jax.Array, mask: jax.Array) -> jax.Array:
        target = self.encode(depth)[..., 0]
        return self.log_range * masked_mean(jnp.abs(heads[..., 0] - target), mask)


@dataclass(frozen=True)
class IntegerFraction:
    """Dual head: depth = max_depth * s_int + s_frac, clamped to [min_depth, max_depth].

    Targets: s_int = floor(d) / max_depth, s_frac = d - floor(d). Loss (reference
    defaults) L1_int + 10 L1_frac + 0.5 L1(depth). The reference's definition, kept as is:
    its integer target is a staircase and one integer code is max_depth / 255 m.
    """

    min_depth: float = 0.5
    max_depth: float = 15.0
    int_weight: float = 1.0
    frac_weight: float = 10.0
    depth_weight: float = 0.5
    name: str = "intfrac"
    channels: int = 2
    head_names: tuple[str, ...] = ("int", "frac")

    def encode(self, depth: jax.Array) -> jax.Array:
        d = jnp.clip(depth, 0.0, self.max_depth)
        whole = jnp.floor(d)
        return jnp.stack([whole / self.max_depth, d - whole], axis=-1)

    def decode(self, heads: jax.Array) -> jax.Array:
        return jnp.clip(self.max_depth * heads[..., 0] + heads[..., 1], self.min_depth, self.max_depth)

    def loss(self, heads: jax.Array, depth: jax.Array, mask: jax.Array) -> jax.Array:
        target = self.encode(depth)
        l_int = masked_mean(jnp.abs(heads[..., 0] - target[..., 0]), mask)
        l_frac = masked_mean(jnp.abs(heads[..., 1] - target[..., 1]), mask)
        l_depth = masked_mean(jnp.abs(self.decode(heads) - depth), mask)
        return self.int_weight * l_int + self.frac_weight * l_frac + self.depth_weight * l_depth


def _norm(dx: jax.Array, dy: jax.Array) -> jax.Array:
    """Euclidean norm of (dx, dy) with a zero gradient, not NaN, where it is 0."""
    r2 = dx * dx + dy * dy
    nonzero = r2 > 0.0
    return jnp.where(nonzero, jnp.sqrt(jnp.where(nonzero, r2, 1.0)), 0.0)


@dataclass(frozen=True)
class PhaseDepth:
    """Coarse linear depth plus cos/sin phase pairs, decoded by multi-frequency phase
    unwrapping (as structured-light scanners recover fine depth from coarse 8-bit phases).

    Channels: c = (d - min) / (max - min), then for each period P (coarse to fine)
    (1 + cos(2 pi d / P)) / 2 and (1 + sin(2 pi d / P)) / 2. Every target is a smooth
    function of depth, with no staircase and no boundary at any depth. Decoding starts from the
    coarse depth; each phase pair gives d modulo P (atan2), and the whole number of periods
    is the one that lands closest to the previous estimate. A level's estimate only has to
    be within P_next / 2 of the truth: with periods (4, 1) m that is 2 m for the coarse
    channel (35 codes over 0.5-15 m) and 0.5 m for the 4 m pair (100 codes of phase), so
    code errors of a few steps never pick a wrong period. One code of phase is at most
    P / (2 pi 127.5) m: 1.25 mm at P = 1 m. Codes that disagree by more than half a period pick a
    neighbouring period (an error of P), clamped to [min, max].

    Loss, every term in metres of depth: L1 of the coarse channel times (max - min), plus,
    per period, the Euclidean error of the (cos, sin) pair times P / pi (the pair lies on a
    circle of radius 1/2, so an error e along it is a phase error of 2e rad, i.e. e P / pi
    metres). Each term is the depth error its level would make, so no weight mixes units;
    the off-circle part of the error is penalised too, which keeps the pairs at the full
    radius where one code moves the phase least.
    """

    min_depth: float = 0.5
    max_depth: float = 15.0
    periods: tuple[float, ...] = (4.0, 1.0)
    name: str = "phase"

    @property
    def channels(self) -> int:
        return 1 + 2 * len(self.periods)

    @property
    def head_names(self) -> tuple[str, ...]:
        return ("coarse",) + tuple(f"{f}_{p:g}m" for p in self.periods for f in ("cos", "sin"))

    @property
    def span(self) -> float:
        return self.max_depth - self.min_depth

    def encode(self, depth: jax.Array) -> jax.Array:
        d = jnp.clip(depth, self.min_depth, self.max_depth)
        chans = [(d - self.min_depth) / self.span]
        for p in self.periods:
            theta = (2.0 * math.pi / p) * d
            chans += [0.5 + 0.5 * jnp.cos(theta), 0.5 + 0.5 * jnp.sin(theta)]
        return jnp.stack(chans, axis=-1)

    def decode(self, heads: jax.Array) -> jax.Array:
        d = self.min_depth + self.span * jnp.clip(heads[..., 0], 0.0, 1.0)
        for i, p in enumerate(self.periods):
            x, y = heads[..., 1 + 2 * i] - 0.5, heads[..., 2 + 2 * i] - 0.5
            wrapped = jnp.arctan2(y, x) * (p / (2.0 * math.pi))       # d modulo p, in [-p/2, p/2]
            d = wrapped + p * jnp.round((d - wrapped) / p)
        return jnp.clip(d, self.min_depth, self.max_depth)

    def loss(self, heads: jax.Array, depth: jax.Array, mask: jax.Array) -> jax.Array:
        target = self.encode(depth)
        total = self.span * masked_mean(jnp.abs(heads[..., 0] - target[..., 0]), mask)
        for i, p in enumerate(self.periods):
            j = 1 + 2 * i
            err = _norm(heads[..., j] - target[..., j], heads[..., j + 1] - target[..., j + 1])
            total = total + (p / math.pi) * masked_mean(err, mask)
        return total


ENCODINGS = {"inverse": InverseDepth, "log": LogDepth, "intfrac": IntegerFraction, "phase": PhaseDepth}


def decode_codes(encoding: Encoding, codes: jax.Array) -> jax.Array:
    """Depth (metres) from the uint8 head codes of an INT8 model: each channel's value is
    code / 255."""
    return encoding.decode(jnp.asarray(codes).astype(jnp.float32) / 255.0)


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
    if name == "phase":
        return PhaseDepth(model_cfg.min_depth, model_cfg.max_depth)
    raise ValueError(f"model.encoding: unknown encoding {name!r}; choose one of {sorted(ENCODINGS)}")


# ----------------------------------------------------------------------------- LiDAR input

LIDAR_ENCODINGS = ("inverse", "log")
_LOG_FLOOR = 1.0 / 255.0      # the log input's farthest return: one 8-bit code above none


def nearest_fill(value: jax.Array, valid: jax.Array) -> jax.Array:
    """Every pixel takes ``value`` at the nearest ``valid`` pixel of its image (0 in an
    image with none), by jump flooding: log2(size) + 1 passes, each keeping the nearest
    of the seeds its 8 neighbours at a halving distance point to. Vectorised and jittable
    (no distance transform in XLA); it may pick a slightly farther seed at a few pixels.

    value, valid: (B, H, W). Image sizes up to 16384.
    """
    b, h, w = value.shape
    far = 1 << 14
    rows = jnp.arange(h, dtype=jnp.int32)[:, None]
    cols = jnp.arange(w, dtype=jnp.int32)[None, :]
    seed_r = jnp.where(valid, rows, far).astype(jnp.int32)
    seed_c = jnp.where(valid, cols, far).astype(jnp.int32)
    dist = lambda r, c: (r - rows) ** 2 + (c - cols) ** 2
    best = dist(seed_r, seed_c)
    steps = [1 << k for k in reversed(range(max(h, w).bit_length()))] + [1]
    for s in steps:
        pad_r = jnp.pad(seed_r, ((0, 0), (s, s), (s, s)), constant_values=far)
        pad_c = jnp.pad(seed_c, ((0, 0), (s, s), (s, s)), constant_values=far)
        for dr in (-s, 0, s):
            for dc in (-s, 0, s):
                cand_r = jax.lax.dynamic_slice(pad_r, (0, s + dr, s + dc), (b, h, w))
                cand_c = jax.lax.dynamic_slice(pad_c, (0, s + dr, s + dc), (b, h, w))
                d = dist(cand_r, cand_c)
                closer = d < best
                seed_r, seed_c = jnp.where(closer, cand_r, seed_r), jnp.where(closer, cand_c, seed_c)
                best = jnp.minimum(d, best)
    found = seed_r < far
    index = (jnp.where(found, seed_r, 0) * w + jnp.where(found, seed_c, 0)).reshape(b, -1)
    filled = jnp.take_along_axis(value.reshape(b, -1), index, axis=1).reshape(b, h, w)
    return jnp.where(found, filled, 0.0)


@dataclass(frozen=True)
class LidarEncoding:
    """The sparse input: (B, H, W) metres, 0 = no return -> (B, H, W, C) [nearness, mask]
    and, with ``fill``, a third channel: the nearness of the nearest return at every pixel.

    Nearness is in (0, 1] at a return and 0 elsewhere, and falls with depth, so the SAN's
    2x2 max-pool keeps the nearest return of a block. It is quantized to 8 bits over
    [0, 1] (step 1/255), which sets how precisely the INT8 model sees a return:

    * ``inverse``: min_depth / d. The step in metres grows as d^2: 0.78 m at 10 m.
    * ``log``: 1/255 + (254/255) (1 - ln(d / min) / ln(max / min)): a uniform relative
      step of ln(max / min) / 254 (1.34 % over 0.5-15 m, 0.13 m at 10 m); the floor of one
      code keeps a return at max_depth apart from "no return".

    The fill channel hands the network nearest-neighbour completion as a starting
    point, so it learns the corrections (edges from the image, returns seen past a
    foreground edge, noise) instead of first learning to interpolate sparse points.

    Encoded on the host before the graph (it needs a division or a log, and the fill a
    search, outside the NPU's op set); the exported model records which encoding its
    input expects.
    """

    kind: str = "inverse"
    min_depth: float = 0.5
    max_depth: float = 15.0
    fill: bool = False

    @property
    def channels(self) -> int:
        return 3 if self.fill else 2

    def __post_init__(self) -> None:
        if self.kind not in LIDAR_ENCODINGS:
            raise ValueError(f"model.lidar_encoding: unknown LiDAR encoding {self.kind!r}; "
                             f"choose one of {', '.join(LIDAR_ENCODINGS)}")

    def encode(self, lidar: jax.Array) -> jax.Array:
        valid = lidar > 0
        d = jnp.clip(lidar, self.min_depth, self.max_depth)
        if self.kind == "inverse":
            near = self.min_depth / d
        else:
            near = _LOG_FLOOR + (1.0 - _LOG_FLOOR) * (1.0 - jnp.log(d / self.min_depth)
                                                       / math.log(self.max_depth / self.min_depth))
        near = jnp.where(valid, near, 0.0)
        chans = [near, valid.astype(jnp.float32)]
        if self.fill:
            chans.append(nearest_fill(near, valid))
        return jnp.stack(chans, axis=-1)

    def fill_channel(self, lidar: jax.Array) -> jax.Array:
        """(B, H, W, 1): the fill channel of ``encode``, in float (the host's copy)."""
        return self.encode(lidar)[..., 2:3]

    def decode(self, x: jax.Array) -> jax.Array:
        """Metres from encoded values (0 where the mask channel is off)."""
        near, valid = x[..., 0], x[..., 1] > 0.5
        if self.kind == "inverse":
            d = self.min_depth / jnp.maximum(near, self.min_depth / self.max_depth)
        else:
            t = 1.0 - (near - _LOG_FLOOR) / (1.0 - _LOG_FLOOR)
            d = self.min_depth * jnp.exp(jnp.clip(t, 0.0, 1.0) * math.log(self.max_depth / self.min_depth))
        return jnp.where(valid, d, 0.0)

    def attrs(self) -> dict:
        """What an exported graph records of its LiDAR input."""
        return {"lidar_encoding": self.kind, "min_depth": self.min_depth, "max_depth": self.max_depth,
                "lidar_fill": self.fill}

    @classmethod
    def from_attrs(cls, attrs: dict) -> "LidarEncoding":
        return cls(attrs["lidar_encoding"], attrs["min_depth"], attrs["max_depth"], attrs["lidar_fill"])


@dataclass(frozen=True)
class FillCorrection:
    """The LiDAR pass's linear heads: head value = a * fill + b + expand(z).

    ``a * fill + b`` is nearest fill in the head's encoding (``fill_prior``), so z = 0
    reproduces nearest fill and the network learns only the correction. The INT8 graph
    outputs z alone, uint8 over [-1, 1]; the host adds its own float fill, so neither
    the fill's 8-bit input grid nor an 8-bit grid of the sum reaches the depth. z is
    companded, ``expand(z) = sinh(k z) / sinh(k)``: most pixels need a small correction,
    and near 0 one code of z is ``k / sinh(k) / 127.5`` of the encoding's range (k = 5:
    5.3e-4, 0.18 % of the depth for the log head over 0.5-15 m, against 1.33 % for the head
    value on its own uint8 grid), while |z| = 1 still reaches a correction of the whole
    range. ``k`` = 0 is linear (2 / 255 per code). With ``phases`` > 1 the graph outputs z
    in that many copies, each rounded at a point shifted by 1 / ``phases`` of a code
    (``integer_ops.spread_phases``), and the host takes their mean (``merge_phases``): z
    on a grid ``phases`` times finer for as many uint8 output channels.
    """

    a: float
    b: float
    k: float = 0.0
    phases: int = 1

    def expand(self, z: jax.Array) -> jax.Array:
        z = jnp.clip(z, -1.0, 1.0)
        return z if self.k == 0 else jnp.sinh(self.k * z) / math.sinh(self.k)

    def compress(self, t: jax.Array) -> jax.Array:
        """The z whose ``expand`` is ``t`` (``t`` clipped to [-1, 1])."""
        t = jnp.clip(t, -1.0, 1.0)
        return t if self.k == 0 else jnp.arcsinh(t * math.sinh(self.k)) / self.k

    def head(self, copies: jax.Array, fill: jax.Array) -> jax.Array:
        """Head value from the graph's correction output and the fill channel (float, the
        host's). The output holds z in ``phases`` copies, merged here
        (``integer_ops.merge_phases``; z itself for one copy), so no caller can forget it."""
        from jaxdepth.quant import integer_ops as iops
        z = iops.merge_phases(copies, self.phases, iops.CORRECTION_RANGE)
        return self.expand(z) + self.a * fill + self.b

    def code_loss(self, heads: jax.Array, target: jax.Array, fill: jax.Array,
                  mask: jax.Array) -> jax.Array:
        """L1 between the head's and the target's corrections in z, the graph's output
        coordinates. A loss on the head value weighs each pixel by ``expand'(z)``, which
        the companding makes tiny near 0 (``k / sinh(k)``: 0.067 at k = 5), so the small
        corrections most pixels need barely steer training; in z every pixel counts alike.
        ``heads``, ``target`` and ``fill``: (B, H, W, 1); ``mask``: (B, H, W)."""
        prior = self.a * fill + self.b
        gap = jnp.abs(self.compress(heads - prior) - self.compress(target - prior))[..., 0]
        return masked_mean(gap, mask)


def fill_prior(encoding: Encoding, lidar: LidarEncoding, k: float = 0.0, phases: int = 1) -> FillCorrection:
    """The linear heads of ``model.fill_prior``: ``encoding.encode(d) = a * nearness(d) + b``
    at every depth in range, so a network that outputs 0 reproduces nearest fill exactly.
    An exact affine map exists for a log head on the log LiDAR input and an inverse head
    on the inverse input; other pairs raise ``ValueError``.
    """
    if not lidar.fill:
        raise ValueError("model.fill_prior needs model.lidar_fill: true (the prior is the fill channel)")
    if (encoding.min_depth, encoding.max_depth) != (lidar.min_depth, lidar.max_depth):
        raise ValueError("model.fill_prior: the head and the LiDAR input need the same depth range")
    if k < 0:
        raise ValueError(f"model.correction_curve: must be >= 0, got {k}")
    if phases < 1:
        raise ValueError(f"model.correction_phases: must be >= 1, got {phases}")
    if encoding.name == "log" and lidar.kind == "log":
        return FillCorrection(-1.0 / (1.0 - _LOG_FLOOR), 1.0 / (1.0 - _LOG_FLOOR), k, phases)
    if encoding.name == "inverse" and lidar.kind == "inverse":
        lo, hi = 1.0 / encoding.max_depth, 1.0 / encoding.min_depth
        return FillCorrection(1.0 / (encoding.min_depth * (hi - lo)), -lo / (hi - lo), k, phases)
    raise ValueError(f"model.fill_prior: no affine map from the {lidar.kind!r} LiDAR input to the "
                     f"{encoding.name!r} head; use encoding and lidar_encoding both 'log' or both 'inverse'")


def get_lidar_encoding(model_cfg) -> LidarEncoding:
    return LidarEncoding(model_cfg.lidar_encoding, model_cfg.min_depth, model_cfg.max_depth,
                         model_cfg.lidar_fill)


def get_fill_prior(model_cfg) -> FillCorrection | None:
    """The linear heads of a ``ModelConfig`` (None without ``fill_prior`` or a SAN)."""
    if not (model_cfg.fill_prior and model_cfg.sparse):
        return None
    return fill_prior(get_encoding(model_cfg), get_lidar_encoding(model_cfg), model_cfg.correction_curve,
                      model_cfg.correction_phases)


def _correction_qparams() -> tuple[jax.Array, jax.Array]:
    from jaxdepth.quant import integer_ops as iops
    from jaxdepth.quant import numerics as qn
    return qn.fixed_qparams(*iops.CORRECTION_RANGE, iops.HEAD_FORMAT)


def output_decoder(model_cfg, use_lidar: bool) -> Callable[[jax.Array, jax.Array | None], jax.Array]:
    """``(output codes, LiDAR metres) -> depth`` for an INT8 model's graph, jitted.

    A sigmoid head's codes are its values times 255 (``decode_codes``). The LiDAR graph of
    a model with linear heads outputs the correction z (uint8 over ``CORRECTION_RANGE``,
    in ``phases`` copies that it merges), and the host adds the fill it computes from the
    same LiDAR in float (``FillCorrection``).
    """
    enc, prior = get_encoding(model_cfg), get_fill_prior(model_cfg)
    if prior is None or not use_lidar:
        return jax.jit(lambda codes, lidar: decode_codes(enc, codes))
    lidar_enc = get_lidar_encoding(model_cfg)

    @jax.jit
    def decode(codes: jax.Array, lidar: jax.Array) -> jax.Array:
        scale, zp = _correction_qparams()
        copies = (jnp.asarray(codes, jnp.int32) - zp).astype(jnp.float32) * scale
        return enc.decode(prior.head(copies, lidar_enc.fill_channel(lidar)))

    return decode


def output_grid(model_cfg, use_lidar: bool) -> Callable[[jax.Array, jax.Array | None], jax.Array]:
    """``(FP32 head values, LiDAR metres) -> depth`` with the head rounded to the INT8
    graph's output codes and decoded by ``output_decoder``: what an INT8 network exact up
    to its output would give."""
    from jaxdepth.quant import integer_ops as iops
    from jaxdepth.quant import numerics as qn

    prior, decode = get_fill_prior(model_cfg), output_decoder(model_cfg, use_lidar)
    if prior is None or not use_lidar:
        return jax.jit(lambda heads, lidar: decode(iops.head_codes(heads), lidar))
    lidar_enc = get_lidar_encoding(model_cfg)

    @jax.jit
    def rounded(heads: jax.Array, lidar: jax.Array) -> jax.Array:
        z = prior.compress(heads - prior.a * lidar_enc.fill_channel(lidar) - prior.b)
        z = iops.spread_phases(z, prior.phases, iops.CORRECTION_RANGE)
        return decode(qn.quantize(z, *_correction_qparams(), iops.HEAD_FORMAT), lidar)

    return rounded
