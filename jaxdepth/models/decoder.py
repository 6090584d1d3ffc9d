"""Depth decoder (monodepth2 family) with heads at scales 0..3."""
from __future__ import annotations

import flax.linen as nn
import jax

from jaxdepth.encodings import FillCorrection
from jaxdepth.models.layers import FLOAT, Concat, Conv, Head, Quant, Tensor, Upsample, value


class DepthDecoder(nn.Module):
    """For i = 4..0: conv3x3+ReLU, nearest x2, concat the skip at stride 2^i (i > 0, or
    i = 0 when the encoder has a full-resolution feature), conv3x3+ReLU; heads.
    With ``prior``, the LiDAR pass ends in linear heads over ``fills`` (the host's float
    fill channel at each head's scale; ``layers.Head``), and the RGB-only pass (``fills``
    None), which has no fill to correct, keeps its own sigmoid heads.

    Zero padding, bias, no normalisation. ``features`` holds one map per encoder stride,
    finest first, the last one the bottleneck. Returns head outputs for scales
    0..num_scales-1 (finest first); at inference only scale 0 is built.
    """

    channels: tuple[int, ...] = (16, 32, 64, 128, 256)
    out_channels: int = 1
    num_scales: int = 4
    prior: FillCorrection | None = None
    quant: Quant = FLOAT
    cap: float = 0.0               # the upconvs' outputs clipped at cap (``layers.capped``); 0: none

    @nn.compact
    def __call__(self, features: list[Tensor], train: bool = False, all_scales: bool = False,
                 fills: list[jax.Array] | None = None) -> list[jax.Array]:
        heads: dict[int, jax.Array] = {}
        scales = range(self.num_scales) if all_scales else [0]
        x = features[-1]
        offset = len(features) - len(self.channels)   # 0, or 1 with a full-resolution map
        for i in range(len(self.channels) - 1, -1, -1):
            x = Conv(self.channels[i], 3, bn=False, quant=self.quant, cap=self.cap, name=f"upconv{i}_0")(x, train)
            x = Upsample(2, name=f"up{i}")(x)
            if i + offset > 0:
                x = Concat(self.quant, name=f"skip{i}")([x, features[i + offset - 1]], train)
            x = Conv(self.channels[i], 3, bn=False, quant=self.quant, cap=self.cap, name=f"upconv{i}_1")(x, train)
            if i in scales:
                rgb_head = Head(self.out_channels, self.quant, name=f"head{i}")
                if self.prior is None or fills is None:
                    heads[i] = value(rgb_head(x, train))
                    continue
                if self.is_initializing():
                    rgb_head(x, train)
                fill_head = Head(self.out_channels, self.quant, self.prior, name=f"fill_head{i}")
                heads[i] = value(fill_head(x, train, fills[i]))
        return [heads[s] for s in sorted(heads)]
