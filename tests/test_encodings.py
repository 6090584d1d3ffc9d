import jax.numpy as jnp
import numpy as np
import pytest

from jaxdepth.config import ModelConfig
from jaxdepth.encodings import InverseDepth, IntegerFraction, LogDepth, get_encoding

DEPTHS = jnp.array([0.5, 0.99, 1.0, 1.01, 2.5, 7.999, 14.99])


@pytest.mark.parametrize("enc", [InverseDepth(), LogDepth(), IntegerFraction()])
def test_encode_decode_round_trip(enc):
    targets = enc.encode(DEPTHS)
    assert targets.shape == DEPTHS.shape + (enc.channels,)
    assert float(targets.min()) >= 0.0 and float(targets.max()) <= 1.0
    np.testing.assert_allclose(enc.decode(targets), DEPTHS, rtol=1e-5)


def test_intfrac_targets_are_whole_metres_and_fraction():
    t = IntegerFraction().encode(jnp.array([3.25]))
    np.testing.assert_allclose(t[0], [3 / 15, 0.25], rtol=1e-6)


def test_inverse_extremes():
    enc = InverseDepth(0.5, 15.0)
    np.testing.assert_allclose(enc.decode(jnp.array([[0.0], [1.0]])), [15.0, 0.5], rtol=1e-6)


@pytest.mark.parametrize("enc", [InverseDepth(), LogDepth(), IntegerFraction()])
def test_loss_zero_at_target_and_ignores_masked_pixels(enc):
    depth = jnp.array([[1.5, 4.0, 9.0]])
    mask = jnp.array([[True, True, False]])
    heads = enc.encode(depth)
    assert float(enc.loss(heads, depth, mask)) == pytest.approx(0.0, abs=1e-6)
    broken = heads.at[0, 2].set(0.0)        # a masked pixel: no effect
    assert float(enc.loss(broken, depth, mask)) == pytest.approx(0.0, abs=1e-6)
    wrong = heads.at[0, 0].set(heads[0, 0] + 0.1)
    assert float(enc.loss(wrong, depth, mask)) > 0.01
    assert float(enc.loss(heads, depth, jnp.zeros_like(mask))) == 0.0   # empty mask: no NaN


def test_intfrac_loss_weights():
    enc = IntegerFraction(int_weight=1.0, frac_weight=10.0, depth_weight=0.5)
    depth = jnp.array([[2.5]])
    heads = enc.encode(depth).at[..., 1].add(0.1)        # fraction off by 0.1 m
    # L_frac = 0.1, L1(depth) = 0.1 -> 10 * 0.1 + 0.5 * 0.1
    assert float(enc.loss(heads, depth, jnp.ones((1, 1), bool))) == pytest.approx(1.05, rel=1e-4)


def test_get_encoding_from_config():
    enc = get_encoding(ModelConfig(encoding="intfrac", frac_weight=3.0, max_depth=10.0))
    assert isinstance(enc, IntegerFraction) and enc.frac_weight == 3.0 and enc.max_depth == 10.0
    with pytest.raises(ValueError, match="unknown encoding"):
        get_encoding(ModelConfig(encoding="nope"))


def test_log_head_has_uniform_relative_step():
    enc = LogDepth(0.5, 15.0)
    codes = jnp.arange(256) / 255.0
    d = enc.decode(codes[:, None])
    np.testing.assert_allclose(d[1:] / d[:-1], np.exp(np.log(30.0) / 255), rtol=1e-5)
    assert float(enc.loss(enc.encode(jnp.array([[2.0]])) , jnp.array([[2.0 * np.e ** 0.1]]),
                          jnp.ones((1, 1), bool))) == pytest.approx(0.1, rel=1e-4)
