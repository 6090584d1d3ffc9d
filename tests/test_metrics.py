import jax.numpy as jnp
import numpy as np
import pytest

from jaxdepth.metrics import NAMES, MetricAccumulator, image_metrics, valid_mask


def metrics_of(pred, gt, **kw):
    m, ok = image_metrics(jnp.asarray(pred, jnp.float32), jnp.asarray(gt, jnp.float32), 0.5, 15.0, **kw)
    return dict(zip(NAMES, np.asarray(m)[0])), bool(ok[0])


def test_hand_computed_values():
    gt = [[[2.0, 4.0, 0.0, 20.0]]]        # last two invalid (0 and > max)
    pred = [[[2.5, 3.0, 9.0, 9.0]]]
    m, ok = metrics_of(pred, gt)
    assert ok
    assert m["abs_rel"] == pytest.approx((0.5 / 2 + 1 / 4) / 2)
    assert m["sq_rel"] == pytest.approx((0.25 / 2 + 1 / 4) / 2)
    assert m["rmse"] == pytest.approx(np.sqrt((0.25 + 1) / 2))
    assert m["rmse_log"] == pytest.approx(np.sqrt((np.log(1.25) ** 2 + np.log(0.75) ** 2) / 2), rel=1e-5)
    # ratios 1.25 (not < 1.25) and 4/3: a1 = 0, a2 = 1, a3 = 1
    assert (m["a1"], m["a2"], m["a3"]) == (0.0, 1.0, 1.0)


def test_predictions_clamped_to_range():
    m, _ = metrics_of([[[0.01, 100.0]]], [[[1.0, 10.0]]])
    assert m["abs_rel"] == pytest.approx((0.5 / 1.0 + 5.0 / 10.0) / 2)


def test_median_scaling():
    m, _ = metrics_of([[[2.0, 4.0, 6.0]]], [[[1.0, 2.0, 3.0]]], median_scaling=True)
    assert m["abs_rel"] == pytest.approx(0.0, abs=1e-6)


def test_image_without_valid_pixel_is_skipped_not_zero():
    gt = jnp.array([[[2.0, 4.0]], [[0.0, 0.0]]])
    pred = jnp.array([[[3.0, 4.0]], [[5.0, 5.0]]])
    m, ok = image_metrics(pred, gt, 0.5, 15.0)
    assert list(np.asarray(ok)) == [True, False]
    acc = MetricAccumulator()
    acc.add(m, ok)
    res = acc.result()
    assert res["abs_rel"] == pytest.approx(0.25)     # only image 0: (0.5 + 0) / 2
    assert res["images"] == 1 and res["skipped_images"] == 1


def test_strict_range_and_garg_crop():
    gt = jnp.array([[[0.5, 15.0, 1.0]]])
    assert list(np.asarray(valid_mask(gt, 0.5, 15.0))[0, 0]) == [False, False, True]
    mask = np.asarray(valid_mask(jnp.full((1, 100, 100), 5.0), 0.5, 15.0, garg_crop=True))[0]
    assert not mask[:40].any() and mask[41:99, 4:96].all() and not mask[:, :3].any()


def test_average_over_images_not_pixels():
    gt = jnp.array([[[2.0, 2.0, 2.0, 2.0]], [[2.0, 0.0, 0.0, 0.0]]])
    pred = jnp.array([[[2.0, 2.0, 2.0, 2.0]], [[3.0, 1.0, 1.0, 1.0]]])
    acc = MetricAccumulator()
    acc.add(*image_metrics(pred, gt, 0.5, 15.0))
    assert acc.result()["abs_rel"] == pytest.approx((0.0 + 0.5) / 2)
