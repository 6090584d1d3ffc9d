"""Quantization numerics and the fake-quant (QAT) graph."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdepth.models.layers import Conv, Quant, ema_range
from jaxdepth.quant import aqt_backend
from jaxdepth.quant import integer_ops as iops
from jaxdepth.quant import numerics as qn

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
    assert zp.dtype == jnp.int32
    q = qn.fake_quant(x, scale, zp, fmt)
    assert len(np.unique(np.asarray(q))) <= 256
    codes = np.asarray(qn.quantize(x, scale, zp, fmt))
    assert codes.min() >= fmt.qmin and codes.max() <= fmt.qmax
    assert float(qn.fake_quant(jnp.zeros(()), scale, zp, fmt)) == 0.0      # zero exact
    if fmt == qn.UINT8:
        assert codes.min() == 0 and codes.max() == 255                      # all codes used
    assert float(jnp.abs(q - x).max()) <= float(scale) / 2 + 1e-6


@pytest.mark.parametrize("fmt", [qn.UINT8, qn.INT8])
def test_a_range_of_width_zero_is_taken_as_unit_range(fmt):
    scale, zp = qn.activation_qparams(jnp.float32(0.0), jnp.float32(0.0), fmt)
    assert float(scale) == pytest.approx(1.0 / (fmt.qmax if fmt.symmetric else fmt.levels))
    assert int(zp) == max(fmt.qmin, 0)


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


def test_aqt_quantizes_weights_per_tensor_or_per_output_channel():
    w = jax.random.normal(jax.random.PRNGKey(0), (3, 3, 8, 16))
    codes, s = aqt_backend.quantize_weights(w, per_channel=False)
    assert s.shape == () and codes.dtype == jnp.int32
    assert float(s) == pytest.approx(float(jnp.abs(w).max()) / 127)
    assert np.abs(np.asarray(codes)).max() == 127
    np.testing.assert_allclose(np.asarray(codes) * float(s), w, atol=float(s) / 2 + 1e-7)
    codes_c, s_c = aqt_backend.quantize_weights(w, per_channel=True)
    assert s_c.shape == (16,)
    np.testing.assert_array_equal(np.abs(np.asarray(codes_c)).max(axis=(0, 1, 2)), 127)
    zero, s0 = aqt_backend.quantize_weights(jnp.zeros((3, 3, 2, 4)), per_channel=False)
    assert float(s0) == pytest.approx(1 / 127) and not np.asarray(zero).any()     # explicit


def test_aqt_quantizes_inputs_with_a_static_scale_half_to_even():
    scale, zp = jnp.float32(0.5), jnp.int32(10)
    x = jnp.array([0.25, 0.75, -0.25, -3.0, -10.0, 1000.0])      # ties at 0.5, 1.5, -0.5
    codes = aqt_backend.quantize_input(x, scale, zp, qn.UINT8)
    np.testing.assert_array_equal(codes, [10, 12, 10, 4, 0, 255])


def _int_conv_reference(x: np.ndarray, w: np.ndarray, stride: int, pad: int) -> np.ndarray:
    """int64 convolution, NHWC x HWIO, zero padding (written out, no JAX)."""
    n, h, wd, c = x.shape
    kh, kw, _, o = w.shape
    xp = np.pad(x.astype(np.int64), ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    ho, wo = (h + 2 * pad - kh) // stride + 1, (wd + 2 * pad - kw) // stride + 1
    out = np.zeros((n, ho, wo, o), np.int64)
    for a in range(kh):
        for b in range(kw):
            patch = xp[:, a:a + stride * ho:stride, b:b + stride * wo:stride, :]
            out += np.einsum("nhwc,co->nhwo", patch, w[a, b].astype(np.int64))
    return out


def test_conv_accumulator_is_exact_beyond_float32_integers():
    """A 3x3x512 conv at the extreme codes: its sums reach 1.5e8 > 2**24, where one float32
    convolution (and so AQT 0.9.0's conv, which convolves in the input's float dtype)
    rounds; the grouped accumulation is exact."""
    rng = np.random.default_rng(0)
    sign = rng.choice([-1, 1], size=512)                            # aligned signs: huge sums
    x = (rng.choice([255, 254, 253], size=(1, 6, 6, 512)) * sign).astype(np.int32)
    w = (rng.choice([127, 126, 125], size=(3, 3, 512, 4)) * sign[:, None]).astype(np.int32)
    want = _int_conv_reference(x, w, 1, 1)
    assert np.abs(want).max() > 2 ** 27
    got = iops.conv_accumulate(jnp.asarray(x), jnp.asarray(w), (1, 1), ((1, 1), (1, 1)))
    np.testing.assert_array_equal(np.asarray(got), want)
    assert iops.accumulator_groups(9, 512, "layer") == 9
    single = jax.lax.conv_general_dilated(jnp.asarray(x, jnp.float32), jnp.asarray(w, jnp.float32),
                                          (1, 1), ((1, 1), (1, 1)),
                                          dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                          precision=jax.lax.Precision.HIGHEST)
    assert not np.array_equal(np.asarray(single).astype(np.int64), want)   # the test can fail


@pytest.mark.parametrize("integer_convs", [True, False], ids=["int8 kernels", "float32 groups"])
@pytest.mark.parametrize("cin,stride", [(3, 2), (64, 1)])
def test_int8_conv_accumulate_is_exact_on_both_kernels(monkeypatch, integer_convs, cin, stride):
    """The integer forward's conv: int8 patch product on XLA:CPU, exact float32 groups
    where the backend has no integer convolution (XLA:GPU); forced here, so CPU runs
    check the GPU path too."""
    monkeypatch.setattr(iops, "integer_convolutions", lambda: integer_convs)
    rng = np.random.default_rng(cin)
    x = rng.integers(-128, 128, size=(2, 9, 11, cin)).astype(np.int8)
    w = rng.integers(-127, 128, size=(3, 3, cin, 5)).astype(np.int8)
    got = iops.int8_conv_accumulate(jnp.asarray(x), jnp.asarray(w), (stride, stride))
    np.testing.assert_array_equal(np.asarray(got), _int_conv_reference(x.astype(np.int32), w, stride, 0))


def test_accumulator_overflow_is_refused_naming_the_layer():
    with pytest.raises(ValueError, match="decoder/wide.*int32 accumulator"):
        iops.accumulator_groups(9, 60_000, "decoder/wide")


def test_aqt_conv_alone_has_no_gradient():
    """Why the fake-quant conv carries its own straight-through estimator."""
    from aqt.jax.v2 import aqt_conv_general

    conv = aqt_conv_general.make_conv_general_dilated(
        aqt_conv_general.conv_general_dilated_make(2, lhs_bits=8, rhs_bits=8))
    x = jax.random.uniform(jax.random.PRNGKey(0), (1, 8, 8, 4))
    w = jax.random.normal(jax.random.PRNGKey(1), (3, 3, 4, 5))
    dn = jax.lax.conv_dimension_numbers(x.shape, w.shape, ("NHWC", "HWIO", "NHWC"))
    gx, gw = jax.grad(lambda a, b: jnp.sum(conv(a, b, (1, 1), "SAME", dimension_numbers=dn) ** 2),
                      (0, 1))(x, w)
    assert not np.asarray(gx).any() and not np.asarray(gw).any()


def test_requantize_saturates_instead_of_wrapping():
    m, shift = qn.quantize_multiplier(jnp.float32(1000.0))      # a left shift of the accumulator
    acc = jnp.array([2 ** 30, -(2 ** 30), 3, -3], jnp.int32)
    got = np.asarray(qn.requantize(acc, m, shift))
    np.testing.assert_array_equal(got, [2 ** 31 - 1, -(2 ** 31 - 1), 3000, -3000])


def test_export_checks_name_the_layer_with_a_bad_multiplier():
    qn.check_multiplier(np.array([2 ** 30, 2 ** 31 - 1]), np.array([0, -31]), "ok")
    with pytest.raises(ValueError, match="encoder/conv1 .multiplier.*outside"):
        qn.check_multiplier(np.array([2 ** 30]), np.array([40]), "encoder/conv1 (multiplier)")
    with pytest.raises(ValueError, match="outside"):
        qn.check_multiplier(np.array([5]), np.array([0]), "x")


def test_ema_range_arithmetic_by_hand():
    x1, x2 = jnp.array([-1.0, 3.0]), jnp.array([0.5, 1.0])
    lo, hi = ema_range(jnp.float32(0), jnp.float32(0), jnp.int32(0), x1, 0.9)
    assert (float(lo), float(hi)) == (-1.0, 3.0)                       # first batch sets it
    lo, hi = ema_range(lo, hi, jnp.int32(1), x2, 0.9)
    assert float(lo) == pytest.approx(0.9 * -1.0 + 0.1 * 0.5)           # -0.85
    assert float(hi) == pytest.approx(0.9 * 3.0 + 0.1 * 1.0)            # 2.8
    lo, hi = ema_range(jnp.float32(-1), jnp.float32(3), jnp.int32(1), x2, None)
    assert (float(lo), float(hi)) == (-1.0, 3.0)                       # min-max keeps extremes
    lo, hi = ema_range(jnp.float32(-1), jnp.float32(3), jnp.int32(2), jnp.array([-2.0, 4.0]), None)
    assert (float(lo), float(hi)) == (-2.0, 4.0)


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
    xq = qn.QValue.of(qn.quantize(x, s, zp, qn.UINT8), None, s, zp, qn.UINT8, "x")
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
    codes = np.asarray(out1.codes)
    assert codes.dtype == np.int32
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


def test_qat_step_trains_both_modes_and_ranges_follow_both(tiny_data, tmp_path):
    from conftest import tiny_cfg
    from jaxdepth.encodings import get_encoding
    from jaxdepth.models import build_model, quant_for
    from jaxdepth.quant.calibrate import calibrate
    from jaxdepth.train_lib import (init_state, make_mesh, make_optimizer, make_train_step,
                                    replicate, shard_batch)
    from jaxdepth.data.sources import eval_pipeline

    cfg = tiny_cfg(tiny_data, tmp_path, quant__qat_steps=10)
    mesh, opt = make_mesh(), make_optimizer(cfg)
    d = cfg.data
    state = init_state(build_model(cfg.model), opt, 0, d.height, d.width)
    batch = next(iter(eval_pipeline(cfg, "calib").epoch(0)))
    state = replicate(state.replace(quant=calibrate(build_model(cfg.model), state.variables, [batch], True)), mesh)
    step = make_train_step(build_model(cfg.model, quant_for(cfg, "fake")), get_encoding(cfg.model),
                           opt, cfg, mesh, qat=True)
    before = jax.tree.map(np.asarray, state.quant)
    new, stats = step(state, shard_batch({k: batch[k][:2] for k in ("rgb", "depth", "lidar")}, mesh))
    assert all(np.isfinite(float(stats[k])) for k in ("loss", "loss_lidar", "loss_mono", "consistency"))
    after = jax.tree.map(np.asarray, new.quant)
    count = lambda tree, *path: int(functools.reduce(lambda t, k: t[k], path, tree)["out"]["count"])
    # The decoder ran twice (RGB + LiDAR, then RGB only); the SAN and the fusions once.
    assert count(after, "decoder", "upconv0_1") == count(before, "decoder", "upconv0_1") + 2
    assert count(after, "san", "stage0", "sum") == count(before, "san", "stage0", "sum") + 1
    assert count(after, "fuse0") == count(before, "fuse0") + 1
