"""Shapes, channels and strides of ResNetSAN01 (REFERENCE.md section 3), by shape tracing."""
import jax
import jax.numpy as jnp
import pytest

from jaxdepth.config import ModelConfig
from jaxdepth.models import build_model
from jaxdepth.models.resnet import ResNetEncoder
from jaxdepth.models.san import SparseEncoder

H, W = 64, 128
RGB = jax.ShapeDtypeStruct((2, H, W, 3), jnp.float32)
LIDAR = jax.ShapeDtypeStruct((2, H, W), jnp.float32)
EXPECTED = [(64, 2), (64, 4), (128, 8), (256, 16), (512, 32)]


def feature_shapes(module, x):
    def run(x):
        variables = module.init(jax.random.PRNGKey(0), x)
        return module.apply(variables, x)
    return [f.shape for f in jax.eval_shape(run, x)]


@pytest.mark.parametrize("depth", ["resnet18", "resnet34"])
def test_encoder_features(depth):
    shapes = feature_shapes(ResNetEncoder(depth), RGB)
    assert shapes == [(2, H // s, W // s, c) for c, s in EXPECTED]


def test_resnet_block_counts():
    variables = jax.eval_shape(lambda x: ResNetEncoder("resnet34").init(jax.random.PRNGKey(0), x), RGB)
    blocks = [k for k in variables["params"] if k.startswith("layer")]
    assert len(blocks) == 3 + 4 + 6 + 3
    assert variables["params"]["conv1"]["kernel"].shape == (7, 7, 3, 64)


def test_san_features_and_kernels():
    san = SparseEncoder(kernels=(5, 5, 3, 3, 3), path_depths=(1, 2, 3))
    assert feature_shapes(san, LIDAR) == [(2, H // s, W // s, c) for c, s in EXPECTED]
    params = jax.eval_shape(lambda x: san.init(jax.random.PRNGKey(0), x), LIDAR)["params"]
    stage0 = params["stage0"]
    assert stage0["path1_0"]["kernel"].shape == (5, 5, 2, 64)       # inverse depth + mask
    assert stage0["path3_2"]["kernel"].shape == (5, 5, 64, 64)
    assert params["stage2"]["path2_0"]["kernel"].shape == (3, 3, 64 + 1, 128)    # + mask channel
    assert sorted(k for k in stage0 if k.startswith("path")) == [
        "path1_0", "path2_0", "path2_1", "path3_0", "path3_1", "path3_2"]


def test_the_stride2_san_stage_takes_its_own_paths():
    san = SparseEncoder(kernels=(3, 3, 3, 3, 3), path_depths=(1, 2), stage0_path_depths=(1,))
    assert feature_shapes(san, LIDAR) == [(2, H // s, W // s, c) for c, s in EXPECTED]
    params = jax.eval_shape(lambda x: san.init(jax.random.PRNGKey(0), x), LIDAR)["params"]
    paths = lambda stage: sorted(k for k in params[stage] if k.startswith("path"))
    assert paths("stage0") == ["path1_0"]
    assert paths("stage1") == paths("stage4") == ["path1_0", "path2_0", "path2_1"]


@pytest.mark.parametrize("encoding, channels", [("inverse", 1), ("intfrac", 2)])
def test_heads_at_four_scales_in_training_and_one_at_inference(encoding, channels):
    model = build_model(ModelConfig(encoding=encoding))

    def run(rgb, lidar):
        v = model.init(jax.random.PRNGKey(0), rgb, lidar, all_scales=True)
        return (model.apply(v, rgb, lidar, all_scales=True), model.apply(v, rgb, lidar),
                model.apply(v, rgb, None))
    train, infer, mono = jax.eval_shape(run, RGB, LIDAR)
    assert [h.shape for h in train] == [(2, H // 2 ** s, W // 2 ** s, channels) for s in range(4)]
    assert [h.shape for h in infer] == [(2, H, W, channels)]
    assert [h.shape for h in mono] == [(2, H, W, channels)]


def test_decoder_channels_and_fusion_params():
    model = build_model(ModelConfig())
    v = jax.eval_shape(lambda r, l: model.init(jax.random.PRNGKey(0), r, l, all_scales=True), RGB, LIDAR)
    dec = v["params"]["decoder"]
    assert [dec[f"upconv{i}_0"]["kernel"].shape[-1] for i in range(5)] == [16, 32, 64, 128, 256]
    assert dec["upconv4_0"]["kernel"].shape == (3, 3, 512, 256)
    assert dec["upconv1_1"]["kernel"].shape == (3, 3, 32 + 64, 32)         # up + skip 0
    assert [v["params"][f"fuse{i}"]["gate"].shape for i in range(5)] == [(c,) for c, _ in EXPECTED]


def test_fusion_init_and_monocular_equals_rgb_path(tiny_model):
    model, variables = tiny_model
    fuse = variables["params"]["fuse0"]
    assert float(fuse["gate"][0]) == 0.5 and float(fuse["bias"][0]) == 0.0
    rgb = jax.random.uniform(jax.random.PRNGKey(1), (1, 32, 64, 3))
    lidar = jnp.where(jax.random.uniform(jax.random.PRNGKey(2), (1, 32, 64)) < 0.05, 4.0, 0.0)
    mono = jax.jit(lambda v, r: model.apply(v, r, None)[0])(variables, rgb)
    completed = jax.jit(lambda v, r, l: model.apply(v, r, l)[0])(variables, rgb, lidar)
    dual = jax.jit(lambda v, r, l: model.apply(v, r, l, dual=True))(variables, rgb, lidar)
    # One forward, both passes: each equals the model run in that mode alone.
    assert jnp.allclose(dual.mono[0], mono) and jnp.allclose(dual.lidar[0], completed)
    assert not jnp.allclose(mono, completed)
    assert float(dual.consistency) > 0.0
    assert float(mono.min()) >= 0.0 and float(mono.max()) <= 1.0


