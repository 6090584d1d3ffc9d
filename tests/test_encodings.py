from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import tiny_cfg
from jaxdepth.config import ModelConfig
from jaxdepth.data.sources import eval_pipeline
from jaxdepth.encodings import (ENCODINGS, InverseDepth, IntegerFraction, LogDepth, PhaseDepth, decode_codes,
                                get_encoding)
from jaxdepth.export import artifact
from jaxdepth.export import onnx as xonnx
from jaxdepth.export.exporter import export_graph
from jaxdepth.export.integer import make_integer_forward
from jaxdepth.models import build_model
from jaxdepth.quant.calibrate import calibrate

ALL = [InverseDepth(), LogDepth(), IntegerFraction(), PhaseDepth()]
WHOLE = np.arange(1.0, 16.0, dtype=np.float32)
BELOW = np.nextafter(WHOLE, np.float32(0))                  # just below every whole metre
DEPTHS = jnp.array(np.concatenate([[0.5, 0.99, 1.01, 2.5, 7.999, 14.99], WHOLE, BELOW]))


def uint8_round_trip(enc, depth: jax.Array) -> jax.Array:
    """Depth after the heads are rounded to uint8 codes, as the integer model outputs them."""
    return enc.decode(jnp.round(enc.encode(depth) * 255.0) / 255.0)


@pytest.mark.parametrize("enc", ALL, ids=lambda e: e.name)
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


@pytest.mark.parametrize("enc", ALL, ids=lambda e: e.name)
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


@pytest.mark.parametrize("enc, max_mm", [(IntegerFraction(), 1000 / 510 + 1e-3), (PhaseDepth(), 1.0)],
                         ids=["intfrac", "phase"])
def test_uint8_error_on_and_below_whole_metres(enc, max_mm):
    """One fraction code is 1/255 m (+-1.96 mm); one phase code at 1 m is < 1.25 mm."""
    depth = jnp.asarray(np.concatenate([[0.5], WHOLE, BELOW]))
    err = np.abs(np.asarray(uint8_round_trip(enc, depth)) - np.asarray(depth)) * 1000.0
    assert err.max() <= max_mm


@pytest.mark.parametrize("enc", [InverseDepth(), LogDepth()], ids=lambda e: e.name)
def test_single_heads_uint8_error_is_half_a_step(enc):
    depth = jnp.linspace(0.5, 15.0, 2001)
    s = enc.encode(depth)
    around = jnp.abs(enc.decode(s + 1 / 255) - enc.decode(s - 1 / 255))   # >= the step between the two codes
    err = jnp.abs(uint8_round_trip(enc, depth) - depth)
    assert bool(jnp.all(err <= 0.5 * around + 1e-5))


@pytest.mark.parametrize("enc", ALL, ids=lambda e: e.name)
def test_out_of_range_and_inconsistent_heads_decode_inside_the_range(enc):
    rng = np.random.default_rng(0)
    heads = np.concatenate([
        rng.uniform(-1.0, 2.0, (4000, enc.channels)),                     # beyond any code
        rng.integers(0, 256, (4000, enc.channels)) / 255.0,               # every code mix
        np.full((1, enc.channels), 0.5), np.zeros((1, enc.channels)), np.ones((1, enc.channels)),
    ]).astype(np.float32)
    depth = np.asarray(enc.decode(jnp.asarray(heads)))
    assert np.isfinite(depth).all()
    assert depth.min() >= enc.min_depth and depth.max() <= enc.max_depth


def test_intfrac_every_code_pair_decodes_inside_the_range():
    codes = np.stack(np.meshgrid(np.arange(256), np.arange(256)), -1).reshape(-1, 2) / 255.0
    depth = np.asarray(IntegerFraction().decode(jnp.asarray(codes, jnp.float32)))
    assert depth.min() == 0.5 and depth.max() == 15.0


def test_phase_channels_names_and_config():
    enc = get_encoding(ModelConfig(encoding="phase", min_depth=0.25, max_depth=12.0))
    assert isinstance(enc, PhaseDepth) and (enc.min_depth, enc.max_depth) == (0.25, 12.0)
    assert enc.channels == 5 and enc.head_names == ("coarse", "cos_4m", "sin_4m", "cos_1m", "sin_1m")
    t = enc.encode(jnp.array([0.25, 3.0, 12.0]))
    assert float(t.min()) >= 0.0 and float(t.max()) <= 1.0
    np.testing.assert_allclose(t[:, 0], [0.0, 2.75 / 11.75, 1.0], rtol=1e-6)


def test_phase_unwrapping_tolerates_coarse_errors_below_half_a_period():
    """A coarse error up to 2 m is undone by the 4 m pair, a 4 m pair error up to 0.5 m by
    the 1 m pair; a single 1 m period tolerates only 0.5 m of coarse error."""
    enc = PhaseDepth()
    depth = jnp.linspace(0.5, 15.0, 1451)
    heads = enc.encode(depth)
    for off in (-1.9, 1.9):
        shifted = heads.at[:, 0].add(off / enc.span)
        inside = (depth + off > 0.5) & (depth + off < 15.0)
        np.testing.assert_allclose(enc.decode(shifted)[inside], depth[inside], atol=1e-4)
    rot = enc.encode(depth + 0.45)[:, 1:3]                                  # 4 m pair 0.45 m off
    np.testing.assert_allclose(enc.decode(heads.at[:, 1:3].set(rot)), depth, atol=1e-4)
    single = PhaseDepth(periods=(1.0,))
    wrong = single.encode(depth).at[:, 0].add(0.6 / single.span)            # coarse 0.6 m off
    ok = depth + 1.0 < 15.0                                                 # d + 1 m is not clamped
    assert float(jnp.abs(single.decode(wrong) - depth)[ok].min()) > 0.9   # a whole period off


def test_phase_loss_terms_are_metres_of_depth():
    enc = PhaseDepth()
    depth, mask = jnp.array([[3.3]]), jnp.ones((1, 1), bool)
    heads = enc.encode(depth)
    coarse = heads.at[..., 0].set(enc.encode(depth + 0.1)[..., 0])         # coarse 0.1 m off
    assert float(enc.loss(coarse, depth, mask)) == pytest.approx(0.1, rel=1e-4)
    fine = heads.at[..., 3:5].set(enc.encode(depth + 0.01)[..., 3:5])     # 1 m pair 1 cm off
    assert float(enc.loss(fine, depth, mask)) == pytest.approx(0.01, rel=1e-3)
    grad = jax.grad(lambda h: enc.loss(h, depth, mask))(heads)
    assert bool(jnp.isfinite(grad).all())                                 # no NaN at the target


@pytest.mark.parametrize("name", sorted(ENCODINGS))
def test_every_encoding_through_the_integer_export(tiny_data, tmp_path, name):
    cfg = tiny_cfg(tiny_data, tmp_path, model__encoding=name)
    enc, (h, w) = get_encoding(cfg.model), (cfg.data.height, cfg.data.width)
    model = build_model(cfg.model)
    variables = jax.jit(lambda k: model.init(k, jnp.zeros((1, h, w, 3)), jnp.zeros((1, h, w))))(
        jax.random.PRNGKey(0))
    batch = next(iter(eval_pipeline(cfg, "calib").epoch(0)))
    variables = {**variables, "quant": calibrate(model, variables, [batch], use_lidar=True)}
    graph = export_graph(cfg, variables, h, w)
    codes = make_integer_forward(graph)(batch["rgb"], batch["lidar"])
    assert codes.dtype == jnp.uint8 and codes.shape == batch["rgb"].shape[:3] + (enc.channels,)
    depth = np.asarray(decode_codes(enc, codes))
    assert np.isfinite(depth).all() and depth.min() >= enc.min_depth and depth.max() <= enc.max_depth
    assert artifact.manifest(graph, cfg)["outputs"][0]["channel_names"] == list(enc.head_names)
    assert [o.name for o in xonnx.to_integer(graph, name).graph.output] == list(enc.head_names)


def test_lidar_encodings_keep_nearest_first_and_round_trip():
    from jaxdepth.encodings import LidarEncoding

    inv = LidarEncoding("inverse", 0.5, 15.0)
    x = inv.encode(jnp.array([[0.0, 0.5, 1.0, 10.0]]))
    assert jnp.allclose(x[..., 0], jnp.array([[0.0, 1.0, 0.5, 0.05]]))
    assert jnp.array_equal(x[..., 1], jnp.array([[0.0, 1.0, 1.0, 1.0]]))
    log = LidarEncoding("log", 0.5, 15.0)
    d = jnp.array([0.0, 0.5, 1.0, 5.0, 10.0, 15.0, 40.0])
    y = log.encode(d)
    # Nearness falls with depth (max-pool keeps the nearest return); max_depth stays one
    # code above "no return"; beyond max_depth clamps.
    assert float(y[1, 0]) == pytest.approx(1.0) and float(y[5, 0]) == pytest.approx(1 / 255)
    assert bool(jnp.all(jnp.diff(y[1:6, 0]) < 0)) and float(y[0, 0]) == 0.0
    np.testing.assert_allclose(log.decode(y), [0.0, 0.5, 1.0, 5.0, 10.0, 15.0, 15.0], rtol=1e-5)
    np.testing.assert_allclose(inv.decode(inv.encode(d)), [0.0, 0.5, 1.0, 5.0, 10.0, 15.0, 15.0], rtol=1e-5)
    # 8-bit codes: the log input's step is a uniform 1.34 %; the inverse one's grows as d^2.
    for enc, worst in ((log, 0.0068), (inv, 0.40)):
        depth = jnp.linspace(0.5, 15.0, 2001)
        codes = jnp.round(enc.encode(depth) * 255) / 255
        rel = jnp.abs(enc.decode(codes) - depth) / depth
        assert float(rel.max()) < worst, (enc.kind, float(rel.max()))
    with pytest.raises(ValueError, match="model.lidar_encoding"):
        LidarEncoding("linear")


@pytest.mark.parametrize("kind", ["log", "inverse"])
def test_fill_prior_maps_the_lidar_nearness_onto_the_head_exactly(kind):
    from jaxdepth.encodings import LidarEncoding, fill_prior

    head = {"log": LogDepth(0.5, 15.0), "inverse": InverseDepth(0.5, 15.0)}[kind]
    lidar = LidarEncoding(kind, 0.5, 15.0, fill=True)
    prior = fill_prior(head, lidar, k=5.0)
    depth = jnp.linspace(0.5, 15.0, 1001)
    near = lidar.encode(depth[None, None])[0, 0, :, 0]
    np.testing.assert_allclose(prior.a * near + prior.b, head.encode(depth)[:, 0], atol=2e-6)
    np.testing.assert_allclose(prior.head(jnp.zeros_like(near), near), head.encode(depth)[:, 0], atol=2e-6)


@pytest.mark.parametrize("k", [0.0, 5.0])
def test_fill_correction_companding(k):
    from jaxdepth.encodings import FillCorrection

    c = FillCorrection(-1.0, 1.0, k)
    t = jnp.linspace(-1.0, 1.0, 2001)
    np.testing.assert_allclose(c.expand(c.compress(t)), t, atol=2e-6)
    # The ends reach a correction of the whole range; beyond them the value saturates.
    np.testing.assert_allclose(c.expand(jnp.array([-7.0, -1.0, 0.0, 1.0, 7.0])), [-1, -1, 0, 1, 1], atol=1e-6)
    # One code of the uint8 grid over [-1, 1] (2 / 255) next to 0 and at the end.
    step = 2.0 / 255.0
    near0, end = float(c.expand(jnp.float32(step))), 1.0 - float(c.expand(jnp.float32(1.0 - step)))
    if k == 0:
        assert near0 == pytest.approx(step) and end == pytest.approx(step, rel=1e-4)
    else:   # k / sinh(k) per unit of z next to 0: 7.5x finer than linear; 5x coarser at the end
        assert near0 == pytest.approx(step * 5.0 / np.sinh(5.0), rel=1e-3)
        assert end == pytest.approx(step * 5.0 / np.tanh(5.0), rel=0.05)
    # The gradient at z = 0 (where a zero-initialised head starts) is not 0.
    assert float(jax.grad(lambda z: c.expand(z))(0.0)) == pytest.approx(1.0 if k == 0 else 5.0 / np.sinh(5.0), rel=1e-5)


@pytest.mark.parametrize("phases", [1, 2, 4])
def test_phase_copies_round_finer(phases):
    from jaxdepth.quant import integer_ops as iops
    from jaxdepth.quant import numerics as qn

    r = iops.CORRECTION_RANGE
    scale, zp = qn.fixed_qparams(*r, iops.HEAD_FORMAT)
    z = jnp.linspace(-0.99, 0.99, 20001)[:, None]                  # (P, 1): one channel
    copies = iops.spread_phases(z, phases, r)
    assert copies.shape == (20001, phases)
    np.testing.assert_allclose(iops.merge_phases(copies, phases, r), z, atol=1e-6)   # inverse on real values
    codes = qn.quantize(copies, scale, zp, iops.HEAD_FORMAT)
    # copy i rounds i / phases of a code later: its code is the first copy's or one more
    assert set(np.unique(np.asarray(codes - codes[:, :1]))) <= {0, 1}
    err = np.abs(np.asarray(iops.merge_phases((codes - zp) * scale, phases, r) - z))
    # within half a code / phases, and uniform over that interval: the mean error is a quarter of it
    assert err.max() <= float(scale) / (2 * phases) + 1e-6
    assert err.mean() == pytest.approx(float(scale) / (4 * phases), rel=0.02)
    # two channels (C = 2) keep their copies apart
    two = jnp.concatenate([z, -z], axis=-1)
    np.testing.assert_allclose(iops.merge_phases(iops.spread_phases(two, phases, r), phases, r), two, atol=1e-6)


@pytest.mark.parametrize("k", [0.0, 5.0])
def test_fill_correction_code_loss_is_l1_in_z(k):
    from jaxdepth.encodings import FillCorrection

    c = FillCorrection(-1.0, 1.0, k)
    rng = np.random.default_rng(0)
    fill = jnp.asarray(rng.uniform(0.2, 0.8, (2, 3, 4, 1)), jnp.float32)
    z_head, z_target = (jnp.asarray(rng.uniform(-0.6, 0.6, (2, 3, 4, 1)), jnp.float32) for _ in range(2))
    mask = jnp.asarray(rng.random((2, 3, 4)) < 0.7)
    heads, target = c.head(z_head, fill), c.head(z_target, fill)
    want = np.abs(np.asarray(z_head - z_target))[..., 0][np.asarray(mask)].mean()
    assert float(c.code_loss(heads, target, fill, mask)) == pytest.approx(want, rel=1e-4)
    assert float(c.code_loss(target, target, fill, mask)) == pytest.approx(0.0, abs=1e-6)
    # Each valid pixel pulls its z by the same amount, small correction or large: the
    # gradient in z is sign / (valid pixels), not weighted by expand'(z).
    grad = jax.grad(lambda z: c.code_loss(c.head(z, fill), target, fill, mask))(z_head)[..., 0]
    n = int(mask.sum())
    np.testing.assert_allclose(np.abs(np.asarray(grad))[np.asarray(mask)], 1.0 / n, rtol=2e-3)
    assert not np.asarray(grad)[~np.asarray(mask)].any()


def test_output_decoder_adds_the_host_fill_to_the_correction_codes():
    from jaxdepth.encodings import output_decoder
    from jaxdepth.quant import integer_ops as iops
    from jaxdepth.quant import numerics as qn

    cfg = tiny_cfg(Path("data"), Path("run"), model__encoding="log", model__lidar_encoding="log",
                   model__lidar_fill=True, model__fill_prior=True, model__correction_curve=5.0)
    lidar = np.zeros((1, 4, 6), np.float32)
    lidar[0, 1, 1], lidar[0, 2, 4] = 1.2345, 9.8765
    decode = output_decoder(cfg.model, use_lidar=True)
    zero = int(qn.fixed_qparams(*iops.CORRECTION_RANGE, iops.HEAD_FORMAT)[1])
    # The zero point's code is z = 0: nearest fill at full float precision, not on the
    # input's 8-bit grid.
    at_fill = np.asarray(decode(np.full((1, 4, 6, 1), zero, np.int32), lidar))
    np.testing.assert_allclose(at_fill[0, 1, :3], 1.2345, rtol=1e-5)
    np.testing.assert_allclose(at_fill[0, 2, 3:], 9.8765, rtol=1e-5)
    # The extreme codes stay finite and inside [min, max]; one code up from 128 is a
    # correction of k / sinh(k) * 2 / 255 of the log range (0.18 % of the depth) up to float
    # rounding of the grid's scale.
    for code in (0, 255):
        d = np.asarray(decode(np.full((1, 4, 6, 1), code, np.int32), lidar))
        assert np.all(np.isfinite(d)) and d.min() >= 0.5 and d.max() <= 15.0
    up = np.asarray(decode(np.full((1, 4, 6, 1), zero + 1, np.int32), lidar))
    np.testing.assert_allclose(up / at_fill, np.exp(np.log(30.0) * 2 / 255 * 5 / np.sinh(5.0)), rtol=1e-4)
    # The monocular graph outputs sigmoid codes: value = code / 255.
    mono = output_decoder(cfg.model, use_lidar=False)(np.full((1, 4, 6, 1), 255, np.int32), None)
    np.testing.assert_allclose(mono, 15.0, rtol=1e-5)


def test_fill_prior_refuses_pairs_without_an_affine_map():
    from jaxdepth.config import ConfigError
    from jaxdepth.encodings import LidarEncoding, fill_prior

    with pytest.raises(ValueError, match="no affine map"):
        fill_prior(IntegerFraction(), LidarEncoding("log", fill=True))
    with pytest.raises(ValueError, match="model.lidar_fill"):
        fill_prior(LogDepth(), LidarEncoding("log"))
    with pytest.raises(ConfigError, match="'inverse' LiDAR input to the 'log' head"):
        tiny_cfg(Path("data"), Path("run"), model__encoding="log", model__lidar_fill=True,
                 model__fill_prior=True)
    # Without a SAN there is no LiDAR pass: the option has nothing to act on.
    cfg = tiny_cfg(Path("data"), Path("run"), model__sparse=False, model__fill_prior=True)
    assert build_model(cfg.model).prior is None


def test_nearest_fill_picks_a_nearest_return_like_a_distance_transform():
    from scipy import ndimage

    from jaxdepth.encodings import nearest_fill

    rng = np.random.default_rng(0)
    h, w = 40, 150
    valid = rng.random((3, h, w)) < 0.03
    valid[2] = False                                        # an image without returns
    rows, cols = np.mgrid[:h, :w].astype(np.float32)
    fill = jax.jit(nearest_fill)
    # Filling the coordinates gives the seed each pixel took: at a nearest distance (ties
    # may pick another seed than scipy's), and the seeds themselves keep their value.
    r = np.asarray(fill(jnp.asarray(np.broadcast_to(rows, (3, h, w))), jnp.asarray(valid)))
    c = np.asarray(fill(jnp.asarray(np.broadcast_to(cols, (3, h, w))), jnp.asarray(valid)))
    for i in range(2):
        nearest = ndimage.distance_transform_edt(~valid[i])
        np.testing.assert_allclose(np.hypot(r[i] - rows, c[i] - cols), nearest, atol=1e-4)
        assert np.array_equal(r[i][valid[i]], rows[valid[i]])
    assert not r[2].any() and not c[2].any()
