"""Typed configuration: dataclasses, YAML loading and ``--set key=value`` overrides.

Every key is checked: an unknown or mistyped key, or a value of the wrong type, is an
error that names the key, never a silently ignored setting.
"""
from __future__ import annotations

import copy
import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A configuration file or override is invalid; the message names the key."""


@dataclass(frozen=True)
class ModelConfig:
    encoder: str = "resnet18"                 # resnet18 | resnet34
    encoding: str = "intfrac"                 # see jaxdepth.encodings.ENCODINGS
    lidar_encoding: str = "inverse"           # see jaxdepth.encodings.LidarEncoding
    lidar_fill: bool = False                   # add the nearest-return fill as an input channel
    fill_prior: bool = False                   # LiDAR pass: linear heads adding the fill (encodings.fill_prior)
    correction_curve: float = 0.0              # k of those heads' companded output (encodings.FillCorrection); 0: linear
    correction_phases: int = 1                 # uint8 copies of that output, rounded 1/phases of a code apart
    min_depth: float = 0.5
    max_depth: float = 15.0
    sparse: bool = True                        # build the sparse auxiliary network (SAN)
    san_kernels: tuple[int, ...] = (5, 5, 3, 3, 3)
    san_path_depths: tuple[int, ...] = (1, 2, 3)
    san_stage0_path_depths: tuple[int, ...] = ()   # the stride-2 stage's paths (64 channels at H/2); (): san_path_depths
    film: bool = False                         # FiLM on scale 0 from pooled sparse features
    full_res: int = 0                          # channels of stride-1 RGB + LiDAR features; 0: none
    decoder_channels: tuple[int, ...] = (16, 32, 64, 128, 256)
    activation_cap: float = 0.0                # ReLU-N: SAN, fusion and decoder activations clipped at this; 0: none
    grid_inputs: bool = False                  # FP32 too takes the inputs on their 8-bit grids, as INT8 does
    num_scales: int = 4                        # heads trained at scales 0..num_scales-1
    # Loss weights of the integer/fraction encoding: L_int + w_frac L_frac + w_depth L1(depth).
    int_weight: float = 1.0
    frac_weight: float = 10.0
    depth_weight: float = 0.5


@dataclass(frozen=True)
class DataConfig:
    format: str = "folder"                     # folder | kitti | nyu (jaxdepth.data.sources)
    root: str = "data/synthetic"
    raw_root: str = ""                         # kitti: the raw drives (<date>/<drive>/image_0X/data)
    drives: dict[str, tuple[str, ...]] = field(default_factory=dict)  # kitti: drives of a split
    frame_step: dict[str, int] = field(default_factory=dict)  # kitti, nyu: every n-th image of a split
    sparse_samples: int = 500                  # nyu: LiDAR points sampled from the ground truth
    generate: bool = True                      # render the embedded data set if root is empty
    gen_height: int = 96
    gen_width: int = 320
    gen_counts: dict[str, int] = field(default_factory=lambda: {
        "train": 800, "val": 48, "test": 96, "calib": 64})
    gen_seed: int = 0
    height: int = 96
    width: int = 320
    batch_size: int = 8
    hflip: float = 0.5
    brightness: float = 0.2
    contrast: float = 0.2
    saturation: float = 0.2
    hue: float = 0.05
    workers: int = 2
    prefetch: int = 2


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 1000
    lr: float = 1e-3
    warmup_steps: int = 0                      # linear warm-up from 0 to lr
    lr_boundaries: tuple[float, ...] = (0.6, 0.85)   # fractions of steps
    lr_decay: float = 0.3
    grad_clip: float = 1.0                     # global norm; 0 disables
    weight_decay: float = 0.0
    # SAN models: every step also decodes the RGB-only skips (one set of weights, both modes).
    mono_weight: float = 1.0                   # loss weight of the RGB-only pass; 0: no such pass
    consistency_weight: float = 0.1            # RGB skips pulled towards the detached fused ones
    correction_weight: float = 0.0             # L1 of the finest fill head's correction in z (FillCorrection.code_loss)
    seed: int = 0
    log_every: int = 25
    val_every: int = 250
    ckpt_every: int = 250
    keep: int = 2                              # last N checkpoints kept (plus the best)
    run_dir: str = "runs/default"


@dataclass(frozen=True)
class EvalConfig:
    split: str = "test"
    batch_size: int = 8
    garg_crop: bool = False
    median_scaling: bool = True                # also report median-scaled metrics


@dataclass(frozen=True)
class QuantConfig:
    preset: str = "npu_strict"                 # npu_strict | per_channel | symmetric
    qat_steps: int = 0                         # QAT phase after the FP32 steps
    qat_lr: float = 1e-4
    ema_decay: float = 0.99                    # activation range estimate during QAT


@dataclass(frozen=True)
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    quant: QuantConfig = field(default_factory=QuantConfig)


def _choices() -> dict[str, list[str]]:
    """Allowed values of the enumerated keys, read from the modules that define them."""
    from jaxdepth.encodings import ENCODINGS, LIDAR_ENCODINGS
    from jaxdepth.models.resnet import STAGE_SIZES
    from jaxdepth.quant.numerics import PRESETS
    return {"model.encoder": sorted(STAGE_SIZES), "model.encoding": sorted(ENCODINGS),
            "model.lidar_encoding": list(LIDAR_ENCODINGS),
            "quant.preset": sorted(PRESETS), "data.format": ["folder", "kitti", "nyu"]}


STRIDE = 32          # the encoder's total downsampling: input sizes must be multiples of it
SCALES = 5           # encoder scales, hence decoder levels and possible heads


def validate(cfg: Config) -> Config:
    """Checks every value against its allowed set or range, so a bad config fails before
    any data is rendered or any step is compiled; the message names the key."""
    for key, allowed in _choices().items():
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        if value not in allowed:
            raise ConfigError(f"{key}: {value!r} is not one of {', '.join(allowed)}")
    m, d, t, e, q = cfg.model, cfg.data, cfg.train, cfg.eval, cfg.quant
    rules: list[tuple[str, Any, bool, str]] = [
        ("model.min_depth", m.min_depth, m.min_depth > 0, "> 0"),
        ("model.max_depth", m.max_depth, m.max_depth > m.min_depth, "> model.min_depth"),
        ("model.san_kernels", list(m.san_kernels),
         len(m.san_kernels) == SCALES and all(k >= 1 and k % 2 == 1 for k in m.san_kernels),
         f"{SCALES} odd kernel sizes"),
        ("model.san_path_depths", list(m.san_path_depths),
         len(m.san_path_depths) >= 1 and all(k >= 1 for k in m.san_path_depths),
         "one or more depths >= 1"),
        ("model.san_stage0_path_depths", list(m.san_stage0_path_depths),
         all(k >= 1 for k in m.san_stage0_path_depths), "depths >= 1 ([]: model.san_path_depths)"),
        ("model.decoder_channels", list(m.decoder_channels),
         len(m.decoder_channels) == SCALES and all(c >= 1 for c in m.decoder_channels),
         f"{SCALES} channel counts >= 1"),
        ("model.num_scales", m.num_scales, 1 <= m.num_scales <= SCALES, f"in 1..{SCALES}"),
        ("model.full_res", m.full_res, m.full_res >= 0, ">= 0 (0: none)"),
        ("model.activation_cap", m.activation_cap, m.activation_cap >= 0, ">= 0 (0: none)"),
        ("model.correction_phases", m.correction_phases, m.correction_phases >= 1, ">= 1"),
        ("data.height", d.height, d.height >= STRIDE and d.height % STRIDE == 0,
         f"a positive multiple of {STRIDE}"),
        ("data.width", d.width, d.width >= STRIDE and d.width % STRIDE == 0,
         f"a positive multiple of {STRIDE}"),
        ("data.gen_height", d.gen_height, d.gen_height >= 1, ">= 1"),
        ("data.gen_width", d.gen_width, d.gen_width >= 1, ">= 1"),
        ("data.gen_counts", dict(d.gen_counts), all(n >= 0 for n in d.gen_counts.values()),
         "counts >= 0"),
        ("data.batch_size", d.batch_size, d.batch_size >= 1, ">= 1"),
        ("data.hflip", d.hflip, 0 <= d.hflip <= 1, "in [0, 1]"),
        ("data.brightness", d.brightness, d.brightness >= 0, ">= 0"),
        ("data.contrast", d.contrast, d.contrast >= 0, ">= 0"),
        ("data.saturation", d.saturation, d.saturation >= 0, ">= 0"),
        ("data.hue", d.hue, 0 <= d.hue <= 0.5, "in [0, 0.5]"),
        ("data.workers", d.workers, d.workers >= 1, ">= 1"),
        ("data.prefetch", d.prefetch, d.prefetch >= 1, ">= 1"),
        ("train.steps", t.steps, t.steps >= 0, ">= 0"),
        ("train.lr", t.lr, t.lr > 0, "> 0"),
        ("train.warmup_steps", t.warmup_steps, t.warmup_steps >= 0, ">= 0"),
        ("train.lr_boundaries", list(t.lr_boundaries),
         all(0 < f < 1 for f in t.lr_boundaries) and list(t.lr_boundaries) == sorted(t.lr_boundaries),
         "increasing fractions in (0, 1)"),
        ("train.lr_decay", t.lr_decay, t.lr_decay > 0, "> 0"),
        ("train.grad_clip", t.grad_clip, t.grad_clip >= 0, ">= 0 (0 disables)"),
        ("train.weight_decay", t.weight_decay, t.weight_decay >= 0, ">= 0"),
        ("train.mono_weight", t.mono_weight, t.mono_weight >= 0, ">= 0 (0 disables)"),
        ("train.consistency_weight", t.consistency_weight, t.consistency_weight >= 0, ">= 0"),
        ("train.correction_weight", t.correction_weight, t.correction_weight >= 0, ">= 0"),
        ("train.seed", t.seed, t.seed >= 0, ">= 0"),
        ("train.log_every", t.log_every, t.log_every >= 1, ">= 1"),
        ("train.val_every", t.val_every, t.val_every >= 1, ">= 1"),
        ("train.ckpt_every", t.ckpt_every, t.ckpt_every >= 1, ">= 1"),
        ("train.keep", t.keep, t.keep >= 1, ">= 1"),
        ("train.run_dir", t.run_dir, bool(t.run_dir), "a folder"),
        ("eval.batch_size", e.batch_size, e.batch_size >= 1, ">= 1"),
        ("quant.qat_steps", q.qat_steps, q.qat_steps >= 0, ">= 0"),
        ("quant.qat_lr", q.qat_lr, q.qat_lr > 0, "> 0"),
        ("quant.ema_decay", q.ema_decay, 0 <= q.ema_decay < 1, "in [0, 1)"),
    ]
    for key, value, ok, allowed in rules:
        if not ok:
            raise ConfigError(f"{key}: {value!r} is not allowed; it must be {allowed}")
    if m.fill_prior and m.sparse:          # without a SAN there is no LiDAR pass to act on
        from jaxdepth.encodings import get_fill_prior
        try:
            get_fill_prior(m)
        except ValueError as e:
            raise ConfigError(str(e)) from e
    return cfg


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Checks ``value`` against the annotated type ``tp``; ints widen to floats."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return _build(tp, value, key + ".")
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        (item_tp, _) = typing.get_args(tp)
        return tuple(_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        k_tp, v_tp = typing.get_args(tp)
        return {_coerce(k, k_tp, key): _coerce(v, v_tp, f"{key}.{k}") for k, v in value.items()}
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(tp):
            try:
                return _coerce(value, option, key)
            except ConfigError:
                continue
        raise ConfigError(f"{key}: {value!r} does not match {tp}")
    if tp is type(None):
        if value is not None:
            raise ConfigError(f"{key}: expected null, got {value!r}")
        return None
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is bool and not isinstance(value, bool):
        raise ConfigError(f"{key}: expected true/false, got {value!r}")
    if tp is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if not isinstance(value, tp):
        raise ConfigError(f"{key}: expected {tp.__name__}, got {value!r}")
    return value


def _build(cls: type, data: dict, prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"unknown config key {prefix}{unknown[0]!s} "
                          f"(valid keys under '{prefix or '<top>'}': {', '.join(sorted(names))})")
    kwargs = {k: _coerce(v, hints[k], prefix + k) for k, v in data.items()}
    return cls(**kwargs)


def to_dict(cfg: Any) -> dict:
    """Plain nested dict (tuples as lists) for YAML and JSON."""
    out = {}
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        if dataclasses.is_dataclass(v):
            out[f.name] = to_dict(v)
        elif isinstance(v, tuple):
            out[f.name] = list(v)
        elif isinstance(v, dict):
            out[f.name] = dict(v)
        else:
            out[f.name] = v
    return out


def _set_path(data: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = data
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {dotted}: '{p}' is not a section")
    node[parts[-1]] = value


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Reads a YAML config (or the defaults), applies ``key=value`` overrides, validates."""
    data: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: invalid YAML: {e}") from e
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: top level must be a mapping")
    try:
        return config_from_dict(data, overrides)
    except ConfigError as e:
        raise ConfigError(f"{path or 'config'}: {e}") from None


def config_from_dict(data: dict, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """A config stored as a dict (e.g. in a checkpoint), with ``key=value`` overrides."""
    data = copy.deepcopy(data)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value, got {item!r}")
        key, raw = item.split("=", 1)
        _set_path(data, key.strip(), yaml.safe_load(raw))
    return validate(_build(Config, data))


def replace(cfg: Config, **sections: dict) -> Config:
    """Returns ``cfg`` with some fields of some sections replaced, e.g. ``train={'steps': 5}``."""
    return validate(_build(Config, _merge(to_dict(cfg), sections)))


def _merge(base: dict, upd: dict) -> dict:
    out = dict(base)
    for k, v in upd.items():
        out[k] = _merge(base.get(k, {}), v) if isinstance(v, dict) and isinstance(base.get(k), dict) else v
    return out


RUNTIME_KEYS = ("train.run_dir", "data.workers", "data.prefetch")  # change no computed value


def config_diff(old: Config, new: Config) -> dict[str, tuple[Any, Any]]:
    """``{section.key: (old, new)}`` for every value that differs, except the ``RUNTIME_KEYS``."""
    flat = lambda cfg: {f"{s}.{k}": v for s, sec in to_dict(cfg).items() for k, v in sec.items()}
    a, b = flat(old), flat(new)
    return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b))
            if a.get(k) != b.get(k) and k not in RUNTIME_KEYS}


def with_runtime_keys(cfg: Config, source: Config) -> Config:
    """``cfg`` with the ``RUNTIME_KEYS`` of ``source``."""
    sections: dict[str, dict] = {}
    for key in RUNTIME_KEYS:
        section, name = key.split(".")
        sections.setdefault(section, {})[name] = getattr(getattr(source, section), name)
    return replace(cfg, **sections)


def absolute_paths(cfg: Config) -> Config:
    """``data.root`` made absolute against the working directory, so the config stored in
    a run and its checkpoints finds the same data from any folder."""
    root = str(Path(cfg.data.root).absolute())
    return cfg if root == cfg.data.root else replace(cfg, data={"root": root})


def save_config(cfg: Config, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
