"""Post-training quantization: calibration set selection, range estimators with known
optima, cross-layer equalization, bias correction, AdaRound, the calibrated checkpoint."""
from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import tiny_cfg

from jaxdepth.data import selection
from jaxdepth.models import FLOAT, Quant, build_model
from jaxdepth.models.layers import Conv, Input, same_padding, value
from jaxdepth.models.resnet import BasicBlock
from jaxdepth.quant import aqt_backend, ranges
from jaxdepth.quant import numerics as qn
from jaxdepth.quant.adaround import adaround, objective, optimise_rounding, patches_at_random
from jaxdepth.quant.bias_correction import correct_biases, output_shifts
from jaxdepth.quant.calibrate import calibrate
from jaxdepth.quant.cle import equalize
from jaxdepth.quant.folding import FoldedConvs
from jaxdepth.quant.weight_ranges import mse_clip

H, W = 32, 64


# ----------------------------------------------------------------------------------------
# Calibration set selection.
# ----------------------------------------------------------------------------------------
def test_stratified_selection_takes_the_reference_shares():
    depths = np.concatenate([np.full(60, 1.0), np.full(80, 5.0), np.full(60, 10.0), np.full(30, 20.0)])
    idx = selection.select_stratified(depths, 100, seed=1)
    assert len(set(idx.tolist())) == 100
    assert np.bincount(np.searchsorted([3, 8, 15], depths[idx], side="right")).tolist() == [25, 40, 25, 10]


def test_short_depth_bin_gives_its_shortfall_to_the_others():
    counts = selection.stratum_counts([100, 100, 100, 4], selection.REFERENCE_SHARES, 100)
    assert counts.tolist()[3] == 4 and counts.sum() == 100
    assert counts.tolist() == [27, 43, 26, 4]      # 6 missing spread 25:40:25, ties to the first


def test_selection_rejects_impossible_requests():
    with pytest.raises(ValueError, match="cannot select 50 calibration images from a split of 10"):
        selection.select_random(10, 50)
    with pytest.raises(ValueError, match="sum to 1"):
        selection.select_stratified(np.ones(10), 5, (0, 3, np.inf), (0.5, 0.4))
    with pytest.raises(ValueError, match="increasing edges"):
        selection.select_stratified(np.ones(10), 5, (0, 3), (0.5, 0.5))


# ----------------------------------------------------------------------------------------
# Activation range estimators.
# ----------------------------------------------------------------------------------------
RNG = np.random.default_rng(0)


def test_mse_range_of_a_uniform_sample_is_its_maximum():
    x = RNG.uniform(0, 1, 100_000)
    lo, hi = ranges.mse_range(ranges.Histogram.of(x), qn.UINT8)
    assert lo == 0 and hi == pytest.approx(1.0, abs=0.01)


def test_mse_range_of_a_laplace_distribution_is_the_known_optimum():
    # Exact Laplace(0, 1) bin masses over [-20, 20]: the MSE-optimal symmetric 8-bit
    # clipping threshold is 9.89 b (Banner et al., "ACIQ", 2019); min-max would take 20.
    edges = np.linspace(-20, 20, ranges.BINS + 1)
    cdf = np.where(edges < 0, 0.5 * np.exp(edges), 1 - 0.5 * np.exp(-edges))
    h = ranges.Histogram(-20.0, 20.0, np.round(1e9 * np.diff(cdf)).astype(np.int64))
    lo, hi = ranges.mse_range(h, qn.INT8)
    assert -lo == hi == pytest.approx(9.89, abs=0.2)


def test_kl_range_clips_an_outlier_that_min_max_keeps():
    x = np.append(np.abs(RNG.normal(0, 1, 100_000)), 50.0)
    h = ranges.Histogram.of(x)
    lo, hi = ranges.kl_range(h, qn.UINT8)
    assert ranges.minmax_range(h, qn.UINT8) == (0, 50.0)
    assert lo == 0 and 3.0 < hi < 8.0
    assert ranges.percentile_range(h, qn.UINT8)[1] == pytest.approx(3.9, abs=0.1)   # 99.99 % of |N|


def test_exact_zeros_do_not_narrow_the_ranges():
    x = RNG.uniform(0, 1, 20_000)
    with_zeros = ranges.Histogram.of(np.concatenate([x, np.zeros(200_000)]))
    assert with_zeros.zeros == 200_000
    for est in ("mse", "kl"):
        assert ranges.estimate({"t": with_zeros}, est, qn.UINT8)["t"][1] == pytest.approx(1.0, abs=0.02)


def test_weight_mse_clipping_finds_the_brute_force_threshold_and_never_loses():
    w = RNG.laplace(0, 1, (3, 3, 32, 16)).astype(np.float32)
    w[0, 0, 0, :] *= 4                                       # channels with outliers

    def error(k, per_channel):
        codes, scale = aqt_backend.quantize_weights(jnp.asarray(k), per_channel)
        return np.square(np.asarray(codes * scale) - w).sum(axis=(0, 1, 2))
    t = np.linspace(0.3, 1, 400)[:, None] * np.abs(w).max()        # per-tensor thresholds
    s = t / 127                                                    # AQT: round half even, +-127
    brute = np.square(np.clip(np.round(w.ravel() / s), -127, 127) * s - w.ravel()).sum(axis=1).min()
    assert error(mse_clip(w, False), False).sum() <= 1.01 * brute
    assert brute < 0.98 * error(w, False).sum()
    per_channel = error(mse_clip(w, True), True)
    assert np.all(per_channel <= error(w, True) * (1 + 1e-6))


# ----------------------------------------------------------------------------------------
# Weight transformations on a small network of the model's own blocks.
# ----------------------------------------------------------------------------------------
class ToyNet(nn.Module):
    """Stem conv, one residual block (a conv-ReLU-conv chain), a head conv."""

    quant: Quant = FLOAT
    sparse: bool = False

    @nn.compact
    def __call__(self, rgb, lidar=None, train: bool = False):
        x = Input("rgb", quant=self.quant, name="input")(rgb)
        x = Conv(8, 3, 2, quant=self.quant, name="stem")(x, train)
        x = BasicBlock(8, 1, self.quant, name="block")(x, train)
        return [value(Conv(2, 3, bn=False, relu=False, quant=self.quant, name="head")(x, train))]


@functools.cache
def _toy():
    """(variables with uneven BN scales and statistics, as trained ones, and min-max
    ranges; calibration batches)."""
    model = ToyNet()
    key = jax.random.PRNGKey(0)
    batches = [{"rgb": jax.random.uniform(jax.random.fold_in(key, i), (4, 16, 16, 3))} for i in range(3)]
    variables = model.init(key, batches[0]["rgb"])
    keys = iter(jax.random.split(jax.random.PRNGKey(1), 100))
    rand = lambda x, lo, hi: jax.random.uniform(next(keys), x.shape, x.dtype, lo, hi)
    variables = {**variables,
                 "params": jax.tree.map(lambda x: x * rand(x, 0.1, 3.0) if x.ndim == 1 else x,
                                        variables["params"]),
                 "batch_stats": jax.tree.map(lambda x: x + rand(x, 0.0, 0.5), variables["batch_stats"])}
    variables["params"]["block"]["conv1"]["bn_bias"] = variables["params"]["block"]["conv1"]["bn_scale"]
    variables = {**variables, "quant": calibrate(model, variables, batches, use_lidar=False)}
    return variables, batches


FAKE = Quant("fake", qn.get_scheme("npu_strict"))


def test_cle_preserves_the_fp32_output_and_evens_the_channel_ranges():
    variables, batches = _toy()
    equalized, pairs = equalize(variables)
    assert pairs == [("block/conv1", "block/conv2")]
    x = batches[0]["rgb"]
    np.testing.assert_allclose(ToyNet().apply(equalized, x)[0], ToyNet().apply(variables, x)[0],
                               rtol=1e-5, atol=1e-5)

    def spread(v):      # max / min of the per-output-channel ranges of conv1's folded kernel
        r = np.abs(FoldedConvs(v).folded("block/conv1")[0]).max(axis=(0, 1, 2))
        return r.max() / r.min()
    assert spread(equalized) < 0.5 * spread(variables)


def test_bias_correction_removes_the_mean_output_shift():
    variables, batches = _toy()
    fake = ToyNet(FAKE)
    shift = output_shifts(fake, variables, batches, False)
    corrected = correct_biases(fake, variables, batches, False)
    after = output_shifts(fake, corrected, batches, False)
    convs, fixed = FoldedConvs(variables), FoldedConvs(corrected)
    # What is left: the corrected model's shift (its inputs changed too) minus the bias added.
    residual = {p: after[p] - (fixed.folded(p)[1] - convs.folded(p)[1]) for p in shift}
    before = np.mean([np.abs(s).mean() for s in shift.values()])
    left = np.mean([np.abs(r).mean() for r in residual.values()])
    assert set(shift) == {"stem", "block/conv1", "block/conv2", "head"}
    assert before > 0 and left < 0.1 * before


def test_adaround_is_never_worse_than_nearest_rounding_on_its_objective():
    key = jax.random.PRNGKey(0)
    w = jax.random.normal(key, (36, 4))
    x = jax.random.normal(jax.random.fold_in(key, 1), (128, 36)) @ jax.random.normal(
        jax.random.fold_in(key, 2), (36, 36))                     # correlated inputs
    for per_channel in (False, True):
        _, scale = aqt_backend.quantize_weights(w, per_channel)
        nearest = jnp.clip(jnp.round(w / scale), -127, 127)
        codes = optimise_rounding(w, scale, x, 200)
        assert objective(codes, scale, w, x) < 0.97 * objective(nearest, scale, w, x)
        assert jnp.all(jnp.abs(codes - w / scale) < 1)            # floor or ceil of each weight
        assert jnp.max(jnp.abs(codes)) == 127                     # the scale's weight kept
    # Inputs that see no error (all zero): nothing to gain, nearest rounding is kept.
    _, scale = aqt_backend.quantize_weights(w, False)
    np.testing.assert_array_equal(optimise_rounding(w, scale, jnp.zeros_like(x), 50), jnp.round(w / scale))
    # The choice is made on the held-out patches: where they see no error, nearest is kept.
    held_out = optimise_rounding(w, scale, x, 50, x_check=jnp.zeros_like(x))
    np.testing.assert_array_equal(held_out, jnp.round(w / scale))


def test_sampled_patches_are_the_convs_own_input_patches():
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 9, 11, 3))
    for kernel, stride in ((3, 1), (3, 2), (1, 2), (7, 2)):
        full = jax.lax.conv_general_dilated_patches(x, (kernel,) * 2, (stride,) * 2, same_padding(kernel),
                                                    dimension_numbers=("NHWC", "HWIO", "NHWC"))
        full = np.asarray(full).reshape(-1, full.shape[-1])
        got = np.asarray(patches_at_random(x, kernel, stride, 40, jax.random.PRNGKey(1)))
        assert got.shape == (40, 3 * kernel * kernel)
        assert np.abs(got[:, None] - full[None]).max(-1).min(-1).max() == 0   # each is one of XLA's


def test_adaround_writes_kernels_that_aqt_quantizes_to_the_chosen_codes():
    variables, batches = _toy()
    rounded = adaround(ToyNet(FAKE), variables, batches, False)
    before, after = FoldedConvs(variables), FoldedConvs(rounded)
    changed = 0
    for p in before.paths:
        codes0, scale0 = aqt_backend.quantize_weights(jnp.asarray(before.folded(p)[0]), False)
        k = after.folded(p)[0]
        codes, scale = aqt_backend.quantize_weights(jnp.asarray(k), False)
        assert scale == pytest.approx(float(scale0), rel=1e-6)
        np.testing.assert_allclose(codes * scale, k, atol=1e-3 * float(scale))   # on the grid
        assert jnp.all(jnp.abs(codes - codes0) <= 1)
        changed += int(jnp.sum(codes != codes0))
    assert changed > 0


# ----------------------------------------------------------------------------------------
# A calibrated checkpoint of the tiny model: CLI, eval, integer export == fake quant.
# ----------------------------------------------------------------------------------------
def test_calibrated_checkpoint_reads_in_eval_and_exports_exactly(tiny_data, tmp_path, capsys):
    from jaxdepth import checkpoint
    from jaxdepth.calibrate import main
    from jaxdepth.config import absolute_paths, config_from_dict, to_dict
    from jaxdepth.evaluate import Evaluator
    from jaxdepth.export.compare import compare

    cfg = tiny_cfg(tiny_data, tmp_path / "fp32")
    model = build_model(cfg.model)
    variables = jax.jit(lambda k: model.init(k, jnp.zeros((1, H, W, 3)), jnp.zeros((1, H, W))))(
        jax.random.PRNGKey(0))
    run = tmp_path / "fp32"
    checkpoint.Checkpoints(run, keep=1).save(3, variables, {"config": to_dict(cfg), "phase": "fp32",
                                                            "metrics": None})
    out = tmp_path / "ptq"
    args = [str(run), "--method", "kl", "--weights", "mse", "--cle", "--bias-correction", "--num", "3",
            "--select", "stratified", "--out", str(out), "--no-progress"]
    assert main(args) == 0
    assert "quantization preset npu_strict" in capsys.readouterr().out
    state, meta, _ = checkpoint.load(out)
    assert meta["phase"] == "ptq" and len(meta["ptq"]["images"]) == 3
    assert meta["ptq"]["recipe"] == {**meta["ptq"]["recipe"], "activations": "kl", "weights": "mse",
                                     "cle": True, "bias_correction": True, "adaround": False}
    calibrated = {k: state[k] for k in ("params", "batch_stats", "quant")}
    assert checkpoint.has_ranges(calibrated)
    result = compare(Evaluator(absolute_paths(config_from_dict(meta["config"]))), calibrated, "test")
    assert result["agreement"]["equal"] == 1.0 and result["agreement"]["max_diff"] == 0
    assert main(args) == 2                                         # refuses to overwrite
    assert "already holds checkpoints" in capsys.readouterr().err
    bad = [str(run), "--num", "99", "--per-channel", "--out", str(tmp_path / "x"), "--no-progress"]
    assert main(bad) == 2
    assert "cannot select 99 calibration images from a split of 4" in capsys.readouterr().err
