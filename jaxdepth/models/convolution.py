"""The float convolution of every ``Conv`` block, with its kernel gradient computed on a
batch large enough for XLA:CPU's kernels.

Autodiff turns a convolution's kernel gradient into another convolution whose window is
the whole output map and whose input channels are the batch: at a batch of 2 it contracts
only two deep, and XLA:CPU's kernels then took 2.6x PyTorch's time over the train step's
convolutions at 192x640 (``bench/conv_kernels.py``). Below a batch of 8 the maps are
therefore cut into horizontal strips stacked along the batch, 8 images times strips in
all, each strip with the rows its kernel reads above and below it; XLA's own kernel
gradient on them took 0.46-0.47x the time (``bench/kernel_gradient.py``, ``docs/speed.md``).
The forward and the input gradient are XLA's own, and so is the kernel gradient of a batch
of 8 or more, and on other backends.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

Padding = tuple[tuple[int, int], tuple[int, int]]

# The batch (images times strips) the kernel gradient is computed on: 8, where XLA:CPU's
# kernel gradients are within 13 % of PyTorch's (64x224 batch 8, bench/kernel_gradient.py).
STRIP_BATCH = 8


def _xla_conv(x: jax.Array, w: jax.Array, strides: tuple[int, int], padding: Padding) -> jax.Array:
    return jax.lax.conv_general_dilated(x, w, strides, padding, dimension_numbers=("NHWC", "HWIO", "NHWC"))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def float_conv(x: jax.Array, w: jax.Array, strides: tuple[int, int], padding: Padding) -> jax.Array:
    """NHWC input, HWIO kernel, explicit padding."""
    return _xla_conv(x, w, strides, padding)


def _float_conv_fwd(x, w, strides, padding):
    return _xla_conv(x, w, strides, padding), (x, w)


def _float_conv_bwd(strides, padding, res, g):
    x, w = res
    gx = jax.vjp(lambda a: _xla_conv(a, w, strides, padding), x)[1](g)[0]
    return gx, kernel_gradient(x, g, w, strides, padding)


float_conv.defvjp(_float_conv_fwd, _float_conv_bwd)


def strip_count(batch: int, out_height: int) -> int:
    """How many strips each image is cut into on XLA:CPU: enough for ``STRIP_BATCH`` in all,
    where the output rows divide evenly; 1 (no strips) otherwise, and on other backends,
    whose kernels were not measured."""
    if jax.default_backend() != "cpu" or batch >= STRIP_BATCH:
        return 1
    strips = STRIP_BATCH // batch
    return strips if strips > 1 and out_height % strips == 0 else 1


def kernel_gradient(x: jax.Array, g: jax.Array, w: jax.Array, strides: tuple[int, int],
                    padding: Padding) -> jax.Array:
    """d(sum(g * conv(x, w))) / dw, on the images cut into ``strip_count`` strips each."""
    strips = strip_count(g.shape[0], g.shape[1])
    if strips > 1:
        x, g, padding = in_strips(x, g, w.shape[0], strides[0], padding, strips)
    return jax.vjp(lambda u: _xla_conv(x, u, strides, padding), w)[1](g)[0]


def in_strips(x: jax.Array, g: jax.Array, k: int, stride: int, padding: Padding,
              strips: int) -> tuple[jax.Array, jax.Array, Padding]:
    """The input and output gradient cut into ``strips`` horizontal strips each, an image's
    strips next to each other along the batch (so a batch sharded over devices is cut where
    it lies, with no data moved between devices); each input strip holds every row its output rows' windows read, so the conv over
    the strips needs no vertical padding, and returns the new padding."""
    (top, bottom), across = padding
    rows = g.shape[1] // strips                    # output rows per strip
    span = (rows - 1) * stride + k                 # input rows those rows read
    xp = jnp.pad(x, ((0, 0), (top, bottom), (0, 0), (0, 0)))

    def stacked(parts: list[jax.Array]) -> jax.Array:
        return jnp.stack(parts, axis=1).reshape(-1, *parts[0].shape[1:])

    xs = stacked([xp[:, r * rows * stride: r * rows * stride + span] for r in range(strips)])
    gs = stacked([g[:, r * rows: (r + 1) * rows] for r in range(strips)])
    return xs, gs, ((0, 0), across)
