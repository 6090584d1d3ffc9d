"""models.convolution: the conv block's kernel gradient, computed on the maps cut into
strips, is the kernel gradient autodiff builds."""
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdepth.models.convolution import float_conv, kernel_gradient, strip_count

DIMS = ("NHWC", "HWIO", "NHWC")


def operands(shape, k, cout, stride, seed=0):
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.standard_normal(shape, np.float32))
    w = jnp.asarray(rng.standard_normal((k, k, shape[3], cout), np.float32) * 0.1)
    pad = ((k // 2, k // 2),) * 2
    out = jax.eval_shape(lambda: jax.lax.conv_general_dilated(x, w, (stride,) * 2, pad, dimension_numbers=DIMS))
    g = jnp.asarray(rng.standard_normal(out.shape, np.float32))
    return x, w, g, pad


def autodiff_kernel_gradient(x, w, g, stride, pad):
    conv = lambda u: jax.lax.conv_general_dilated(x, u, (stride,) * 2, pad, dimension_numbers=DIMS)  # noqa: E731
    return jax.vjp(conv, w)[1](g)[0]


@pytest.mark.parametrize("shape,k,cout,stride,strips", [
    ((2, 16, 20, 8), 3, 4, 1, 4), ((2, 16, 20, 8), 3, 4, 2, 4), ((1, 16, 12, 4), 3, 2, 1, 8),
    ((2, 16, 12, 8), 1, 4, 2, 4), ((2, 32, 16, 3), 7, 8, 2, 4), ((4, 12, 10, 8), 3, 4, 1, 2),
    ((2, 6, 10, 8), 3, 4, 1, 1), ((8, 8, 10, 8), 3, 4, 1, 1)])
def test_kernel_gradient_in_strips_is_autodiffs(shape, k, cout, stride, strips):
    x, w, g, pad = operands(shape, k, cout, stride)
    assert strip_count(g.shape[0], g.shape[1]) == strips
    got = kernel_gradient(x, g, w, (stride, stride), pad)
    ref = autodiff_kernel_gradient(x, w, g, stride, pad)
    assert got.shape == w.shape
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5 * float(jnp.abs(ref).max()))


def test_float_conv_is_xlas_forward_with_autodiffs_gradients():
    x, w, g, pad = operands((2, 16, 10, 8), 3, 4, 1, seed=1)
    plain = lambda a, b: jax.lax.conv_general_dilated(a, b, (1, 1), pad, dimension_numbers=DIMS)  # noqa: E731
    ours = lambda a, b: float_conv(a, b, (1, 1), pad)  # noqa: E731
    np.testing.assert_array_equal(ours(x, w), plain(x, w))
    want = jax.grad(lambda a, b: jnp.sum(plain(a, b) * g), argnums=(0, 1))(x, w)
    got = jax.grad(lambda a, b: jnp.sum(ours(a, b) * g), argnums=(0, 1))(x, w)
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * float(jnp.abs(b).max()))


SHARDED = """
import re
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from jaxdepth.models.convolution import kernel_gradient
assert jax.device_count() == 2
batch = NamedSharding(Mesh(np.array(jax.devices()), ("data",)), PartitionSpec("data"))
x = jax.device_put(jnp.ones((4, 16, 20, 8)), batch)
g = jax.device_put(jnp.ones((4, 16, 20, 4)), batch)
grad = jax.jit(lambda x, g: kernel_gradient(x, g, jnp.ones((3, 3, 8, 4)), (1, 1), ((1, 1), (1, 1))))
hlo = grad.lower(x, g).compile().as_text()
print(sorted(set(re.findall(r"all-to-all|collective-permute|all-gather|all-reduce|reduce-scatter", hlo))))
"""


def test_strips_of_a_sharded_batch_stay_on_their_device():
    """Over a batch split across two devices, the strips move no data between devices: the
    only collective is the all-reduce that sums the two halves' gradients."""
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2", "JAXDEPTH_HUGE_PAGES": "0"}
    proc = subprocess.run([sys.executable, "-c", SHARDED], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert proc.stdout.split("\n")[-2] == "['all-reduce']"
