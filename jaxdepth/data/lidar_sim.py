"""A spinning LiDAR mounted beside the camera: ring pattern, parallax, range noise, lost returns.

The sensor model knows no scene. It fires its beams from its own origin through a
`Trace` (first hit, surface normal and albedo per beam), adds range noise along each
beam and projects the measured points into the camera. So the sparse depth map has
what real scans have and a renderer's ground truth has not: returns from surfaces the
camera cannot see (behind a foreground edge, seen over or around it from the sensor's
mount) landing on foreground pixels, noisy depths, and holes on far, dark or grazing
surfaces.

Frames: the rig is level (x right, y up, z forward) and carries both the spinning
sensor (vertical axis) and the camera (pitched and rolled against the rig).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np

Trace = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray, np.ndarray]]
"""(origin (3,), unit directions (3, N), world frame) -> (distance to the first hit (N,),
inf where nothing is hit; unit normals facing the beam (3, N); albedo (3, N))."""

_LUMINANCE = np.array([0.2126, 0.7152, 0.0722])  # Rec. 709
_RING_CURVE = 1.4  # > 1: rings closer together towards the top, where surfaces are far


@dataclass(frozen=True)
class LidarParams:
    """Sensor parameters; the defaults follow a Velodyne HDL-64E as mounted on KITTI's car.

    HDL-64E datasheet: 64 lasers (rings), range accuracy < 2 cm (1 sigma), 50 m range on
    10 % reflective pavement. KITTI (Geiger et al., IJRR 2013; its velo-to-cam
    calibration): the sensor sits about 0.08 m above and 0.27 m behind the left cameras.
    Three values are scaled to these small, near-field scenes rather than copied: the
    scanned elevations span the camera's vertical view (the HDL-64E's +2 to -24.8 degrees
    would leave the top of the image empty); the azimuth step is tuned per image size so
    the shots fall on `coverage` of the pixels, the few % of KITTI's projected scans (a
    real step of under 0.2 degrees would hit most pixels of a 224-wide image); and
    `detection_range`, since at 50 m for 10 % reflectance nothing within 15 m would be
    lost, while real scans do lose dark, far and grazing surfaces.
    """

    rings: int = 64
    offset: tuple[float, float, float] = (0.0, 0.08, -0.27)  # sensor origin from the camera, rig frame, m
    range_noise: float = 0.02  # 1 sigma along the beam, m
    detection_range: float = 30.0  # white surface facing the beam: returns with probability 1 - 1/e
    dropout: float = 0.05  # returns lost whatever the surface (absorbed, multipath, filtered)
    coverage: tuple[float, float] = (0.045, 0.065)  # share of pixels the shots fall on, per scan
    upper_deg: tuple[float, float] = (16.0, 20.0)  # elevation of the top ring, rig frame, per scan
    lower_deg: tuple[float, float] = (-26.0, -22.0)  # elevation of the bottom ring, per scan

    def __post_init__(self) -> None:
        checks = {
            "rings": self.rings >= 2, "range_noise": self.range_noise >= 0,
            "detection_range": self.detection_range > 0, "dropout": 0 <= self.dropout < 1,
            "coverage": 0 < self.coverage[0] <= self.coverage[1] < 1,
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"LidarParams: out of range: {', '.join(bad)} ({self})")


class Camera(Protocol):
    """The pinhole camera the scan is projected into."""

    origin: np.ndarray  # world position
    focal: float  # pixels, square pixels
    height: int
    width: int

    @property
    def to_world(self) -> np.ndarray: ...  # camera-to-world rotation

    @property
    def rig_to_world(self) -> np.ndarray: ...  # level rig (the sensor's mount) to world


@dataclass(frozen=True)
class Scan:
    """Every shot of one sweep. Points are in the camera frame (x right, y up, z forward)."""

    exact: np.ndarray  # (3, N) true hit points (non-finite where the beam hit nothing)
    points: np.ndarray  # (3, N) measured points: range noise along the beam
    distance: np.ndarray  # (N,) true range from the sensor, m
    measured: np.ndarray  # (N,) range with noise, m
    reflectance: np.ndarray  # (N,) albedo luminance in [0, 1]
    cos_incidence: np.ndarray  # (N,) cosine between beam and surface normal
    returned: np.ndarray  # (N,) bool: the sensor reported this shot

    def depth_image(self, camera: Camera, min_depth: float, max_depth: float) -> np.ndarray:
        """(H, W) camera z-depth of the returns, 0 where none, nearest return per pixel.

        Keeping the nearest is the z-buffer rule of the usual scan projections (e.g.
        monodepth2's KITTI depth maps): of two returns on one pixel the nearer is more
        likely the surface the camera sees there, the farther one seen past an edge.
        """
        h, w, f = camera.height, camera.width, camera.focal
        x, y, z = self.points[:, self.returned]
        ok = (z > min_depth) & (z < max_depth)
        x, y, z = x[ok], y[ok], z[ok]
        u, v = w / 2 + f * x / z, h / 2 - f * y / z
        inside = (u >= 0) & (u < w) & (v >= 0) & (v < h)
        flat = np.floor(v[inside]).astype(np.int64) * w + np.floor(u[inside]).astype(np.int64)
        depth = np.full(h * w, np.inf)
        np.minimum.at(depth, flat, z[inside])
        return np.where(np.isfinite(depth), depth, 0.0).reshape(h, w)


def detection_probability(
    params: LidarParams, distance: np.ndarray, reflectance: np.ndarray, cos_incidence: np.ndarray
) -> np.ndarray:
    """Chance that a shot returns: photon counting on a Lambertian target.

    The mean detected signal is reflectance * cos(incidence) / distance^2 (the LiDAR
    equation), in units where a white surface facing the beam at `detection_range`
    gives 1; the pulse is seen if at least one photon is, 1 - exp(-signal), and a
    share `dropout` of returns is lost whatever the surface.
    """
    signal = reflectance * np.clip(cos_incidence, 0.0, 1.0) * (params.detection_range / distance) ** 2
    return (1.0 - params.dropout) * -np.expm1(-signal)


def _level_directions(elevation: np.ndarray, azimuth: np.ndarray) -> np.ndarray:
    return np.stack([np.cos(elevation) * np.sin(azimuth), np.sin(elevation),
                     np.cos(elevation) * np.cos(azimuth)])


def _beams(elevation: np.ndarray, phase: np.ndarray, step: float, half_span: float) -> np.ndarray:
    """(3, N) unit rig-frame directions: every ring fires once per azimuth step."""
    el, az = np.meshgrid(elevation, np.arange(-half_span, half_span, step), indexing="ij")
    return _level_directions(el.ravel(), (az + phase[:, None] * step).ravel())


def _pixels_at_infinity(camera: Camera, rig_dirs: np.ndarray) -> int:
    """Distinct pixels the beams fall on, ignoring the offset (far-field image of the pattern)."""
    h, w, f = camera.height, camera.width, camera.focal
    x, y, z = camera.to_world.T @ camera.rig_to_world @ rig_dirs
    u, v = w / 2 + f * x / np.where(z > 0, z, 1.0), h / 2 - f * y / np.where(z > 0, z, 1.0)
    inside = (z > 0) & (u >= 0) & (u < w) & (v >= 0) & (v < h)
    return len(np.unique(np.floor(v[inside]).astype(np.int64) * w + np.floor(u[inside]).astype(np.int64)))


def ring_pattern(rng: np.random.Generator, params: LidarParams, camera: Camera) -> np.ndarray:
    """(3, N) unit rig-frame directions of one sweep across the camera's view.

    Rings are closer together towards the top, where surfaces are far (as the HDL-64E's
    upper block, 1/3 degree apart, against 1/2 degree below), so their image traces are
    curves with uneven spacing; each ring fires with its own azimuth phase, as the lasers
    of a real head do. The azimuth step is tuned (a guess, then one correction for rings
    sharing pixels) so the shots fall on `coverage` of the pixels, whatever the image size.
    """
    upper, lower = np.radians(rng.uniform(*params.upper_deg)), np.radians(rng.uniform(*params.lower_deg))
    elevation = upper + (lower - upper) * np.linspace(0.0, 1.0, params.rings) ** _RING_CURVE
    phase = rng.random(params.rings)
    wanted = rng.uniform(*params.coverage) * camera.height * camera.width
    half_span = np.arctan(camera.width / 2 / camera.focal) * 1.05
    step = 2 * half_span * params.rings / wanted
    hit = _pixels_at_infinity(camera, _beams(elevation, phase, step, half_span))
    step *= np.clip(hit / wanted, 0.25, 4.0)
    return _beams(elevation, phase, step, half_span)


def scan(rng: np.random.Generator, params: LidarParams, camera: Camera, trace: Trace) -> Scan:
    """One sweep of the sensor mounted at `params.offset` from the camera."""
    rig_to_world = camera.rig_to_world
    origin = camera.origin + rig_to_world @ np.asarray(params.offset)
    dirs = rig_to_world @ ring_pattern(rng, params, camera)
    distance, normals, albedo = trace(origin, dirs)
    measured = distance + params.range_noise * rng.standard_normal(distance.shape)
    reflectance = np.clip(_LUMINANCE @ albedo, 0.0, 1.0)
    cos_incidence = np.clip(-(normals * dirs).sum(axis=0), 0.0, 1.0)
    chance = detection_probability(params, distance, reflectance, cos_incidence)
    returned = np.isfinite(distance) & (rng.random(distance.shape) < chance)
    to_camera = camera.to_world.T
    sensor = to_camera @ (origin - camera.origin)
    beam = to_camera @ dirs
    return Scan(
        exact=sensor[:, None] + distance * beam,
        points=sensor[:, None] + measured * beam,
        distance=distance,
        measured=measured,
        reflectance=reflectance,
        cos_incidence=cos_incidence,
        returned=returned,
    )
