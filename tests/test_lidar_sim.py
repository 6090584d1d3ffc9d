"""Tests of the LiDAR sensor model on scenes of planes whose answers are known."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pytest

from jaxdepth.data.lidar_sim import (
    LidarParams,
    Scan,
    detection_probability,
    ring_pattern,
    scan,
)

NO_NOISE = {"range_noise": 0.0, "dropout": 0.0, "detection_range": 1e6}


@dataclass(frozen=True)
class _Camera:
    """Level camera at the world origin looking along +z (rig = camera = world)."""

    height: int = 64
    width: int = 224
    origin: np.ndarray = field(default_factory=lambda: np.zeros(3))
    to_world: np.ndarray = field(default_factory=lambda: np.eye(3))
    rig_to_world: np.ndarray = field(default_factory=lambda: np.eye(3))

    @property
    def focal(self) -> float:
        return self.width / 2  # 90 degrees across


def _walls(far: float, albedo: float = 1.0, near: float | None = None, top: float = 0.0,
           incidence_deg: float = 0.0):
    """Trace of a wall z = far behind a low wall z = near that reaches up to y = top.

    `incidence_deg` reports every surface as seen at that angle (a rough or tilted
    finish) without changing where the beams hit.
    """
    def trace(origin: np.ndarray, dirs: np.ndarray):
        t = (far - origin[2]) / dirs[2]
        if near is not None:
            t_near = (near - origin[2]) / dirs[2]
            t = np.where(origin[1] + t_near * dirs[1] < top, t_near, t)
        a = np.radians(incidence_deg)
        side = np.cross(dirs.T, [0.0, 1.0, 0.0]).T
        side /= np.linalg.norm(side, axis=0)
        normals = -np.cos(a) * dirs + np.sin(a) * side
        return t, normals, np.full((3, dirs.shape[1]), albedo)
    return trace


def _sweeps(params: LidarParams, trace, seeds: int = 4, camera: _Camera = _Camera()) -> list[Scan]:
    return [scan(np.random.default_rng(s), params, camera, trace) for s in range(seeds)]


def test_default_params_are_the_documented_sensor() -> None:
    p = LidarParams()
    assert p.rings == 64 and p.range_noise == 0.02 and p.offset == (0.0, 0.08, -0.27)
    with pytest.raises(ValueError, match="dropout"):
        LidarParams(dropout=1.0)


def test_range_noise_has_the_parameters_std() -> None:
    for sigma in (0.02, 0.1):
        sweeps = _sweeps(LidarParams(range_noise=sigma), _walls(far=6.0))
        error = np.concatenate([s.measured - s.distance for s in sweeps])
        assert len(error) > 3000
        assert np.std(error) == pytest.approx(sigma, rel=0.06)
        assert abs(np.mean(error)) < 4 * sigma / np.sqrt(len(error))
        along = np.concatenate([np.linalg.norm(s.points - s.exact, axis=0) for s in sweeps])
        np.testing.assert_allclose(along, np.abs(error), atol=1e-9)  # noise is along the beam


def test_detection_probability_values() -> None:
    p = LidarParams(detection_range=30.0, dropout=0.05)
    one = detection_probability(p, np.array([30.0]), np.array([1.0]), np.array([1.0]))
    assert one[0] == pytest.approx(0.95 * (1 - np.exp(-1.0)))
    near = detection_probability(p, np.array([1.0]), np.array([1.0]), np.array([1.0]))
    assert near[0] == pytest.approx(0.95)  # a bright, close surface loses only the random dropout
    # A 10 % grey surface at 12 m seen at 60 degrees: signal 0.1 * 0.5 * (30 / 12)^2.
    grey = detection_probability(p, np.array([12.0]), np.array([0.1]), np.array([0.5]))
    assert grey[0] == pytest.approx(0.95 * (1 - np.exp(-0.3125)))


@pytest.mark.parametrize("setting, easy, hard", [
    ("far", 4.0, 14.0),  # distance, m
    ("albedo", 0.8, 0.08),
    ("incidence_deg", 0.0, 80.0),
])
def test_returns_are_lost_on_far_dark_and_grazing_surfaces(setting: str, easy: float, hard: float) -> None:
    params = LidarParams(detection_range=30.0, dropout=0.05)
    base = {"far": 10.0, "albedo": 0.3, "incidence_deg": 30.0}
    missing = []
    for value in (easy, hard):
        sweeps = _sweeps(params, _walls(**{**base, setting: value}))
        returned = np.concatenate([s.returned for s in sweeps])
        expected = np.concatenate([detection_probability(params, s.distance, s.reflectance,
                                                         s.cos_incidence) for s in sweeps])
        # the sampled share of returns is the model's mean probability (binomial tolerance)
        assert abs(returned.mean() - expected.mean()) < 4 * np.sqrt(0.25 / len(returned))
        missing.append(1.0 - returned.mean())
    assert missing[0] < missing[1] - 0.2, (setting, missing)
    assert missing[0] > 0.04  # the random dropout is always there


def test_random_dropout_alone() -> None:
    sweeps = _sweeps(LidarParams(**{**NO_NOISE, "dropout": 0.2}), _walls(far=5.0))
    returned = np.concatenate([s.returned for s in sweeps])
    assert abs(returned.mean() - 0.8) < 4 * np.sqrt(0.16 / len(returned))


def _behind_camera_surface(params: LidarParams, trace, camera: _Camera) -> tuple[int, int]:
    """Returns (in front of the camera) that lie behind the surface the camera sees along
    their own camera ray, and all such returns."""
    behind = total = 0
    for sweep in _sweeps(params, trace, camera=camera):
        points = sweep.exact[:, sweep.returned]
        points = points[:, points[2] > 0]
        t, _, _ = trace(camera.origin, points / np.linalg.norm(points, axis=0))
        seen = t * points[2] / np.linalg.norm(points, axis=0)  # z of the camera's first hit
        behind += int((points[2] > seen + 0.5).sum())
        total += points.shape[1]
    return behind, total


def test_parallax_only_with_a_mounting_offset() -> None:
    camera = _Camera()
    trace = _walls(far=10.0, near=2.0, top=0.5)  # a low wall 2 m ahead, a wall 10 m behind it
    behind, total = _behind_camera_surface(LidarParams(**NO_NOISE, offset=(0.0, 0.0, 0.0)), trace, camera)
    assert behind == 0 and total > 2000
    behind, total = _behind_camera_surface(LidarParams(**NO_NOISE), trace, camera)
    assert 0.01 * total < behind < 0.2 * total  # seen over the low wall from 8 cm higher
    # On the image, these land on pixels of the low wall with the far wall's depth.
    depth = scan(np.random.default_rng(0), LidarParams(**NO_NOISE), camera, trace).depth_image(camera, 0.5, 15.0)
    rows = np.arange(camera.height)
    low_wall_rows = (camera.height / 2 - rows - 0.5) / camera.focal < 0.5 / 2.0  # camera sees y < 0.5 at z = 2
    on_low_wall = depth[low_wall_rows]
    assert (on_low_wall[on_low_wall > 0] > 9.0).sum() > 10


def test_depth_image_keeps_the_nearest_return_per_pixel() -> None:
    camera = _Camera(height=4, width=4)
    z = np.array([5.0, 3.0, 4.0, 8.0])
    x = np.array([0.1, 0.1, 0.1, -0.5]) * z  # three returns on one pixel, one elsewhere
    points = np.stack([x, 0.1 * z, z])
    ones = np.ones(4)
    sweep = Scan(exact=points, points=points, distance=z, measured=z, reflectance=ones,
                 cos_incidence=ones, returned=np.array([True, True, True, True]))
    depth = sweep.depth_image(camera, 0.5, 15.0)
    assert sorted(depth[depth > 0]) == [3.0, 8.0]
    assert depth[1, 2] == 3.0
    dropped = Scan(**{**sweep.__dict__, "returned": np.array([True, False, True, True])})
    assert dropped.depth_image(camera, 0.5, 15.0)[1, 2] == 4.0


@pytest.mark.parametrize("height, width", [(32, 64), (64, 224), (96, 320)])
def test_ring_pattern_covers_a_few_percent_of_pixels(height: int, width: int) -> None:
    camera = _Camera(height=height, width=width)
    params = LidarParams(**NO_NOISE, offset=(0.0, 0.0, 0.0))
    for seed in range(3):
        depth = scan(np.random.default_rng(seed), params, camera, _walls(far=8.0)).depth_image(camera, 0.5, 15.0)
        assert 0.035 <= (depth > 0).mean() <= 0.075, (height, width, (depth > 0).mean())
    dirs = ring_pattern(np.random.default_rng(0), params, camera)
    elevation = np.unique(np.round(np.arcsin(dirs[1]), 9))
    assert len(elevation) == 64  # one elevation per ring
    assert np.diff(elevation)[-1] < np.diff(elevation)[0]  # closer together at the top
