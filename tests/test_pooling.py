"""models.pooling: the max pool's dense gradient picks the elements autodiff's
select-and-scatter picks, ties included, and sums the same terms."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdepth.models.pooling import max_pool

CASES = [((2, 12, 20, 8), 3, 2, 1), ((3, 7, 9, 5), 3, 2, 1), ((2, 12, 20, 8), 2, 2, 0),
         ((3, 7, 9, 5), 2, 2, 0), ((2, 9, 11, 3), 3, 1, 1)]


def gradients(x, g, window, stride, padding):
    """(autodiff's, ours) gradient of sum(g * max_pool(x)) with respect to x."""
    flax_pool = lambda v: nn.max_pool(v, (window,) * 2, (stride,) * 2, ((padding, padding),) * 2)  # noqa: E731
    ours = lambda v: max_pool(v, window, stride, padding)  # noqa: E731
    np.testing.assert_array_equal(ours(x), flax_pool(x))
    return jax.vjp(flax_pool, x)[1](g)[0], jax.vjp(ours, x)[1](g)[0]


@pytest.mark.parametrize("shape,window,stride,padding", CASES)
def test_max_pool_gradient_is_autodiffs(shape, window, stride, padding):
    rng = np.random.default_rng(0)
    out = jax.eval_shape(lambda: max_pool(jnp.zeros(shape), window, stride, padding)).shape
    # Integer output gradients: every sum is exact in any order, so equality tests the
    # choice of elements, not how a compiler orders the additions.
    g = jnp.asarray(rng.integers(-8, 9, out).astype(np.float32))
    for x in (rng.standard_normal(shape), np.maximum(rng.standard_normal(shape), 0),
              rng.integers(-2, 3, shape)):      # ReLU zeros and a coarse grid: many ties
        want, got = gradients(jnp.asarray(x, jnp.float32), g, window, stride, padding)
        np.testing.assert_array_equal(got, want)
    want, got = gradients(jnp.asarray(rng.standard_normal(shape), jnp.float32),
                          jnp.asarray(rng.standard_normal(out), jnp.float32), window, stride, padding)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_max_pool_under_jit_and_vmap():
    x = jnp.asarray(np.random.default_rng(1).standard_normal((2, 2, 8, 10, 4)), jnp.float32)
    loss = lambda v: jnp.sum(jnp.square(max_pool(v, 3, 2, 1)))  # noqa: E731
    got = jax.jit(jax.vmap(jax.grad(loss)))(x)
    want = jnp.stack([jax.grad(loss)(v) for v in x])
    np.testing.assert_array_equal(got, want)
