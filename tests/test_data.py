"""Tests of the data package: synthetic scenes, the PNG folder format and the batch pipeline."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from jaxdepth.data import (
    Augment,
    DataError,
    FolderDataset,
    Pipeline,
    ensure_dataset,
    generate_dataset,
    read_depth_png,
    read_rgb_png,
    render_scene,
    resize_sample,
    write_depth_png,
)
from jaxdepth.data.lidar_sim import LidarParams
from jaxdepth.data.synthetic import FORMAT_VERSION, _develop, _Response, sample_name, sample_rng

H, W = 32, 64
COUNTS = {"train": 5, "val": 2, "test": 1, "calib": 1}


@pytest.fixture(scope="module")
def dataset_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_dataset(tmp_path_factory.mktemp("synthetic"), height=H, width=W, counts=COUNTS)


def _scene(seed: int, height: int = H, width: int = W) -> dict:
    return render_scene(np.random.default_rng(seed), height, width)


# ----------------------------------------------------------------------------- synthetic


def test_render_is_deterministic_per_seed() -> None:
    a, b, c = _scene(7), _scene(7), _scene(8)
    for key in ("rgb", "depth", "lidar"):
        np.testing.assert_array_equal(a[key], b[key])
    assert not np.array_equal(a["depth"], c["depth"])
    assert not np.array_equal(a["rgb"], c["rgb"])


def test_render_shapes_ranges_and_lidar() -> None:
    valid, far, density = [], [], []
    for seed in range(6):
        s = _scene(seed, 48, 160)
        rgb, depth, lidar = s["rgb"], s["depth"], s["lidar"]
        assert rgb.shape == (48, 160, 3) and depth.shape == lidar.shape == (48, 160)
        assert rgb.dtype == depth.dtype == lidar.dtype == np.float32
        assert 0.0 <= rgb.min() and rgb.max() <= 1.0 and rgb.std() > 0.02
        positive = depth[depth > 0]
        assert positive.min() > 0.5 and positive.max() < 15.0
        returns = lidar > 0
        assert lidar[returns].min() > 0.5 and lidar[returns].max() < 15.0
        error = lidar[returns & (depth > 0)] - depth[returns & (depth > 0)]
        assert 0.005 < np.median(np.abs(error)) < 0.05  # the 2 cm range noise, not exact depth
        assert np.mean(np.abs(error) > 0.1) < 0.15  # parallax and sub-pixel slopes, a few %
        valid.append((depth > 0).mean())
        far.append((depth > 10.0).any())
        density.append(returns.mean())
    assert min(valid) > 0.95
    assert any(far)  # the far range is populated
    assert all(0.03 <= d <= 0.06 for d in density), density


def test_lidar_density_at_small_size() -> None:
    for seed in range(4):
        s = _scene(seed)
        assert 0.03 <= (s["lidar"] > 0).mean() <= 0.065


def test_lidar_parameters_change_only_the_lidar() -> None:
    rng = lambda: np.random.default_rng(3)
    a = render_scene(rng(), H, W)
    b = render_scene(rng(), H, W, lidar=LidarParams(offset=(0.0, 0.0, 0.0), range_noise=0.0))
    np.testing.assert_array_equal(a["rgb"], b["rgb"])
    np.testing.assert_array_equal(a["depth"], b["depth"])  # ground truth is the exact scene
    assert not np.array_equal(a["lidar"], b["lidar"])


def test_camera_blur_and_noise_follow_their_parameters() -> None:
    rng = np.random.default_rng(0)
    flat = np.full((3, 64, 64), 0.25)
    noisy = _develop(rng, _Response(blur=0.0, gain=2.0, shot=1e-3, read=0.01, gamma=1.0), flat)
    # shot noise variance grows with the exposed signal (0.5), read noise adds a floor
    assert noisy.mean() == pytest.approx(0.5, abs=0.002)
    assert noisy.std() == pytest.approx(np.sqrt(1e-3 * 0.5 + 0.01**2), rel=0.05)
    toned = _develop(rng, _Response(blur=0.0, gain=1.0, shot=0.0, read=0.0, gamma=2.0), flat)
    np.testing.assert_allclose(toned, 0.5, rtol=1e-6)  # 0.25 ** (1 / 2)
    dot = np.zeros((3, 33, 33))
    dot[:, 16, 16] = 1.0
    spread = _develop(rng, _Response(blur=1.5, gain=1.0, shot=0.0, read=0.0, gamma=1.0), dot)[..., 0]
    offsets = np.arange(33) - 16
    assert spread.sum() == pytest.approx(1.0, rel=1e-4)  # blur moves light, keeps it
    assert np.sqrt((spread.sum(axis=1) * offsets**2).sum()) == pytest.approx(1.5, rel=0.02)


def test_rendered_lidar_noise_matches_the_sensor() -> None:
    noisy, exact = [], []
    for seed in range(6):
        pair = [render_scene(np.random.default_rng(seed), 48, 160, lidar=LidarParams(range_noise=sigma))
                for sigma in (0.02, 0.0)]
        both = (pair[0]["lidar"] > 0) & (pair[1]["lidar"] > 0)
        noisy.append(pair[0]["lidar"][both])
        exact.append(pair[1]["lidar"][both])
    error = np.concatenate(noisy) - np.concatenate(exact)
    # z-depth noise: the 2 cm range noise times the beam's forward component (0.7-1)
    assert len(error) > 1000 and 0.015 < np.std(error[np.abs(error) < 0.2]) < 0.021


def test_rendered_parallax_needs_the_mounting_offset() -> None:
    def share_behind(params: LidarParams) -> float:
        behind, total = 0, 0
        for seed in range(6):
            s = render_scene(np.random.default_rng(seed), 48, 160, lidar=params)
            returns = (s["lidar"] > 0) & (s["depth"] > 0)
            behind += int((s["lidar"][returns] > s["depth"][returns] + 0.3).sum())
            total += int(returns.sum())
        return behind / total

    centred = share_behind(LidarParams(offset=(0.0, 0.0, 0.0), range_noise=0.0))
    mounted = share_behind(LidarParams(range_noise=0.0))
    # Centred, only sub-pixel slopes put a return behind its pixel's centre; mounted, returns
    # seen past foreground edges land on foreground pixels.
    assert centred < 0.004 and mounted > 0.008, (centred, mounted)


def test_generated_files_round_trip(dataset_root: Path) -> None:
    meta = json.loads((dataset_root / "meta.json").read_text())
    assert meta["height"] == H and meta["width"] == W and meta["counts"] == COUNTS
    assert meta["format_version"] == FORMAT_VERSION
    assert meta["lidar"]["rings"] == 64 and meta["lidar"]["offset"] == [0.0, 0.08, -0.27]
    ds = FolderDataset(dataset_root, "val")
    assert ds.names == [sample_name("val", i) for i in range(2)] and len(ds) == 2
    sample = ds[1]
    expected = render_scene(sample_rng(0, "val", 1), H, W)
    assert sample["name"] == "val_00001"
    assert np.abs(sample["rgb"] - expected["rgb"]).max() <= 0.5 / 255 + 1e-6
    assert np.abs(sample["depth"] - expected["depth"]).max() <= 1 / 512
    assert np.abs(sample["lidar"] - expected["lidar"]).max() <= 1 / 512
    np.testing.assert_array_equal(sample["lidar"] > 0, expected["lidar"] > 0)


def test_generation_is_reproducible(dataset_root: Path, tmp_path: Path) -> None:
    again = generate_dataset(tmp_path / "again", height=H, width=W, counts=COUNTS)
    files = ("rgb/train_00003.png", "depth/train_00003.png", "lidar/test_00000.png", "calib.txt")
    for sub in files:
        assert (again / sub).read_bytes() == (dataset_root / sub).read_bytes()


def test_ensure_dataset_generates_only_when_unfinished(tmp_path: Path) -> None:
    kwargs = dict(height=16, width=32, counts={"train": 1})
    root = ensure_dataset(tmp_path / "d", **kwargs)
    (root / "rgb" / "train_00000.png").unlink()
    ensure_dataset(root, **kwargs)  # meta.json present: nothing is redone
    assert not (root / "rgb" / "train_00000.png").exists()
    (root / "meta.json").unlink()  # as after an interrupted run
    ensure_dataset(root, **kwargs)
    assert (root / "rgb" / "train_00000.png").exists() and (root / "meta.json").exists()


# ----------------------------------------------------------------------------- folder format


def test_depth_png_round_trip(tmp_path: Path) -> None:
    depth = np.random.default_rng(0).uniform(0.0, 255.0, (9, 11)).astype(np.float32)
    depth[0, :3] = [0.0, np.nan, np.inf]
    depth[1, 0] = 1000.0  # beyond the 16-bit range: clipped
    path = tmp_path / "d.png"
    write_depth_png(path, depth)
    with Image.open(path) as image:
        assert image.mode == "I;16"
    back = read_depth_png(path)
    assert back.dtype == np.float32 and back.shape == depth.shape
    assert back[0, 0] == back[0, 1] == back[0, 2] == 0.0
    assert back[1, 0] == pytest.approx(65535 / 256)
    ok = np.isfinite(depth) & (depth < 255.0)
    assert np.abs(back[ok] - depth[ok]).max() <= 1 / 512


def _write_sample(root: Path, name: str, lidar: bool = True) -> None:
    h, w = 8, 12
    for sub in ("rgb", "depth") + (("lidar",) if lidar else ()):
        (root / sub).mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((h, w, 3), 100, np.uint8)).save(root / "rgb" / f"{name}.png")
    write_depth_png(root / "depth" / f"{name}.png", np.full((h, w), 3.0, np.float32))
    if lidar:
        write_depth_png(root / "lidar" / f"{name}.png", np.zeros((h, w), np.float32))


@pytest.fixture
def small_root(tmp_path: Path) -> Path:
    _write_sample(tmp_path, "a")
    (tmp_path / "train.txt").write_text("a\n")
    return tmp_path


def test_folder_reads_valid_sample(small_root: Path) -> None:
    sample = FolderDataset(small_root, "train")[0]
    assert sample["rgb"].shape == (8, 12, 3) and sample["rgb"].dtype == np.float32
    assert sample["rgb"][0, 0, 0] == pytest.approx(100 / 255)
    assert np.all(sample["depth"] == 3.0) and np.all(sample["lidar"] == 0.0)


def test_folder_without_lidar_gives_zeros(tmp_path: Path) -> None:
    _write_sample(tmp_path, "a", lidar=False)
    (tmp_path / "train.txt").write_text("a\n")
    sample = FolderDataset(tmp_path, "train")[0]
    assert sample["lidar"].shape == (8, 12) and not sample["lidar"].any()


def _corrupt(path: Path) -> None:
    path.write_bytes(b"definitely not an image")


def _truncate(path: Path) -> None:
    noisy = np.random.default_rng(0).uniform(0.0, 200.0, (8, 12))
    write_depth_png(path, noisy)  # incompressible, so the cut lands inside the pixel data
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _grey_8bit(path: Path) -> None:
    Image.fromarray(np.zeros((8, 12), np.uint8)).save(path)


def _grey_16bit(path: Path) -> None:
    Image.fromarray(np.zeros((8, 12), np.uint16)).save(path)


def _wrong_size(path: Path) -> None:
    write_depth_png(path, np.ones((8, 13), np.float32))


@pytest.mark.parametrize(
    ("sub", "damage", "words"),
    [
        ("rgb", Path.unlink, "missing"),
        ("depth", Path.unlink, "missing"),
        ("lidar", Path.unlink, "missing"),
        ("rgb", _corrupt, "not a PNG"),
        ("depth", _truncate, "cannot decode"),
        ("depth", _grey_8bit, "8-bit grey"),
        ("lidar", _grey_8bit, "8-bit grey"),
        ("rgb", _grey_8bit, "8-bit grey"),
        ("rgb", _grey_16bit, "16-bit grey"),
        ("depth", _wrong_size, "does not match"),
        ("lidar", _wrong_size, "does not match"),
    ],
)
def test_bad_files_raise_data_error_naming_the_file(small_root: Path, sub, damage, words) -> None:
    path = small_root / sub / "a.png"
    damage(path)
    with pytest.raises(DataError, match=words) as info:
        FolderDataset(small_root, "train")[0]
    assert str(path) in str(info.value)


def test_bad_roots_and_splits_raise_data_error(small_root: Path) -> None:
    with pytest.raises(DataError, match="does not exist") as info:
        FolderDataset(small_root / "nope", "train")
    assert str(small_root / "nope") in str(info.value)
    with pytest.raises(DataError, match="split file is missing") as info:
        FolderDataset(small_root, "val")
    assert str(small_root / "val.txt") in str(info.value)
    (small_root / "test.txt").write_text("\n  \n")
    with pytest.raises(DataError, match="empty") as info:
        FolderDataset(small_root, "test")
    assert str(small_root / "test.txt") in str(info.value)


def test_readers_check_formats_directly(tmp_path: Path) -> None:
    grey = tmp_path / "grey.png"
    _grey_8bit(grey)
    with pytest.raises(DataError, match="8-bit RGB"):
        read_rgb_png(grey)
    with pytest.raises(DataError, match="16-bit grey"):
        read_depth_png(grey)


# ----------------------------------------------------------------------------- resize / augment


def _sample(seed: int, h: int = 16, w: int = 24, name: str = "s") -> dict:
    rng = np.random.default_rng(seed)
    lidar = np.where(rng.random((h, w)) < 0.1, rng.uniform(1.0, 10.0, (h, w)), 0.0)
    return {
        "name": name,
        "rgb": rng.random((h, w, 3)).astype(np.float32),
        "depth": rng.uniform(1.0, 10.0, (h, w)).astype(np.float32),
        "lidar": lidar.astype(np.float32),
    }


def test_resize_keeps_lidar_returns() -> None:
    s = _sample(0, 16, 24)
    small = resize_sample(s, 8, 12)
    assert small["rgb"].shape == (8, 12, 3)
    assert small["depth"].shape == small["lidar"].shape == (8, 12)
    blocks = s["lidar"].reshape(8, 2, 12, 2).transpose(0, 2, 1, 3).reshape(8, 12, 4)
    has_return = (blocks > 0).any(axis=2)
    np.testing.assert_array_equal(small["lidar"] > 0, has_return)
    nearest = np.where(blocks > 0, blocks, np.inf).min(axis=2)
    np.testing.assert_array_equal(small["lidar"][has_return], nearest[has_return])
    assert set(np.unique(small["depth"])) <= set(np.unique(s["depth"]))  # nearest, no blending
    assert 0.0 <= small["rgb"].min() and small["rgb"].max() <= 1.0
    big = resize_sample(s, 32, 48)
    assert (big["lidar"] > 0).sum() == (s["lidar"] > 0).sum()  # upsampling adds no returns
    assert resize_sample(s, 16, 24) is s


def test_resize_rgb_is_antialiased() -> None:
    stripes = np.zeros((8, 48, 3), np.float32)
    stripes[:, ::2] = 1.0
    s = {"name": "x", "rgb": stripes, "depth": np.ones((8, 48), np.float32),
         "lidar": np.zeros((8, 48), np.float32)}
    small = resize_sample(s, 8, 16)["rgb"]  # point sampling would give pure 0s and 1s
    np.testing.assert_allclose(small, 0.5, atol=0.1)


class _ListDataset:
    """In-memory samples that record loads and fail on request."""

    def __init__(self, samples: list[dict], fail_at: int | None = None) -> None:
        self.samples, self.fail_at = samples, fail_at
        self.loaded: list[int] = []

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict:
        self.loaded.append(index)
        if index == self.fail_at:
            raise DataError(f"sample {index} is broken")
        return self.samples[index]


def _pipeline(dataset, **overrides) -> Pipeline:
    kwargs = dict(batch_size=3, height=16, width=24, shuffle=True, augment=Augment(), seed=5,
                  drop_remainder=True, prefetch=2, workers=2)
    return Pipeline(dataset, **{**kwargs, **overrides})


SAMPLES = [_sample(i, name=f"s{i}") for i in range(10)]


def _assert_batches_equal(xs: list[dict], ys: list[dict]) -> None:
    assert len(xs) == len(ys)
    for x, y in zip(xs, ys):
        assert x["name"] == y["name"]
        for key in ("rgb", "depth", "lidar"):
            np.testing.assert_array_equal(x[key], y[key])


def test_flip_moves_rgb_depth_and_lidar_together() -> None:
    flip_only = Augment(hflip=1.0, brightness=0, contrast=0, saturation=0, hue=0)
    batch = next(iter(_pipeline(_ListDataset(SAMPLES), augment=flip_only, shuffle=False)))
    assert batch["name"] == ["s0", "s1", "s2"]
    for i, s in enumerate(SAMPLES[:3]):
        np.testing.assert_array_equal(batch["rgb"][i], s["rgb"][:, ::-1])
        np.testing.assert_array_equal(batch["depth"][i], s["depth"][:, ::-1])
        np.testing.assert_array_equal(batch["lidar"][i], s["lidar"][:, ::-1])


def test_colour_jitter_touches_only_rgb() -> None:
    colour_only = Augment(hflip=0.0, brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1)
    batch = next(iter(_pipeline(_ListDataset(SAMPLES), augment=colour_only, shuffle=False)))
    for i, s in enumerate(SAMPLES[:3]):
        assert not np.allclose(batch["rgb"][i], s["rgb"])
        np.testing.assert_array_equal(batch["depth"][i], s["depth"])
        np.testing.assert_array_equal(batch["lidar"][i], s["lidar"])
    assert batch["rgb"].dtype == np.float32
    assert 0.0 <= batch["rgb"].min() <= batch["rgb"].max() <= 1.0


def test_pipeline_batches_and_steps() -> None:
    p = _pipeline(_ListDataset(SAMPLES), drop_remainder=False, augment=None, shuffle=False)
    batches = list(p.epoch(0))
    assert p.steps_per_epoch == 4 == len(batches)
    assert [len(b["name"]) for b in batches] == [3, 3, 3, 1]
    assert batches[0]["rgb"].shape == (3, 16, 24, 3)
    assert batches[0]["depth"].shape == batches[0]["lidar"].shape == (3, 16, 24)
    assert _pipeline(_ListDataset(SAMPLES)).steps_per_epoch == 3
    with pytest.raises(ValueError):
        _pipeline(_ListDataset(SAMPLES[:2]))  # no full batch


def test_pipeline_is_a_function_of_seed_and_epoch() -> None:
    ds = _ListDataset(SAMPLES)
    first = list(_pipeline(ds).epoch(1))
    _assert_batches_equal(first, list(_pipeline(ds, workers=1, prefetch=1).epoch(1)))
    other_epoch = [b["name"] for b in _pipeline(ds).epoch(2)]
    other_seed = [b["name"] for b in _pipeline(ds, seed=6).epoch(1)]
    assert [b["name"] for b in first] != other_epoch
    assert [b["name"] for b in first] != other_seed


def test_iterate_resumes_mid_run_without_loading_skipped_samples() -> None:
    full = _take(iter(_pipeline(_ListDataset(SAMPLES))), 8)  # 3 steps per epoch
    for start in (0, 2, 3, 5):
        _assert_batches_equal(_take(_pipeline(_ListDataset(SAMPLES)).iterate(start), 8 - start),
                              full[start:])
    ds = _ListDataset(SAMPLES)
    resumed = _pipeline(ds, workers=1, prefetch=1).iterate(5)
    assert next(resumed)["name"] == full[5]["name"]
    resumed.close()
    assert [f"s{i}" for i in ds.loaded[:3]] == full[5]["name"]  # loading began at step 5


def _take(it, n: int) -> list[dict]:
    return [batch for _, batch in zip(range(n), it)]


def test_worker_exception_reaches_the_consumer() -> None:
    broken = _ListDataset(SAMPLES, fail_at=4)
    with pytest.raises(DataError, match="sample 4 is broken"):
        list(_pipeline(broken, shuffle=False).epoch(0))
    batches = _pipeline(broken, shuffle=False, augment=None).epoch(0)
    assert next(batches)["name"] == ["s0", "s1", "s2"]  # batches before the failure arrive
    with pytest.raises(DataError):
        next(batches)


def test_abandoned_iteration_stops_the_prefetch_thread() -> None:
    batches = _pipeline(_ListDataset(SAMPLES)).iterate(0)
    next(batches)
    batches.close()
    deadline = time.monotonic() + 5.0
    while any(t.name == "jaxdepth-prefetch" for t in threading.enumerate()):
        assert time.monotonic() < deadline, "prefetch thread still running"
        time.sleep(0.01)


def test_augment_rejects_bad_settings() -> None:
    with pytest.raises(ValueError):
        Augment(hflip=1.5)
    with pytest.raises(ValueError):
        Augment(brightness=-0.1)
    with pytest.raises(ValueError):
        Augment(hue=0.6)


def test_pipeline_over_generated_folder(dataset_root: Path) -> None:
    ds = FolderDataset(dataset_root, "train")
    p = Pipeline(ds, batch_size=2, height=16, width=32, shuffle=True, augment=Augment(), seed=0,
                 drop_remainder=True, workers=2)
    batches = list(p.epoch(0))
    assert len(batches) == p.steps_per_epoch == 2
    assert batches[0]["rgb"].shape == (2, 16, 32, 3)
    assert all((b["lidar"] > 0).any() for b in batches)


def test_ensure_dataset_refuses_data_rendered_with_other_parameters(tmp_path):
    from jaxdepth.data import ensure_dataset

    counts = {"train": 1, "val": 1}
    ensure_dataset(tmp_path, height=16, width=32, counts=counts, seed=0)
    assert ensure_dataset(tmp_path, height=16, width=32, counts=counts, seed=0) == tmp_path
    with pytest.raises(DataError, match=r"meta\.json.*height: 16 on disk, 24 asked"):
        ensure_dataset(tmp_path, height=24, width=32, counts=counts, seed=0)
    with pytest.raises(DataError, match=r"lidar: .*'range_noise': 0\.02.* on disk"):
        ensure_dataset(tmp_path, height=16, width=32, counts=counts, seed=0,
                       lidar=LidarParams(range_noise=0.05))
    meta = json.loads((tmp_path / "meta.json").read_text())
    older = {k: v for k, v in meta.items() if k != "lidar"} | {"format_version": FORMAT_VERSION - 1}
    (tmp_path / "meta.json").write_text(json.dumps(older))  # rendered before the LiDAR model
    with pytest.raises(DataError, match=r"format_version: \d+ on disk, \d+ asked"):
        ensure_dataset(tmp_path, height=16, width=32, counts=counts, seed=0)
