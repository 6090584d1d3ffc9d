"""The float max pooling of every ``MaxPool`` block, with its gradient computed by dense ops.

Autodiff's gradient of a max pool is a select-and-scatter, which XLA:CPU expands into a
window reduction that finds each window's argmax and a scatter-add of the output gradient
at those indices: on the ResNet stem's 3x3 stride-2 pool at 192x640 batch 2 it took 32-54
ms, against 5 ms for the forward. Here the forward also records, for each output, the first
window position (row-major) that holds its maximum, the element select-and-scatter picks;
the backward selects the output gradient with it and adds the terms into the input's
stride phases, each input's terms in window order, with no scatter. The gradients are
autodiff's (``tests/test_pooling.py``); forward and gradient together take 0.46-0.61x
autodiff's time on the network's pools (``bench/pooling.py``). The backward reads that
int8 index, not the input: with the input as its residual, XLA recomputed the input's
producers (in QAT the SAN's fake-quant sums) inside the gradient's loops, and the QAT
step took 1.28x its time (``docs/speed.md``).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp


def _reduce_max(x: jax.Array, window: int, stride: int, padding: int) -> jax.Array:
    pad = (padding, padding)
    return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, window, window, 1), (1, stride, stride, 1),
                                 ((0, 0), pad, pad, (0, 0)))


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def max_pool(x: jax.Array, window: int, stride: int, padding: int) -> jax.Array:
    """NHWC max over ``window`` x ``window`` windows, ``padding`` -inf rows and columns on
    every side."""
    return _reduce_max(x, window, stride, padding)


def _max_pool_fwd(x, window, stride, padding):
    y = _reduce_max(x, window, stride, padding)
    return y, (_first_max(x, y, window, stride, padding), x.shape)


def _in_strides(size: int, stride: int, padding: int) -> int:
    """How many strides the padded input spans, rounded up."""
    return -(-(size + 2 * padding) // stride)


def _first_max(x: jax.Array, y: jax.Array, window: int, stride: int, padding: int) -> jax.Array:
    """Each output's first window position (row-major) whose input equals it."""
    n, ho, wo, c = y.shape
    xp = jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)), constant_values=-jnp.inf)
    first = jnp.zeros(y.shape, jnp.int8 if window * window <= 127 else jnp.int32)
    for k in reversed(range(window * window)):
        dy, dx = divmod(k, window)
        end = (n, dy + stride * (ho - 1) + 1, dx + stride * (wo - 1) + 1, c)
        seen = jax.lax.slice(xp, (0, dy, dx, 0), end, (1, stride, stride, 1))
        first = jnp.where(seen == y, jnp.asarray(k, first.dtype), first)
    return first


def _max_pool_bwd(window, stride, padding, res, g):
    first, (n, h, w, c) = res
    ho, wo = g.shape[1:3]
    hq, wq = _in_strides(h, stride, padding), _in_strides(w, stride, padding)
    rows = []
    for a in range(stride):
        phases = []
        for b in range(stride):
            # The padded input's rows a, a + stride, ... and columns b, b + stride, ...
            total = jnp.zeros((n, hq, wq, c), g.dtype)
            # An input's windows, in window order, hold it at descending window positions.
            for k in reversed(range(window * window)):
                dy, dx = divmod(k, window)
                if dy % stride == a and dx % stride == b:
                    oy, ox = dy // stride, dx // stride
                    picked = jnp.where(first == k, g, 0.0)
                    total = total + jnp.pad(picked, ((0, 0), (oy, hq - oy - ho), (ox, wq - ox - wo), (0, 0)))
            phases.append(total)
        rows.append(jnp.stack(phases, axis=3))
    gx = jnp.stack(rows, axis=2).reshape(n, hq * stride, wq * stride, c)
    return (gx[:, padding:padding + h, padding:padding + w],)


max_pool.defvjp(_max_pool_fwd, _max_pool_bwd)
