"""One Adam train step of jaxdepth and of the same network in PyTorch, side by side.

The PyTorch model below is written from ``jaxdepth.models`` layer for layer: ResNet-18
encoder with the input normalisation inside (and the config's ``model.full_res`` stride-1
stage), the SAN (max-pool by 2, mask concatenated, parallel conv+BN+ReLU paths summed)
fused by per-channel gates, the monodepth2 decoder with nearest x2 upsampling and sigmoid
heads at scales 0..3, heads resized bilinearly to full resolution for the integer/fraction
loss, gradient clipping and AdamW. Both sides run the integer/fraction dual head and an
inverse-depth LiDAR input without the fill channel: the default config's log head, log
LiDAR input, fill channel and linear heads are not rebuilt in PyTorch (they change only
the input layer and the heads). The config's ``model.activation_cap`` (ReLU-N on the SAN,
the fusions and the decoder's convs) and ``model.grid_inputs`` (both inputs rounded to
their 8-bit grids) are. With the SAN it trains as ``train_lib.make_train_step``
does: the fused pass, the RGB-only pass (``train.mono_weight``) and the skip consistency
term (``train.consistency_weight``). Both sides use 2 threads and the same shapes; the two
frameworks' steps alternate (A B A B ...) so both see the same machine load, and the
medians are compared.

One run of this script times both frameworks, each by default in a worker process of its
own (``bench/step_worker.py``), as each is used: jaxdepth under ``train.py``'s malloc
setting, PyTorch on glibc's malloc as it comes (``--malloc``). ``--in-process`` steps both
in this one process on glibc's malloc as it comes: there they share one heap and the
cores with each other's idle threads, and under ``train.py``'s setting XLA's steps
slowed (``docs/speed.md``).

torch is a benchmark-only dependency: ``pip install -e '.[bench]'``. Usage:
    python bench/torch_reference.py [--config configs/default.yaml] [--steps 5]
        [--shapes 192x640x2 64x224x8] [--variants rgb san] [--malloc as-run|glibc|huge-pages]
        [--in-process] [--set k=v ...]
Prints a table and one JSON line (``ratio`` = jaxdepth step time / PyTorch step time).
"""
from __future__ import annotations

import argparse
import json
from importlib.metadata import version
from typing import Callable

import numpy as np
import step_worker
import torch
from common import alternating, random_batch, reference_config, train_step_runner
import torch.nn.functional as F
from torch import nn

THREADS = 2
RGB_MEAN, RGB_STD = 0.45, 0.225
BN_MOMENTUM = 0.1        # torch convention: flax's 0.9 running-average decay
BN_EPS = 1e-5


# ----------------------------------------------------------------------------- the network


class ConvBlock(nn.Sequential):
    """Conv with 'same' zero padding, + BatchNorm or bias, + ReLU, or ReLU-N with ``cap``
    (``layers.Conv``)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, bn: bool = True,
                 relu: bool = True, cap: float = 0.0) -> None:
        parts: list[nn.Module] = [nn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=not bn)]
        if bn:
            parts.append(nn.BatchNorm2d(cout, BN_EPS, BN_MOMENTUM))
        if relu:
            parts.append(nn.Hardtanh(0.0, cap) if cap else nn.ReLU())
        super().__init__(*parts)


def capped(x: torch.Tensor, cap: float) -> torch.Tensor:
    """``layers.capped``: x clipped at ``cap`` (0: unchanged)."""
    return torch.clamp(x, max=cap) if cap else x


def on_grid(x: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    """x rounded to the uint8 grid over [lo, hi] (``layers.Input`` with ``grid``)."""
    step = (hi - lo) / 255.0
    return lo + torch.clamp(torch.round((x - lo) / step), 0, 255) * step


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = ConvBlock(cin, cout, 3, stride)
        self.conv2 = ConvBlock(cout, cout, 3, relu=False)
        self.shortcut = (ConvBlock(cin, cout, 1, stride, relu=False)
                         if stride != 1 or cin != cout else nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.conv2(self.conv1(x)) + self.shortcut(x))


CHANNELS = (64, 64, 128, 256, 512)


def encoder_channels(full_res: int) -> tuple[int, ...]:
    """Channels of the encoder's feature maps, finest first (the stride-1 stage if any)."""
    return ((full_res,) if full_res else ()) + CHANNELS


class ResNet18Encoder(nn.Module):
    def __init__(self, full_res: int, grid: bool = False) -> None:
        super().__init__()
        self.grid = grid
        self.conv0 = ConvBlock(3, full_res, 3) if full_res else None
        self.conv1 = ConvBlock(3, CHANNELS[0], 7, 2)
        self.layers = nn.ModuleList()
        cin = CHANNELS[0]
        for i, cout in enumerate(CHANNELS[1:]):
            stride = 1 if i == 0 else 2
            self.layers.append(nn.Sequential(BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1)))
            cin = cout

    def forward(self, rgb: torch.Tensor) -> list[torch.Tensor]:
        x = (rgb - RGB_MEAN) / RGB_STD
        if self.grid:
            x = on_grid(x, -RGB_MEAN / RGB_STD, (1.0 - RGB_MEAN) / RGB_STD)
        features = [self.conv0(x)] if self.conv0 is not None else []
        x = self.conv1(x)
        features.append(x)
        x = F.max_pool2d(x, 3, 2, 1)
        for layer in self.layers:
            x = layer(x)
            features.append(x)
        return features


class SparseStage(nn.Module):
    def __init__(self, cin: int, cout: int, kernel: int, path_depths: tuple[int, ...], cap: float) -> None:
        super().__init__()
        self.cap = cap
        self.paths = nn.ModuleList(
            nn.Sequential(*[ConvBlock(cin + 1 if j == 0 else cout, cout, kernel, cap=cap) for j in range(d)])
            for d in path_depths)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = torch.cat([x, mask], 1)
        return capped(sum(path(x) for path in self.paths), self.cap)


class SparseEncoder(nn.Module):
    def __init__(self, kernels: tuple[int, ...], path_depths: tuple[int, ...],
                 stage0_path_depths: tuple[int, ...], min_depth: float, full_res: int, cap: float,
                 grid: bool) -> None:
        super().__init__()
        self.min_depth, self.grid = min_depth, grid
        self.stage_full = SparseStage(1, full_res, 3, path_depths, cap) if full_res else None
        cins = (1,) + CHANNELS[:-1]
        depths = [stage0_path_depths or path_depths] + [path_depths] * (len(CHANNELS) - 1)
        self.stages = nn.ModuleList(SparseStage(ci, co, k, d, cap)
                                    for ci, co, k, d in zip(cins, CHANNELS, kernels, depths))

    def forward(self, lidar: torch.Tensor) -> list[torch.Tensor]:
        mask = (lidar > 0).float()
        x = torch.where(lidar > 0, self.min_depth / lidar.clamp(min=self.min_depth), 0.0)   # inverse
        if self.grid:
            x = on_grid(x, 0.0, 1.0)
        features = [self.stage_full(x, mask)] if self.stage_full is not None else []
        for stage in self.stages:
            x, mask = F.max_pool2d(x, 2), F.max_pool2d(mask, 2)
            x = stage(x, mask)
            features.append(x)
        return features


class Fusion(nn.Module):
    def __init__(self, channels: int, cap: float) -> None:
        super().__init__()
        self.cap = cap
        self.gate = nn.Parameter(torch.full((1, channels, 1, 1), 0.5))
        self.bias = nn.Parameter(torch.zeros(1, channels, 1, 1))

    def forward(self, rgb: torch.Tensor, sparse: torch.Tensor) -> torch.Tensor:
        s = torch.sigmoid(self.gate)
        return capped(s * rgb + (1 - s) * sparse + self.bias, self.cap)


class DepthDecoder(nn.Module):
    def __init__(self, channels: tuple[int, ...], out_channels: int, num_scales: int,
                 skips: tuple[int, ...], cap: float) -> None:
        super().__init__()
        self.num_scales = num_scales
        self.offset = len(skips) - len(channels)   # 0, or 1 with a full-resolution map
        self.up0, self.up1, self.heads = nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
        for i in range(len(channels)):
            cin = CHANNELS[-1] if i == len(channels) - 1 else channels[i + 1]
            skip = skips[i + self.offset - 1] if i + self.offset > 0 else 0
            self.up0.append(ConvBlock(cin, channels[i], 3, bn=False, cap=cap))
            self.up1.append(ConvBlock(channels[i] + skip, channels[i], 3, bn=False, cap=cap))
        self.heads = nn.ModuleList(ConvBlock(channels[i], out_channels, 3, bn=False, relu=False)
                                   for i in range(num_scales))

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        x, heads = features[-1], []
        for i in range(len(self.up0) - 1, -1, -1):
            x = F.interpolate(self.up0[i](x), scale_factor=2, mode="nearest")
            if i + self.offset > 0:
                x = torch.cat([x, features[i + self.offset - 1]], 1)
            x = self.up1[i](x)
            if i < self.num_scales:
                heads.append(torch.sigmoid(self.heads[i](x)))
        return heads[::-1]


class ResNetSAN(nn.Module):
    def __init__(self, model_cfg, out_channels: int) -> None:
        super().__init__()
        m = model_cfg
        if m.film or m.encoder != "resnet18" or m.fill_prior or m.lidar_fill or m.lidar_encoding != "inverse":
            raise ValueError("the PyTorch reference is ResNet-18 with an inverse-depth LiDAR input, "
                             "without FiLM, fill channel or linear heads")
        self.encoder = ResNet18Encoder(m.full_res, m.grid_inputs)
        self.san = (SparseEncoder(tuple(m.san_kernels), tuple(m.san_path_depths),
                                  tuple(m.san_stage0_path_depths), m.min_depth, m.full_res,
                                  m.activation_cap, m.grid_inputs) if m.sparse else None)
        channels = encoder_channels(m.full_res)
        self.fuse = nn.ModuleList(Fusion(c, m.activation_cap) for c in channels) if m.sparse else None
        self.decoder = DepthDecoder(tuple(m.decoder_channels), out_channels, m.num_scales, channels,
                                    m.activation_cap)

    def forward(self, rgb: torch.Tensor, lidar: torch.Tensor | None, dual: bool = False):
        """Heads; with ``dual``, (fused heads, RGB-only heads, skip consistency gap)."""
        features = self.encoder(rgb)
        if self.san is None or lidar is None:
            return self.decoder(features)
        fused = [f(x, s) for f, x, s in zip(self.fuse, features, self.san(lidar))]
        if not dual:
            return self.decoder(fused)
        gap = sum(torch.mean(torch.square(r - f.detach())) for r, f in zip(features, fused)) / len(fused)
        return self.decoder(fused), self.decoder(features), gap


def intfrac_loss(heads: list[torch.Tensor], depth: torch.Tensor, min_depth: float,
                 max_depth: float) -> torch.Tensor:
    """``encodings.IntegerFraction.loss`` averaged over the scales (``multiscale_loss``)."""
    mask = ((depth > min_depth) & (depth < max_depth)).float()
    count = mask.sum().clamp(min=1.0)
    d = depth.clamp(0.0, max_depth)
    whole = torch.floor(d)
    t_int, t_frac = whole / max_depth, d - whole
    total = 0.0
    for head in heads:
        head = F.interpolate(head, size=depth.shape[-2:], mode="bilinear", align_corners=False)
        s_int, s_frac = head[:, 0], head[:, 1]
        pred = (max_depth * s_int + s_frac).clamp(min_depth, max_depth)
        total = total + ((s_int - t_int).abs() * mask).sum() / count \
            + 10.0 * ((s_frac - t_frac).abs() * mask).sum() / count \
            + 0.5 * ((pred - depth).abs() * mask).sum() / count
    return total / len(heads)


def torch_step(cfg, batch: dict) -> Callable[[], None]:
    """One train step of the PyTorch network on ``batch`` (NHWC numpy, as jaxdepth's)."""
    torch.manual_seed(0)
    model = ResNetSAN(cfg.model, out_channels=2).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=cfg.train.weight_decay)
    rgb = torch.from_numpy(batch["rgb"]).permute(0, 3, 1, 2).contiguous()
    depth = torch.from_numpy(batch["depth"])
    lidar = torch.from_numpy(batch["lidar"])[:, None] if cfg.model.sparse else None
    t, m = cfg.train, cfg.model
    dual = m.sparse and t.mono_weight > 0

    def run() -> None:
        if dual:
            lidar_heads, mono_heads, gap = model(rgb, lidar, dual=True)
            loss = (intfrac_loss(lidar_heads, depth, m.min_depth, m.max_depth)
                    + t.mono_weight * intfrac_loss(mono_heads, depth, m.min_depth, m.max_depth)
                    + t.consistency_weight * gap)
        else:
            loss = intfrac_loss(model(rgb, lidar), depth, m.min_depth, m.max_depth)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.train.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
        opt.step()

    return run


# ----------------------------------------------------------------------------- timing


def in_processes(args: argparse.Namespace, shape: str, variant: str) -> dict[str, list[float]]:
    """Each framework's step in a worker of its own (``bench/step_worker.py``), stepped in turn."""
    workers = {fw: step_worker.spawn(fw, shape, variant, args.malloc, args.config, args.overrides, serve=True)
               for fw in ("jaxdepth", "pytorch")}
    times: dict[str, list[float]] = {fw: [] for fw in workers}
    try:
        for _ in range(args.steps):
            for fw, proc in workers.items():
                times[fw].append(step_worker.step_seconds(proc))
        return times
    finally:
        for p in workers.values():
            p.stdin.close()
            p.wait()


def in_this_process(args: argparse.Namespace, shape: str, variant: str) -> dict[str, list[float]]:
    """Both frameworks' steps in this process (its malloc: glibc's as it comes), in turn."""
    cfg = reference_config(args.config, args.overrides, shape, variant)
    runs = {"jaxdepth": train_step_runner(cfg)[0], "pytorch": torch_step(cfg, random_batch(cfg.data))}
    runs["pytorch"]()
    return alternating(runs, args.steps)[0]


def row(shape: str, variant: str, times: dict[str, list[float]]) -> dict:
    h, w, b = (int(v) for v in shape.split("x"))
    med = {k: float(np.median(v)) for k, v in times.items()}
    return {"variant": variant, "height": h, "width": w, "batch": b,
            "jaxdepth_s": round(med["jaxdepth"], 3), "pytorch_s": round(med["pytorch"], 3),
            "jaxdepth_range_s": [round(min(times["jaxdepth"]), 3), round(max(times["jaxdepth"]), 3)],
            "pytorch_range_s": [round(min(times["pytorch"]), 3), round(max(times["pytorch"]), 3)],
            "ratio": round(med["jaxdepth"] / med["pytorch"], 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/default.yaml")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--shapes", nargs="+", default=["192x640x2", "64x224x8"], metavar="HxWxB")
    parser.add_argument("--variants", nargs="+", default=["rgb", "san"], choices=["rgb", "san"])
    parser.add_argument("--malloc", choices=step_worker.MALLOC, default="as-run",
                        help="the workers' malloc (bench/step_worker.py)")
    parser.add_argument("--in-process", action="store_true",
                        help="both frameworks in this process, on glibc's malloc as it comes")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    if args.in_process:
        from jaxdepth.cli import setup_jax
        torch.set_num_threads(THREADS)
        torch.set_num_interop_threads(1)
        setup_jax()

    timed = in_this_process if args.in_process else in_processes
    rows = [row(shape, variant, timed(args, shape, variant)) for shape in args.shapes for variant in args.variants]
    print(f"{'network':<8}{'HxW':>9}{'batch':>6}{'jaxdepth s':>12}{'PyTorch s':>11}{'ratio':>7}")
    for r in rows:
        print(f"{r['variant']:<8}{r['height']:>4}x{r['width']:<4}{r['batch']:>6}{r['jaxdepth_s']:>12.3f}"
              f"{r['pytorch_s']:>11.3f}{r['ratio']:>7.2f}")
    print(json.dumps({"bench": "torch_reference", "torch": torch.__version__, "jax": version("jax"),
                      "threads": THREADS, "steps": args.steps,
                      "processes": "one" if args.in_process else f"one per framework, malloc {args.malloc}",
                      "results": rows}))


if __name__ == "__main__":
    main()
