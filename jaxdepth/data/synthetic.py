"""Procedural near-field scenes rendered by vectorised ray casting.

Every scene is a closed yard, room or corridor (so nearly every pixel has ground
truth) holding a few textured primitives, seen by a pinhole camera and a simulated
spinning LiDAR (`lidar_sim`: mounted beside the camera, noisy, losing returns).
Solid textures shrink with distance, shading and shadows reveal shape, and fog fades
far surfaces: the depth cues a network can learn from RGB. Lighting, textures and the
camera (blur, exposure, shot and read noise, tone curve) vary per image so that those
cues, not one renderer's look, are what there is to learn. Ground truth is the exact
depth of the scene.

World frame: x right, y up, z forward, ground plane at y = 0, camera above the
origin. Points and rays are stored as (3, N) arrays so every numpy operation runs
over long contiguous rows. Camera rays are scaled so their component along the
optical axis is 1, which makes the hit parameter of a primary ray its z-depth.
"""

from __future__ import annotations

import colorsys
import json
import zlib
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from functools import lru_cache, partial
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from scipy import ndimage
from tqdm import tqdm

from jaxdepth.data import lidar_sim
from jaxdepth.data.folder import DataError, write_depth_png, write_rgb_png
from jaxdepth.data.lidar_sim import LidarParams

HFOV_DEG = 90.0
DEFAULT_COUNTS = {"train": 800, "val": 48, "test": 96, "calib": 64}
FORMAT_VERSION = 3
DEFAULT_LIDAR = LidarParams()  # a Velodyne HDL-64E mounted as on KITTI's car

_EPS = 1e-6
_SHADOW_OFFSET = 1e-3
_LATTICE_SIZE = 32  # value-noise lattice period in cells; small enough to stay in cache
_LATTICE = np.random.default_rng(20240611).random(_LATTICE_SIZE**3)


def _dot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Column-wise dot product of (3, N) arrays; either may be a (3, 1) column."""
    return a[0] * b[0] + a[1] * b[1] + a[2] * b[2]


def _col(v: np.ndarray) -> np.ndarray:
    return v[:, None]


# ----------------------------------------------------------------------------- textures


def _value_noise(p: np.ndarray) -> np.ndarray:
    """Smooth 3-D value noise at (3, N) points, unit lattice, stretched to about [0, 1]."""
    cell = np.floor(p)
    fx, fy, fz = (p - cell) ** 2 * (3.0 - 2.0 * (p - cell))
    i = cell.astype(np.int64)
    m, n = _LATTICE_SIZE - 1, _LATTICE_SIZE
    x0, y0, z0 = (i[0] & m) * n * n, (i[1] & m) * n, i[2] & m
    x1, y1, z1 = ((i[0] + 1) & m) * n * n, ((i[1] + 1) & m) * n, (i[2] + 1) & m

    def lerp(lo: np.ndarray, hi: np.ndarray, w: np.ndarray) -> np.ndarray:
        return lo + (hi - lo) * w

    def layer(z: np.ndarray) -> np.ndarray:
        bottom = lerp(_LATTICE[x0 + y0 + z], _LATTICE[x1 + y0 + z], fx)
        top = lerp(_LATTICE[x0 + y1 + z], _LATTICE[x1 + y1 + z], fx)
        return lerp(bottom, top, fy)

    return np.clip(0.5 + 1.8 * (lerp(layer(z0), layer(z1), fz) - 0.5), 0.0, 1.0)


def _detail_weight(footprint: np.ndarray) -> np.ndarray:
    """Contrast kept for a feature of unit size seen through a pixel of this footprint.

    Fading detail below ~2 pixels replaces aliasing (which would be noise to the
    network) with the gradual loss of texture that real cameras show with distance.
    """
    return np.clip(2.0 - 4.0 * footprint, 0.0, 1.0)


def _checker(p: np.ndarray, axis: np.ndarray) -> np.ndarray:
    return np.floor(p).sum(axis=0) % 2.0


def _stripes(p: np.ndarray, axis: np.ndarray) -> np.ndarray:
    return np.floor(2.0 * (axis @ p)) % 2.0


def _noise(p: np.ndarray, axis: np.ndarray) -> np.ndarray:
    return _value_noise(p)


def _plain(p: np.ndarray, axis: np.ndarray) -> np.ndarray:
    return np.zeros(p.shape[1])


def _bricks(p: np.ndarray, axis: np.ndarray) -> np.ndarray:
    """Courses one unit high of bricks two long, every other course shifted half a brick,
    each brick its own shade, in mortar (1); seen on the ground, square tiles."""
    course = np.floor(p[1])
    shift = 0.5 * (course % 2.0)
    brick = np.stack([p[1], p[0] / 2.0 + shift, p[2] / 2.0 + shift])
    cell = np.floor(brick)
    frac = brick - cell
    mortar = np.minimum(frac, 1.0 - frac).min(axis=0) < 0.05
    i = cell.astype(np.int64) & (_LATTICE_SIZE - 1)
    shade = 0.6 * _LATTICE[(i[0] * _LATTICE_SIZE + i[1]) * _LATTICE_SIZE + i[2]]
    return np.where(mortar, 1.0, shade)


def _marble(p: np.ndarray, axis: np.ndarray) -> np.ndarray:
    """Bands along `axis` bent by value noise."""
    return 0.5 + 0.5 * np.sin(np.pi * (axis @ p) + 4.0 * _value_noise(p))


_PATTERNS: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "checker": _checker, "stripes": _stripes, "noise": _noise, "plain": _plain,
    "bricks": _bricks, "marble": _marble,
}
_PATTERN_PROBABILITY = (0.2, 0.15, 0.2, 0.1, 0.2, 0.15)
# Feature size of each pattern in pattern units, to fade its detail with distance.
_FEATURE = {"checker": 1.0, "stripes": 0.5, "noise": 1.0, "plain": 1.0, "bricks": 0.1, "marble": 1.0}


@dataclass(frozen=True)
class _Material:
    """A two-colour solid texture plus fine multiplicative grain."""

    base: np.ndarray
    accent: np.ndarray
    pattern: str
    scale: float  # metres per pattern unit
    axis: np.ndarray  # stripe direction
    offset: np.ndarray  # decorrelates surfaces sharing a pattern
    grain: float  # grain amplitude
    grain_scale: float  # metres per grain lattice cell

    def albedo(self, q: np.ndarray, footprint: np.ndarray) -> np.ndarray:
        """(3, M) colour at surface-local points q; footprint is the pixel size in metres."""
        p = (q + _col(self.offset)) / self.scale
        weight = _detail_weight(footprint / (self.scale * _FEATURE[self.pattern]))
        mix = 0.5 + (_PATTERNS[self.pattern](p, self.axis) - 0.5) * weight
        colour = _col(self.base) + _col(self.accent - self.base) * mix
        grain_weight = _detail_weight(footprint / self.grain_scale)
        visible = np.nonzero(grain_weight)[0]  # grain has faded out on far surfaces
        grain = np.zeros_like(footprint)
        grain[visible] = (_value_noise(p[:, visible] * (self.scale / self.grain_scale)) - 0.5) \
            * grain_weight[visible]
        return colour * (1.0 + 2.0 * self.grain * grain)


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(h % 1.0, min(s, 1.0), min(v, 1.0)))


def _sample_material(
    rng: np.random.Generator, scale: tuple[float, float], saturation: tuple[float, float]
) -> _Material:
    """Random base colour and pattern; large surfaces get duller colours via `saturation`."""
    hue, sat, val = rng.random(), rng.uniform(*saturation), rng.uniform(0.35, 0.95)
    pattern = str(rng.choice(list(_PATTERNS), p=_PATTERN_PROBABILITY))
    accent = (hue, sat, val) if pattern == "plain" else (
        hue + rng.uniform(-0.15, 0.15), sat * rng.uniform(0.3, 1.2), val * rng.uniform(0.25, 0.7))
    axis = rng.normal(size=3)
    return _Material(
        base=_hsv(hue, sat, val),
        accent=_hsv(*accent),
        pattern=pattern,
        scale=float(np.exp(rng.uniform(np.log(scale[0]), np.log(scale[1])))),
        axis=axis / np.linalg.norm(axis),
        offset=rng.uniform(0.0, 100.0, 3),
        grain=rng.uniform(0.05, 0.3),
        grain_scale=rng.uniform(0.03, 0.15),
    )


# ----------------------------------------------------------------------------- geometry


def _safe(d: np.ndarray) -> np.ndarray:
    """Direction components bumped away from 0 so slab divisions stay finite."""
    return np.where(np.abs(d) < 1e-12, 1e-12, d)


def _yaw_matrix(yaw: float) -> np.ndarray:
    c, s = np.cos(yaw), np.sin(yaw)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def _tilt_matrix(pitch: float, roll: float) -> np.ndarray:
    """Pitch (positive looks up) after roll about the optical axis."""
    cp, sp, cr, sr = np.cos(pitch), np.sin(pitch), np.cos(roll), np.sin(roll)
    pitch_m = np.array([[1.0, 0.0, 0.0], [0.0, cp, sp], [0.0, -sp, cp]])
    roll_m = np.array([[cr, -sr, 0.0], [sr, cr, 0.0], [0.0, 0.0, 1.0]])
    return pitch_m @ roll_m


class _Surface(Protocol):
    material: _Material

    def normal(self, points: np.ndarray) -> np.ndarray: ...

    def local(self, points: np.ndarray) -> np.ndarray: ...


class _Shape(_Surface, Protocol):
    center: np.ndarray

    @property
    def radius_bound(self) -> float: ...

    def hit(self, origins: np.ndarray, dirs: np.ndarray) -> np.ndarray: ...


@dataclass(frozen=True)
class _Face:
    """One inner face of the enclosing box; textured in world coordinates."""

    axis: int
    sign: float  # inward normal component along axis
    material: _Material

    def normal(self, points: np.ndarray) -> np.ndarray:
        n = np.zeros_like(points)
        n[self.axis] = self.sign
        return n

    def local(self, points: np.ndarray) -> np.ndarray:
        return points


@dataclass(frozen=True)
class _Room:
    """Axis-aligned box enclosing the camera: every ray leaves it through some face."""

    lo: np.ndarray
    hi: np.ndarray
    faces: tuple[_Face, ...]  # -x, +x, -y (ground), +y, -z, +z

    def exit(self, origin: np.ndarray, dirs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Hit distance and face index for rays starting inside the box."""
        d = _safe(dirs)
        positive = d > 0
        tx, ty, tz = np.where(positive, _col(self.hi - origin), _col(self.lo - origin)) / d
        t = np.minimum(np.minimum(tx, ty), tz)
        axis = np.where(t == tx, 0, np.where(t == ty, 1, 2))
        return t, 2 * axis + np.choose(axis, positive)


@dataclass(frozen=True)
class _Sphere:
    center: np.ndarray
    radius: float
    material: _Material

    @property
    def radius_bound(self) -> float:
        return self.radius

    def hit(self, origins: np.ndarray, dirs: np.ndarray) -> np.ndarray:
        oc = origins - _col(self.center)
        a, b = _dot(dirs, dirs), _dot(oc, dirs)
        disc = b * b - a * (_dot(oc, oc) - self.radius**2)
        root = np.sqrt(np.maximum(disc, 0.0))
        near, far = (-b - root) / a, (-b + root) / a
        t = np.where(near > _EPS, near, far)
        return np.where((disc >= 0) & (t > _EPS), t, np.inf)

    def normal(self, points: np.ndarray) -> np.ndarray:
        return (points - _col(self.center)) / self.radius

    def local(self, points: np.ndarray) -> np.ndarray:
        return points - _col(self.center)


@dataclass(frozen=True)
class _Box:
    """Box rotated about the vertical axis by `rotation` (local to world)."""

    center: np.ndarray
    half: np.ndarray
    rotation: np.ndarray
    material: _Material

    @property
    def radius_bound(self) -> float:
        return float(np.linalg.norm(self.half))

    def hit(self, origins: np.ndarray, dirs: np.ndarray) -> np.ndarray:
        o = self.local(origins)
        d = _safe(self.rotation.T @ dirs)
        t1, t2 = (-_col(self.half) - o) / d, (_col(self.half) - o) / d
        near = np.minimum(t1, t2).max(axis=0)
        far = np.maximum(t1, t2).min(axis=0)
        return np.where((near <= far) & (near > _EPS), near, np.inf)

    def normal(self, points: np.ndarray) -> np.ndarray:
        q = self.local(points) / _col(self.half)
        axis = np.argmax(np.abs(q), axis=0)
        rows = np.arange(q.shape[1])
        n = np.zeros_like(q)
        n[axis, rows] = np.sign(q[axis, rows])
        return self.rotation @ n

    def local(self, points: np.ndarray) -> np.ndarray:
        return self.rotation.T @ (points - _col(self.center))


@dataclass(frozen=True)
class _Cylinder:
    """Vertical capped cylinder standing on the ground; `center` is its mid-height axis point."""

    center: np.ndarray
    radius: float
    height: float
    material: _Material

    @property
    def radius_bound(self) -> float:
        return float(np.hypot(self.radius, self.height / 2))

    def hit(self, origins: np.ndarray, dirs: np.ndarray) -> np.ndarray:
        ox, oy, oz = origins - _col(self.center)
        dx, dy, dz = dirs
        top = self.height / 2
        a = np.maximum(dx * dx + dz * dz, 1e-12)
        b = ox * dx + oz * dz
        disc = b * b - a * (ox * ox + oz * oz - self.radius**2)
        side = (-b - np.sqrt(np.maximum(disc, 0.0))) / a
        side_ok = (disc >= 0) & (side > _EPS) & (np.abs(oy + side * dy) <= top)
        cap = (top - oy) / _safe(dy)
        cx, cz = ox + cap * dx, oz + cap * dz
        cap_ok = (cap > _EPS) & (cx * cx + cz * cz <= self.radius**2)
        return np.minimum(np.where(side_ok, side, np.inf), np.where(cap_ok, cap, np.inf))

    def normal(self, points: np.ndarray) -> np.ndarray:
        q = self.local(points)
        on_cap = q[1] >= self.height / 2 - 1e-6
        side = q * _col(np.array([1.0, 0.0, 1.0])) / self.radius
        return np.where(on_cap, _col(np.array([0.0, 1.0, 0.0])), side)

    def local(self, points: np.ndarray) -> np.ndarray:
        return points - _col(self.center)


def _footprint(shape: _Shape) -> float:
    """Horizontal radius of the shape around its vertical axis."""
    if isinstance(shape, _Box):
        return float(np.hypot(shape.half[0], shape.half[2]))
    return shape.radius


# ----------------------------------------------------------------------------- scene


@dataclass(frozen=True)
class _Camera:
    origin: np.ndarray
    yaw: float
    tilt: np.ndarray  # camera-to-rig rotation (pitch, roll); the rig is level
    focal: float  # pixels, square pixels
    height: int
    width: int

    @property
    def rig_to_world(self) -> np.ndarray:
        return _yaw_matrix(self.yaw)

    @property
    def to_world(self) -> np.ndarray:
        return self.rig_to_world @ self.tilt

    def rays(self) -> np.ndarray:
        """(3, H*W) world directions through pixel centres, unit forward component."""
        return self.to_world @ _pixel_directions(self.height, self.width, self.focal)


@lru_cache(maxsize=4)
def _pixel_directions(height: int, width: int, focal: float) -> np.ndarray:
    """(3, H*W) camera-frame directions through pixel centres; the same for every image."""
    v, u = np.mgrid[0:height, 0:width]
    x = (u.ravel() + 0.5 - width / 2) / focal
    y = -(v.ravel() + 0.5 - height / 2) / focal
    directions = np.stack([x, y, np.ones_like(x)])
    directions.flags.writeable = False
    return directions


@dataclass(frozen=True)
class _Light:
    direction: np.ndarray  # towards the sun
    sun: np.ndarray
    ambient: np.ndarray
    headlight: float  # strength of a camera-mounted light that falls off with distance
    fog_distance: float
    fog_colour: np.ndarray


@dataclass(frozen=True)
class _Scene:
    camera: _Camera
    room: _Room
    shapes: tuple[_Shape, ...]
    light: _Light

    @property
    def surfaces(self) -> tuple[_Surface, ...]:
        """Room faces first (ids 0-5), then shapes, matching the ids `_trace` returns."""
        return self.room.faces + self.shapes


def _sample_camera(rng: np.random.Generator, height: int, width: int) -> _Camera:
    pitch, roll = np.radians(rng.uniform(-3.0, 3.0)), np.radians(rng.uniform(-2.0, 2.0))
    return _Camera(
        origin=np.array([0.0, rng.uniform(1.0, 1.6), 0.0]),
        yaw=0.0,
        tilt=_tilt_matrix(pitch, roll),
        focal=width / 2 / np.tan(np.radians(HFOV_DEG) / 2),
        height=height,
        width=width,
    )


@dataclass(frozen=True)
class _RoomKind:
    probability: float
    half_width: tuple[float, float]  # metres from the camera to each side wall
    back: tuple[float, float]  # metres to the back wall, before the max_depth limit
    ceiling: tuple[float, float] | None  # None: open yard between tall facades
    max_yaw_deg: float  # camera yaw relative to the walls


_ROOM_KINDS = (
    _RoomKind(0.5, (2.5, 9.0), (9.0, 15.0), None, 25.0),  # yard / street
    _RoomKind(0.3, (1.5, 6.0), (4.0, 15.0), (2.4, 4.0), 30.0),  # room / hall
    _RoomKind(0.2, (0.9, 2.2), (8.0, 15.0), (2.3, 3.2), 8.0),  # corridor
)
_OPEN_TOP = 60.0  # facades this tall are never topped by a ray within 15 m


def _sample_room(rng: np.random.Generator, max_depth: float) -> tuple[_Room, float]:
    """Enclosure and camera yaw, with the far corners kept inside max_depth."""
    kind = _ROOM_KINDS[rng.choice(len(_ROOM_KINDS), p=[k.probability for k in _ROOM_KINDS])]
    left, right = rng.uniform(*kind.half_width, size=2)
    yaw = np.radians(rng.uniform(-kind.max_yaw_deg, kind.max_yaw_deg))
    # z-depth of a back corner (x, z) is about x sin(yaw) + z cos(yaw); leave room for tilt.
    limit = max_depth - 0.6 - max(-left * np.sin(yaw), right * np.sin(yaw))
    far = min(rng.uniform(*kind.back), limit / np.cos(yaw))
    top = _OPEN_TOP if kind.ceiling is None else rng.uniform(*kind.ceiling)
    faces = tuple(
        _Face(axis, sign, _sample_material(rng, (0.15, 2.0), (0.05, 0.5)))
        for axis in range(3) for sign in (1.0, -1.0)
    )
    room = _Room(np.array([-left, 0.0, -4.0]), np.array([right, top, far]), faces)
    return room, float(yaw)


def _sample_shape(rng: np.random.Generator, ceiling: float) -> _Shape:
    """A sphere, yaw-rotated box or vertical cylinder above the world origin."""
    material = _sample_material(rng, (0.05, 0.6), (0.2, 0.9))
    kind = rng.integers(3)
    if kind == 0:
        radius = min(rng.uniform(0.15, 1.0), ceiling / 2 - 0.1)
        lift = rng.uniform(0.2, 1.5) if rng.random() < 0.3 else 0.0
        y = min(radius + lift, ceiling - radius - 0.1)
        return _Sphere(np.array([0.0, y, 0.0]), radius, material)
    if kind == 1:
        half = rng.uniform([0.1, 0.1, 0.1], [1.0, 1.2, 1.0])
        half[1] = min(half[1], ceiling / 2 - 0.1)
        rotation = _yaw_matrix(rng.uniform(0.0, np.pi / 2))
        return _Box(np.array([0.0, half[1], 0.0]), half, rotation, material)
    height = min(rng.uniform(0.3, 3.0), ceiling - 0.2)
    return _Cylinder(np.array([0.0, height / 2, 0.0]), rng.uniform(0.08, 0.6), height, material)


def _sample_shapes(
    rng: np.random.Generator, room: _Room, camera: _Camera, min_depth: float
) -> tuple[_Shape, ...]:
    """3-10 shapes spread over the view and over the depth of the room.

    A shape is dropped when it does not fit between the walls or would come closer
    to the camera than min_depth plus a margin (it would blank part of the image).
    """
    ceiling = min(room.hi[1], 4.0)
    half_fov = np.radians(HFOV_DEG) / 2
    shapes = []
    for _ in range(rng.integers(3, 11)):
        shape = _sample_shape(rng, ceiling)
        reach = _footprint(shape)
        clearance = reach + min_depth + 0.3
        azimuth = camera.yaw + rng.uniform(-1.1, 1.1) * half_fov
        distance = clearance + max(room.hi[2] - clearance, 0.0) * rng.random() ** 0.8
        x = np.clip(distance * np.sin(azimuth), room.lo[0] + reach, room.hi[0] - reach)
        z = np.clip(distance * np.cos(azimuth), 0.0, room.hi[2] - reach)
        if np.hypot(x, z) >= clearance and room.hi[0] - room.lo[0] > 2 * reach:
            shapes.append(replace(shape, center=shape.center + np.array([x, 0.0, z])))
    return tuple(shapes)


def _sample_light(rng: np.random.Generator) -> _Light:
    elevation, azimuth = np.radians(rng.uniform(20.0, 70.0)), rng.uniform(0.0, 2 * np.pi)
    direction = np.array([np.cos(elevation) * np.sin(azimuth), np.sin(elevation),
                          np.cos(elevation) * np.cos(azimuth)])
    sun = _hsv(rng.uniform(0.05, 0.15), rng.uniform(0.0, 0.3), rng.uniform(0.35, 0.95))
    ambient = _hsv(rng.uniform(0.5, 0.65), rng.uniform(0.0, 0.3), rng.uniform(0.25, 0.45))
    fog = _hsv(rng.uniform(0.5, 0.65), rng.uniform(0.0, 0.2), rng.uniform(0.55, 0.85))
    return _Light(direction, sun, ambient, rng.uniform(0.0, 0.5), rng.uniform(15.0, 45.0), fog)


def _sample_scene(
    rng: np.random.Generator, height: int, width: int, min_depth: float, max_depth: float
) -> _Scene:
    camera = _sample_camera(rng, height, width)
    room, yaw = _sample_room(rng, max_depth)
    camera = replace(camera, yaw=yaw)
    shapes = _sample_shapes(rng, room, camera, min_depth)
    return _Scene(camera, room, shapes, _sample_light(rng))


# ----------------------------------------------------------------------------- rendering


def _trace(scene: _Scene, origin: np.ndarray, dirs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Nearest hit parameter and surface id (index into scene.surfaces) per ray from origin.

    Each shape is tested exactly only on the rays inside the cone its bounding
    sphere subtends at the origin, which keeps small or distant shapes cheap.
    """
    unit = dirs / np.sqrt(_dot(dirs, dirs))
    t, ids = scene.room.exit(origin, dirs)
    for k, shape in enumerate(scene.shapes, start=len(scene.room.faces)):
        q = shape.center - origin
        margin = q @ q - shape.radius_bound**2
        idx = np.nonzero(q @ unit >= np.sqrt(margin))[0] if margin > 0 else np.arange(len(t))
        t_shape = shape.hit(_col(origin), dirs[:, idx])
        closer = t_shape < t[idx]
        t[idx[closer]], ids[idx[closer]] = t_shape[closer], k
    return t, ids


def _shadowed(shapes: tuple[_Shape, ...], points: np.ndarray, light_dir: np.ndarray) -> np.ndarray:
    """Points whose path to the sun is blocked by a shape (walls cast no shadows).

    Points are projected along the light onto a plane; only those inside a shape's
    projected bounding circle, and not beyond it, get an exact shadow-ray test.
    """
    helper = np.array([1.0, 0.0, 0.0]) if abs(light_dir[0]) < 0.9 else np.array([0.0, 0.0, 1.0])
    e1 = np.cross(light_dir, helper)
    e1 /= np.linalg.norm(e1)
    basis = np.stack([e1, np.cross(light_dir, e1), light_dir])
    coords = basis @ points
    blocked = np.zeros(points.shape[1], dtype=bool)
    for shape in shapes:
        c, r = basis @ shape.center, shape.radius_bound
        near = (coords[0] - c[0]) ** 2 + (coords[1] - c[1]) ** 2 <= r * r
        idx = np.nonzero(near & (coords[2] < c[2] + r) & ~blocked)[0]
        dirs = np.broadcast_to(_col(light_dir), (3, len(idx)))
        blocked[idx] = np.isfinite(shape.hit(points[:, idx], dirs))
    return blocked


def _surface_properties(
    scene: _Scene, points: np.ndarray, view: np.ndarray, dist: np.ndarray, ends: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Camera-facing normals and textured albedo, (3, N) each, for hits sorted by surface.

    Surface k owns the contiguous slice ends[k]:ends[k + 1].
    """
    normals = np.empty_like(points)
    albedo = np.empty_like(points)
    pixel_angle = 1.0 / scene.camera.focal
    for surface, lo, hi in zip(scene.surfaces, ends[:-1], ends[1:]):
        if lo == hi:
            continue
        n = surface.normal(points[:, lo:hi])
        cos_view = _dot(n, view[:, lo:hi])
        n *= np.where(cos_view > 0, -1.0, 1.0)
        normals[:, lo:hi] = n
        footprint = dist[lo:hi] * pixel_angle / np.maximum(np.abs(cos_view), 0.1)
        albedo[:, lo:hi] = surface.material.albedo(surface.local(points[:, lo:hi]), footprint)
    return normals, albedo


def _by_surface(scene: _Scene, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Order sorting hits by surface, its inverse, and the slice ends of each surface.

    Working in surface order (one sort) lets each surface handle contiguous slices.
    """
    order = np.argsort(ids.astype(np.uint8), kind="stable")
    ends = np.searchsorted(ids[order], np.arange(len(scene.surfaces) + 1))
    inverse = np.empty_like(order)
    inverse[order] = np.arange(len(order))
    return order, inverse, ends


def _shade(scene: _Scene, dirs: np.ndarray, t: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Lambertian sun with cast shadows, ambient, a fading headlight and distance fog."""
    order, inverse, ends = _by_surface(scene, ids)
    dirs, t = np.take(dirs, order, axis=1), t[order]
    light = scene.light
    ray_len = np.sqrt(_dot(dirs, dirs))
    view = dirs / ray_len
    dist = t * ray_len
    points = _col(scene.camera.origin) + t * dirs
    normals, albedo = _surface_properties(scene, points, view, dist, ends)
    sun = np.clip(light.direction @ normals, 0.0, None)
    lit = np.nonzero(sun > 0)[0]
    offset = np.take(points, lit, axis=1) + _SHADOW_OFFSET * np.take(normals, lit, axis=1)
    sun[lit[_shadowed(scene.shapes, offset, light.direction)]] = 0.0
    head = light.headlight * np.clip(-_dot(normals, view), 0.0, None) / (1.0 + (dist / 4.0) ** 2)
    colour = albedo * (_col(light.ambient) + sun * _col(light.sun) + head)
    fog = np.exp(-dist / light.fog_distance)
    colour = colour * fog + _col(light.fog_colour) * (1.0 - fog)
    return np.take(colour, inverse, axis=1)


def _lidar_hits(
    scene: _Scene, origin: np.ndarray, dirs: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The scene as a `lidar_sim.Trace`: distance, beam-facing normal and albedo per unit ray."""
    t, ids = _trace(scene, origin, dirs)
    order, inverse, ends = _by_surface(scene, ids)
    dirs, dist = np.take(dirs, order, axis=1), t[order]
    points = _col(origin) + dist * dirs
    normals, albedo = _surface_properties(scene, points, dirs, dist, ends)
    return t, np.take(normals, inverse, axis=1), np.take(albedo, inverse, axis=1)


@dataclass(frozen=True)
class _Response:
    """How one camera records the scene: optics, exposure, sensor noise, tone curve."""

    blur: float  # Gaussian point spread, sigma in pixels
    gain: float  # exposure
    shot: float  # photon noise variance per unit signal
    read: float  # read noise, sigma
    gamma: float  # encoded value = linear ** (1 / gamma)


def _sample_response(rng: np.random.Generator) -> _Response:
    return _Response(
        blur=rng.uniform(0.0, 1.0),
        gain=float(np.exp(rng.uniform(np.log(0.7), np.log(1.4)))),
        shot=float(np.exp(rng.uniform(np.log(1e-4), np.log(2e-3)))),
        read=rng.uniform(0.002, 0.01),
        gamma=rng.uniform(0.8, 1.25),
    )


def _develop(rng: np.random.Generator, response: _Response, radiance: np.ndarray) -> np.ndarray:
    """(H, W, 3) float32 image in [0, 1] from (3, H, W) linear radiance: blur, exposure,
    shot and read noise, clipping, tone curve. Varying each per image keeps the network
    from learning one renderer's look instead of depth."""
    blurred = ndimage.gaussian_filter(radiance.astype(np.float32), (0.0, response.blur, response.blur),
                                      mode="nearest")
    signal = np.clip(blurred * np.float32(response.gain), 0.0, None)
    noise = np.sqrt(np.float32(response.shot) * signal + np.float32(response.read**2)) \
        * rng.standard_normal(signal.shape, dtype=np.float32)
    image = np.clip(signal + noise, 0.0, 1.0) ** np.float32(1.0 / response.gamma)
    return np.ascontiguousarray(image.transpose(1, 2, 0))


def render_scene(
    rng: np.random.Generator,
    height: int,
    width: int,
    *,
    min_depth: float = 0.5,
    max_depth: float = 15.0,
    lidar: LidarParams = DEFAULT_LIDAR,
) -> dict[str, np.ndarray]:
    """Render one random scene.

    Returns float32 rgb (H, W, 3) in [0, 1] as a randomised camera records it, depth
    (the exact z-depth of the scene, not ray length) and lidar (the simulated sensor's
    z-depth, `lidar_sim`), both (H, W) in metres with 0 wherever there is no value in
    (min_depth, max_depth). Scene, LiDAR and camera draw from their own streams, so the
    LiDAR's parameters change nothing else.
    """
    scene_rng, lidar_rng, camera_rng = rng.spawn(3)
    scene = _sample_scene(scene_rng, height, width, min_depth, max_depth)
    dirs = scene.camera.rays()
    t, ids = _trace(scene, scene.camera.origin, dirs)
    radiance = _shade(scene, dirs, t, ids).reshape(3, height, width)
    z = t.reshape(height, width)
    depth = np.where((z > min_depth) & (z < max_depth), z, 0.0)
    sweep = lidar_sim.scan(lidar_rng, lidar, scene.camera, partial(_lidar_hits, scene))
    rgb = _develop(camera_rng, _sample_response(camera_rng), radiance)
    return {
        "rgb": rgb,
        "depth": depth.astype(np.float32),
        "lidar": sweep.depth_image(scene.camera, min_depth, max_depth).astype(np.float32),
    }


# ----------------------------------------------------------------------------- dataset


def sample_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """Generator of one sample, independent of every other sample and of split sizes."""
    return np.random.default_rng(np.random.SeedSequence([seed, zlib.crc32(split.encode()), index]))


def sample_name(split: str, index: int) -> str:
    return f"{split}_{index:05d}"


def generate_dataset(
    root: str | Path,
    *,
    height: int = 96,
    width: int = 320,
    counts: dict[str, int] | None = None,
    seed: int = 0,
    min_depth: float = 0.5,
    max_depth: float = 15.0,
    lidar: LidarParams = DEFAULT_LIDAR,
    progress: bool = False,
) -> Path:
    """Write a synthetic dataset in the folder layout; the same call writes identical files.

    meta.json, written last, records every parameter of the rendering, the LiDAR's included.
    """
    root = Path(root)
    counts = dict(DEFAULT_COUNTS if counts is None else counts)
    for folder in ("rgb", "depth", "lidar"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    (root / "meta.json").unlink(missing_ok=True)
    with tqdm(total=sum(counts.values()), desc="synthetic data", disable=not progress) as bar:
        for split, count in counts.items():
            names = [sample_name(split, i) for i in range(count)]
            for i, name in enumerate(names):
                sample = render_scene(sample_rng(seed, split, i), height, width,
                                      min_depth=min_depth, max_depth=max_depth, lidar=lidar)
                write_rgb_png(root / "rgb" / f"{name}.png", sample["rgb"])
                write_depth_png(root / "depth" / f"{name}.png", sample["depth"])
                write_depth_png(root / "lidar" / f"{name}.png", sample["lidar"])
                bar.update()
            (root / f"{split}.txt").write_text("".join(f"{n}\n" for n in names))
    meta = {
        "generator": "jaxdepth.data.synthetic", "format_version": FORMAT_VERSION,
        "height": height, "width": width, "counts": counts, "seed": seed,
        "min_depth": min_depth, "max_depth": max_depth, "hfov_deg": HFOV_DEG,
        "lidar": _as_json(lidar),
    }
    (root / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    return root


def _as_json(params: LidarParams) -> dict[str, Any]:
    """The parameters as meta.json stores and reads them back (tuples become lists)."""
    return json.loads(json.dumps(asdict(params)))


def ensure_dataset(root: str | Path, **kwargs: Any) -> Path:
    """Generate the dataset unless a finished one (meta.json is written last) is there.

    An existing data set rendered with other parameters is an error, not silently reused.
    """
    root = Path(root)
    meta_path = root / "meta.json"
    if not meta_path.is_file():
        return generate_dataset(root, **kwargs)
    meta = json.loads(meta_path.read_text())
    wanted = {"format_version": FORMAT_VERSION, **{k: v for k, v in kwargs.items() if k in meta},
              "lidar": _as_json(kwargs.get("lidar", DEFAULT_LIDAR))}
    if "counts" in wanted and wanted["counts"] is None:
        wanted.pop("counts")
    differ = {k: (meta.get(k), v) for k, v in wanted.items() if meta.get(k) != v}
    if differ:
        detail = ", ".join(f"{k}: {a!r} on disk, {b!r} asked" for k, (a, b) in differ.items())
        raise DataError(f"{meta_path}: the data set there was rendered with other parameters "
                        f"({detail}); delete the folder or choose another data.root")
    return root
