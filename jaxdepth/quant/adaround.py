"""AdaRound (Nagel et al., ICML 2020): learned up/down rounding of each conv's weights.

Nearest rounding minimises each weight's own error, not the error of the layer's output.
AdaRound chooses, per weight, ``floor(w / s)`` or ``floor(w / s) + 1`` to minimise
``||(W_q - W) x||^2`` over the layer's inputs ``x``, relaxing the choice to a rectified
sigmoid ``h(V)`` and annealing a regulariser that drives ``h`` to 0 or 1.

Here the inputs are ``PATCHES`` input patches per conv, sampled evenly over the
calibration batches from the fake-quant model's conv inputs (``taps``), and ``s`` is
AQT's scale of the folded kernel (per tensor or per channel), which the rounding keeps:
the weights at ``+-127`` (those that set AbsMax's scale) keep nearest rounding. Half the
patches drive the optimisation; the other half decide: a layer whose learned rounding
does not beat nearest rounding on those held-out patches keeps nearest rounding, so a
kernel wider than its sample (3x3x512 inputs) cannot overfit its way into the model.
The patches come from one pass of the nearest-rounded model, not layer by layer from
the already-rounded one. The cost is about ``3 x PATCHES / 2 x ITERATIONS``
multiply-adds per weight (forward and backward): two to four minutes for ResNetSAN on a
2-core CPU (``docs/ptq.md``). The result is written as a folded kernel on the integer
grid, ``s * codes``, so AQT's quantizer reproduces the chosen codes.
"""
from __future__ import annotations

import functools
import zlib
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm import tqdm

from jaxdepth.models.layers import same_padding
from jaxdepth.quant import aqt_backend
from jaxdepth.quant.folding import FoldedConvs
from jaxdepth.quant.taps import conv_taps, mode_passes

PATCHES = 2048         # input patches per conv over the calibration set: half fit, half check
ITERATIONS = 200
ZETA, GAMMA = 1.1, -0.1
REG_WEIGHT = 3.0       # regulariser weight, relative to nearest rounding's objective
LR = 0.1
BETA = (20.0, 2.0)     # regulariser temperature, annealed over the iterations
WARMUP = 0.2           # share of iterations without the regulariser


def rectified_sigmoid(v: jax.Array) -> jax.Array:
    return jnp.clip(jax.nn.sigmoid(v) * (ZETA - GAMMA) + GAMMA, 0.0, 1.0)


def objective(codes: jax.Array, scale: jax.Array, w: jax.Array, x: jax.Array) -> jax.Array:
    """``mean ||x (s * codes - w)||^2`` over patches ``x`` (P, D) for a kernel (D, C)."""
    return jnp.mean(jnp.square(x @ (codes * scale - w)))


def nearest_codes(w: jax.Array, scale: jax.Array) -> jax.Array:
    """``w / scale`` rounded to the nearest code (half to even), clipped to [-127, 127]."""
    return jnp.clip(jnp.round(w / scale), -127, 127)


@functools.partial(jax.jit, static_argnums=(3,))
def learn_rounding(w: jax.Array, scale: jax.Array, x: jax.Array, iterations: int = ITERATIONS,
                   lr: float = LR, reg_weight: float = REG_WEIGHT) -> jax.Array:
    """AdaRound's codes in [-127, 127] of kernel ``w`` (D, C) with scale ``scale`` (() or
    (C,)) fitted to patches ``x``: floor or ceil of each weight, the AbsMax ones nearest."""
    ws = w / scale
    base = jnp.floor(ws)
    rest = ws - base
    fixed = jnp.abs(ws) > 126.5            # the AbsMax weights: their code sets the scale
    v0 = -jnp.log((ZETA - GAMMA) / (jnp.clip(rest, 0.01, 0.99) - GAMMA) - 1)
    opt = optax.adam(lr)

    def codes_of(h):
        return jnp.where(fixed, nearest_codes(w, scale), jnp.clip(base + h, -127, 127))

    rec_scale = jax.lax.stop_gradient(objective(nearest_codes(w, scale), scale, w, x)) + 1e-12

    def loss(v, t):
        h = rectified_sigmoid(v)
        rec = objective(codes_of(h), scale, w, x)
        frac = jnp.clip((t - WARMUP) / (1 - WARMUP), 0.0, 1.0)
        beta = BETA[0] + (BETA[1] - BETA[0]) * frac
        reg = jnp.sum(1 - jnp.abs(2 * h - 1) ** beta) * (t > WARMUP)
        return rec + reg_weight * rec_scale * reg / h.size

    def body(i, carry):
        v, state = carry
        g = jax.grad(loss)(v, i / iterations)
        updates, state = opt.update(g, state)
        return v + updates, state

    v, _ = jax.lax.fori_loop(0, iterations, body, (v0, opt.init(v0)))
    return codes_of((v >= 0).astype(w.dtype))


def optimise_rounding(w: jax.Array, scale: jax.Array, x: jax.Array, iterations: int = ITERATIONS,
                      x_check: jax.Array | None = None) -> jax.Array:
    """``learn_rounding``'s codes, or nearest rounding where that is no worse on the
    patches ``x_check`` (default ``x``)."""
    learned = learn_rounding(w, scale, x, iterations)
    nearest = nearest_codes(w, scale)
    check = x if x_check is None else x_check
    better = objective(learned, scale, w, check) < objective(nearest, scale, w, check)
    return jnp.where(better, learned, nearest)


def _flat_kernel(k: jax.Array) -> jax.Array:
    """HWIO kernel -> (I * H * W, O), matching ``conv_general_dilated_patches``' order."""
    return jnp.transpose(k, (2, 0, 1, 3)).reshape(-1, k.shape[-1])


def _unflat_kernel(m: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    h, w, i, o = shape
    return np.transpose(np.asarray(m).reshape(i, h, w, o), (1, 2, 0, 3))


def patches_at_random(x: jax.Array, kernel: int, stride: int, n: int, key: jax.Array) -> jax.Array:
    """``n`` input patches (n, C * kernel * kernel) of a conv over ``x`` (NHWC) at random
    output positions, in ``conv_general_dilated_patches``' feature order; gathered
    without materialising every patch."""
    (pad, _), _ = same_padding(kernel)
    xp = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    b, h, w, c = x.shape
    kb, ki, kj = jax.random.split(key, 3)
    rows = jax.random.randint(kb, (n,), 0, b)
    ys = jax.random.randint(ki, (n,), 0, (h + 2 * pad - kernel) // stride + 1) * stride
    xs = jax.random.randint(kj, (n,), 0, (w + 2 * pad - kernel) // stride + 1) * stride
    one = lambda r, y, x_: jax.lax.dynamic_slice(xp, (r, y, x_, 0), (1, kernel, kernel, c))[0]
    patches = jax.vmap(one)(rows, ys, xs)                               # (n, k, k, C)
    return jnp.transpose(patches, (0, 3, 1, 2)).reshape(n, -1)


def sample_patches(model: nn.Module, variables: dict, batches: Sequence[dict], use_lidar: bool,
                   seed: int = 0, progress: bool = False) -> dict[str, np.ndarray]:
    """``{conv path: (PATCHES, D)}`` input patches of every conv in the fake-quant model,
    at random positions, the same number from each batch (and LiDAR mode)."""
    passes = len(batches) * (2 if use_lidar else 1)
    per_pass = -(-PATCHES // passes)

    @jax.jit
    def step(variables, rgb, lidar, key):
        def reduce(p, x, conv):
            sub = jax.random.fold_in(key, zlib.crc32(p.encode()) % (2 ** 31))
            return patches_at_random(x, conv.kernel, conv.stride, per_pass, sub)
        return conv_taps(model, variables, rgb, lidar, reduce)

    key = jax.random.PRNGKey(seed)
    out: dict[str, list] = {}
    shown = tqdm(batches, desc="adaround inputs", disable=not progress, leave=False)
    for i, (frozen, rgb, lidar) in enumerate(mode_passes(model, variables, shown, use_lidar)):
        for p, x in jax.device_get(step(frozen, rgb, lidar, jax.random.fold_in(key, i))).items():
            out.setdefault(p, []).append(x)
    return {p: np.concatenate(xs)[:PATCHES] for p, xs in out.items()}


def adaround(model: nn.Module, variables: dict, batches: Sequence[dict], use_lidar: bool,
             iterations: int = ITERATIONS, progress: bool = False) -> dict:
    """``variables`` with every conv's folded kernel replaced by its AdaRound codes times
    AQT's scale (``model``: the fake-quant model of the scheme the weights are for)."""
    patches = sample_patches(model, variables, batches, use_lidar, progress=progress)
    per_channel = model.quant.scheme.per_channel_weights
    convs = FoldedConvs(variables)
    for p in tqdm(sorted(patches), desc="adaround", disable=not progress, leave=False):
        k, _ = convs.folded(p)
        _, scale = aqt_backend.quantize_weights(jnp.asarray(k), per_channel)
        x = jnp.asarray(patches[p])
        half = len(x) // 2
        codes = optimise_rounding(_flat_kernel(jnp.asarray(k)), scale, x[:half], iterations,
                                  x_check=x[half:])
        convs.set_folded(p, kernel=_unflat_kernel(np.asarray(codes * scale), k.shape))
    return convs.result()
