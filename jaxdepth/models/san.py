"""The sparse auxiliary network (SAN): a dense, NPU-legal encoder for sparse LiDAR depth.

The reference runs this branch with sparse convolutions (MinkowskiEngine), which compute
outputs only at active sites and sum only active neighbours. A dense convolution over a
zero-filled input sums exactly the same neighbours (empty sites contribute 0), so at the
active sites it computes what the sparse convolution computes; what differs is that empty
sites also get a value. Sparsity is therefore made explicit instead of implicit:

* The input is two channels, a nearness falling with depth (``LidarEncoding``; 0 = no
  return) and its validity mask (optionally a third: the nearest return's nearness at
  every pixel, which joins the first), and the mask is concatenated to the input of every stage, so
  each convolution knows where data is and learns to renormalise by the local density
  (the role of normalised convolution) rather than averaging returns with empty pixels.
* Downsampling is a 2x2 max-pool. Features are non-negative (inputs and ReLU outputs) and
  empty sites are 0, so max-pooling never lets an empty site win over a return: it is a
  mask-aware pooling that densifies the map stage by stage; on inverse depth it keeps the
  nearest return of a block (foreground wins, as it should).

Each stage: pool by 2, then three parallel conv paths of depth 1, 2 and 3 (conv + BN +
ReLU), summed. Channels 64, 64, 128, 256, 512 match the RGB encoder scale by scale. The
stride-2 stage may have paths of its own (``stage0_path_depths``): at H/2 with 64 channels,
each of its convs costs as much as four of any later stage's.
"""
from __future__ import annotations

import flax.linen as nn

from jaxdepth.encodings import LidarEncoding
from jaxdepth.models.layers import FLOAT, Add, Concat, Conv, Input, MaxPool, Quant, Split, Tensor
from jaxdepth.models.resnet import CHANNELS


class SparseStage(nn.Module):
    features: int
    kernel: int
    path_depths: tuple[int, ...] = (1, 2, 3)
    quant: Quant = FLOAT
    cap: float = 0.0               # every output clipped at cap (``layers.capped``); 0: none

    @nn.compact
    def __call__(self, x: Tensor, mask: Tensor, train: bool) -> Tensor:
        x = Concat(self.quant, name="with_mask")([x, mask], train)
        paths = []
        for depth in self.path_depths:
            y = x
            for j in range(depth):
                y = Conv(self.features, self.kernel, quant=self.quant, cap=self.cap,
                         name=f"path{depth}_{j}")(y, train)
            paths.append(y)
        return Add(quant=self.quant, cap=self.cap, name="sum")(*paths, train=train)


class SparseEncoder(nn.Module):
    """Five stages at strides 2..32; returns one feature map per encoder scale.

    ``full_res`` > 0 adds a stage of that many channels at stride 1 (no pool, kernel 3)
    in front, matching the encoder's full-resolution feature: the returns themselves,
    not their 2x2 maxima, reach the decoder's last stage. Returns one feature map per scale.
    """

    kernels: tuple[int, ...] = (5, 5, 3, 3, 3)
    path_depths: tuple[int, ...] = (1, 2, 3)
    stage0_path_depths: tuple[int, ...] = ()   # the stride-2 stage's paths; (): path_depths
    lidar_encoding: LidarEncoding = LidarEncoding()
    full_res: int = 0
    quant: Quant = FLOAT
    cap: float = 0.0               # the stages' outputs clipped at cap (``layers.capped``); 0: none
    grid_input: bool = False       # the float modes take the LiDAR on its 8-bit grid (``Input``)

    @nn.compact
    def __call__(self, lidar: Tensor, train: bool = False) -> list[Tensor]:
        if len(self.kernels) != len(CHANNELS):
            raise ValueError(f"san_kernels needs {len(CHANNELS)} entries, got {self.kernels}")
        inputs = Input("sparse", self.lidar_encoding, self.quant, self.grid_input, name="input")(lidar)
        x, mask = Split(0, name="depth")(inputs), Split(1, name="mask")(inputs)
        fill = Split(2, name="fill")(inputs) if self.lidar_encoding.fill else None
        if fill is not None:
            x = Concat(self.quant, name="with_fill")([x, fill], train)
        features = []
        if self.full_res:
            features.append(SparseStage(self.full_res, 3, self.path_depths, self.quant, self.cap,
                                        name="stage_full")(x, mask, train))
        for i, (c, k) in enumerate(zip(CHANNELS, self.kernels)):
            x, mask = MaxPool(2, 2, name=f"pool{i}")(x), MaxPool(2, 2, name=f"mask_pool{i}")(mask)
            depths = self.stage0_path_depths if i == 0 and self.stage0_path_depths else self.path_depths
            x = SparseStage(c, k, depths, self.quant, self.cap, name=f"stage{i}")(x, mask, train)
            features.append(x)
        return features


__all__ = ["SparseEncoder", "SparseStage"]
