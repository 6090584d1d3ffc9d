"""Quantization numerics and the fake-quant (QAT) graph."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdepth.models.layers import Conv, Quant
from jaxdepth.quant import numerics as qn
from jaxdepth.quant.aqt_conv import int8_conv

STRICT = Quant("fake", qn.PRESETS["npu_strict"])


def test_presets():
    assert qn.get_scheme("npu_strict") == qn.Scheme("npu_strict", False, qn.UINT8)
    assert qn.get_scheme("per_channel").per_channel_weights
    assert qn.get_scheme("symmetric").activation == qn.INT8
    with pytest.raises(ValueError, match="unknown quantization preset"):
        qn.get_scheme("int4")


@pytest.mark.parametrize("fmt", [qn.UINT8, qn.INT8])
def test_activation_range_contains_zero_and_uses_256_codes(fmt):
    x = jnp.linspace(-0.7, 3.1, 10_001)
    scale, zp = qn.activation_qparams(x.min(), x.max(), fmt)
    q = qn.fake_quant(x, scale, zp, fmt)
    assert len(np.unique(np.asarray(q))) <= 256
    codes = np.asarray(qn.quantize(x, scale, zp, fmt))
    assert codes.min() >= fmt.qmin and codes.max() <= fmt.qmax
    assert float(qn.fake_quant(jnp.zeros(()), scale, zp, fmt)) == 0.0      # zero exact
    if fmt == qn.UINT8:
        assert codes.min() == 0 and codes.max() == 255                      # all codes used
    assert float(jnp.abs(q - x).max()) <= float(scale) / 2 + 1e-6


def test_post_relu_range_is_unsigned_with_zero_point_0():
    scale, zp = qn.activation_qparams(jnp.float32(0.0), jnp.float32(2.55), qn.UINT8)
    assert float(zp) == 0.0 and float(scale) == pytest.approx(0.01)


def test_round_half_away_from_zero():
    np.testing.assert_array_equal(qn.round_half_away(jnp.array([-2.5, -1.5, -0.5, 0.5, 1.5, 2.4])),
                                  [-3, -2, -1, 1, 2, 2])


def test_fake_quant_gradient_is_straight_through_inside_range():
    scale, zp = jnp.float32(0.1), jnp.float32(0.0)
    x = jnp.array([-1.0, 0.33, 5.0, 30.0])          # range [0, 25.5]
    g = jax.grad(lambda x: qn.fake_quant(x, scale, zp, qn.UINT8).sum())(x)
    np.testing.assert_array_equal(g, [0.0, 1.0, 1.0, 0.0])


def test_per_tensor_weights_have_one_scale_per_channel_weights_one_per_output():
    w = jax.random.normal(jax.random.PRNGKey(0), (3, 3, 8, 16))
    assert qn.weight_scale(w, per_channel=False).shape == ()
    assert qn.weight_scale(w, per_channel=True).shape == (16,)
    s = qn.weight_scale(w, False)
    q = np.asarray(qn.quantize(w, s, 0.0, qn.WEIGHT_INT8))
    np.testing.assert_array_equal(q, np.round(q))
    assert np.abs(q).max() == 127
    np.testing.assert_allclose(q * float(s), w, atol=float(s) / 2 + 1e-7)


def test_aqt_conv_is_exact_integer_conv_with_straight_through_gradient():
    kx, kw = jax.random.split(jax.random.PRNGKey(1))
    x = jax.random.uniform(kx, (2, 8, 8, 4), minval=-0.5, maxval=2.0)
    w = jax.random.normal(kw, (3, 3, 4, 5))
    s, zp = qn.activation_qparams(x.min(), x.max(), qn.UINT8)
    ws = qn.weight_scale(w, False)
    pad = ((1, 1), (1, 1))

    def conv(x, w):
        xq = qn.fake_quant_value(x, s, zp, qn.UINT8)
        w_codes = qn.quantize(w, ws, 0.0, qn.WEIGHT_INT8)
        return int8_conv(xq, qn.straight_through(w, w_codes * ws), w_codes, ws, (1, 1), pad)

    acc, out = conv(x, w)
    codes_x = np.asarray(qn.quantize(x, s, zp, qn.UINT8) - zp).astype(np.int32)
    codes_w = np.asarray(qn.quantize(w, ws, 0.0, qn.WEIGHT_INT8)).astype(np.int32)
    want = jax.lax.conv_general_dilated(codes_x, codes_w, (1, 1), pad,
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                        preferred_element_type=jnp.int32)
    np.testing.assert_array_equal(np.asarray(acc), np.asarray(want))     # AQT's integers, exactly
    np.testing.assert_allclose(out, np.asarray(want) * float(s) * float(ws), rtol=1e-6)

    def loss(fn, x, w):
        return jnp.sum(jnp.sin(fn(x, w)))
    float_conv = lambda x, w: jax.lax.conv_general_dilated(x, w, (1, 1), pad, dimension_numbers=("NHWC", "HWIO", "NHWC"))
    gq = jax.grad(lambda x, w: loss(lambda a, b: conv(a, b)[1], x, w), (0, 1))(x, w)
    gf = jax.grad(lambda x, w: loss(float_conv, x, w), (0, 1))(x, w)
    for a, b in zip(gq, gf):
        cos = float(jnp.sum(a * b) / (jnp.linalg.norm(a) * jnp.linalg.norm(b)))
        assert cos > 0.99 and float(jnp.abs(a).max()) > 0


@pytest.fixture(scope="module")
def conv_layer():
    """A BN conv with calibrated ranges, as QAT sees it."""
    layer_f = Conv(8, 3, bn=True, relu=True)
    layer_q = Conv(8, 3, bn=True, relu=True, quant=STRICT)
    x = jax.random.uniform(jax.random.PRNGKey(2), (2, 16, 16, 4))
    v = layer_f.init(jax.random.PRNGKey(3), x)
    v = {**v, "batch_stats": {"mean": jnp.linspace(-0.2, 0.2, 8), "var": jnp.linspace(0.5, 2, 8)}}
    _, upd = Conv(8, 3, quant=Quant("calibrate")).apply(v, x, mutable=["quant"])
    v = {**v, **upd}
    s, zp = qn.fixed_qparams(0.0, 1.0, qn.UINT8)
    xq = qn.fake_quant_value(x, s, zp, qn.UINT8)
    return layer_f, layer_q, v, x, xq


def test_qat_gradient_reaches_kernel_and_bn_and_matches_float(conv_layer):
    layer_f, layer_q, v, x, xq = conv_layer
    def loss(params, layer, inp):
        out = layer.apply({**v, "params": params}, inp)
        return jnp.sum(jnp.square(out.value if hasattr(out, "value") else out))
    gq = jax.grad(loss)(v["params"], layer_q, xq)
    gf = jax.grad(loss)(v["params"], layer_f, x)
    for name in ("kernel", "bn_scale", "bn_bias"):
        a, b = gq[name], gf[name]
        assert float(jnp.abs(a).max()) > 0, name
        cos = float(jnp.sum(a * b) / (jnp.linalg.norm(a) * jnp.linalg.norm(b)))
        assert cos > 0.99, (name, cos)


def test_fake_quant_output_has_at_most_256_values_and_is_deterministic(conv_layer):
    _, layer_q, v, _, xq = conv_layer
    out1 = layer_q.apply(v, xq)
    out2 = jax.jit(layer_q.apply)(v, xq)
    assert len(np.unique(np.asarray(out1.value))) <= 256
    np.testing.assert_array_equal(np.asarray(out1.value), np.asarray(layer_q.apply(v, xq).value))
    np.testing.assert_allclose(np.asarray(out1.value), np.asarray(out2.value), atol=1e-6)
    codes = np.asarray(out1.codes())
    np.testing.assert_array_equal(codes, np.round(codes))
    assert codes.min() >= 0 and codes.max() <= 255


def test_bn_is_folded_into_quantized_weights(conv_layer):
    """Fake-quant output equals a conv with the BN-folded kernel quantized per tensor."""
    _, layer_q, v, _, xq = conv_layer
    p, bs = v["params"], v["batch_stats"]
    inv = p["bn_scale"] / jnp.sqrt(bs["var"] + 1e-5)
    k = p["kernel"] * inv
    b = p["bn_bias"] - bs["mean"] * inv
    ws = jnp.max(jnp.abs(k)) / 127
    kq = jnp.round(k / ws) * ws
    y = jax.lax.conv_general_dilated(xq.value, kq, (1, 1), ((1, 1), (1, 1)),
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
    y = jax.nn.relu(y + jnp.round(b / (xq.scale * ws)) * xq.scale * ws)
    out = layer_q.apply(v, xq)
    assert float(jnp.abs(out.value - y).max()) <= float(out.scale) * 0.51


def test_ranges_track_ema_in_training_and_freeze_in_eval(conv_layer):
    _, layer_q, v, _, xq = conv_layer
    _, upd = layer_q.apply(v, xq, train=True, mutable=["quant"])
    before, after = v["quant"]["out"], upd["quant"]["out"]
    assert int(after["count"]) == int(before["count"]) + 1
    _, frozen = layer_q.apply(v, xq, train=False, mutable=["quant"])
    assert jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), frozen["quant"], v["quant"]))


def test_head_outputs_are_uint8_codes_over_unit_range(tiny_model):
    from jaxdepth.config import ModelConfig
    from jaxdepth.models import build_model
    from jaxdepth.quant.calibrate import calibrate
    from conftest import TINY_MODEL

    model, v = tiny_model
    rng = np.random.default_rng(0)
    batch = {"rgb": rng.random((2, 32, 64, 3), np.float32),
             "lidar": np.where(rng.random((2, 32, 64)) < 0.05, 4.0, 0.0).astype(np.float32)}
    q = calibrate(model, v, [batch], use_lidar=True)
    fake = build_model(ModelConfig(**TINY_MODEL), STRICT)
    heads = jax.jit(lambda v, r, l: fake.apply(v, r, l))({**v, "quant": q}, batch["rgb"], batch["lidar"])[0]
    k = np.asarray(heads) * 255
    np.testing.assert_allclose(k, np.round(k), atol=1e-3)
    assert heads.min() >= 0 and heads.max() <= 1


def test_ranges_survive_checkpoint_round_trip(finished_run):
    from jaxdepth import checkpoint

    trainer, _ = finished_run
    state, _, _ = checkpoint.load(trainer.run_dir / "checkpoints" / "last")
    saved, live = state["quant"], jax.tree.map(np.asarray, trainer.state.quant)
    flat_s, flat_l = jax.tree.leaves(saved), jax.tree.leaves(live)
    assert len(flat_s) == len(flat_l) > 0
    for a, b in zip(flat_s, flat_l):
        np.testing.assert_array_equal(np.asarray(a), b)
    assert checkpoint.has_ranges({"quant": saved})
