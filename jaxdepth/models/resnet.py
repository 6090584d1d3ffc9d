"""ResNet-18/34 encoder: five feature maps at strides 2, 4, 8, 16, 32."""
from __future__ import annotations

import functools

import flax.linen as nn

from jaxdepth.models.layers import FLOAT, Add, Conv, Input, MaxPool, Quant, Tensor, shape

STAGE_SIZES = {"resnet18": (2, 2, 2, 2), "resnet34": (3, 4, 6, 3)}
CHANNELS = (64, 64, 128, 256, 512)


class BasicBlock(nn.Module):
    features: int
    stride: int = 1
    quant: Quant = FLOAT

    @nn.compact
    def __call__(self, x: Tensor, train: bool) -> Tensor:
        conv = functools.partial(Conv, quant=self.quant)
        y = conv(self.features, 3, self.stride, name="conv1")(x, train)
        y = conv(self.features, 3, relu=False, name="conv2")(y, train)
        if self.stride != 1 or shape(x)[-1] != self.features:
            x = conv(self.features, 1, self.stride, relu=False, name="shortcut")(x, train)
        return Add(relu=True, quant=self.quant, name="add")(y, x, train=train)


class ResNetEncoder(nn.Module):
    """Input normalisation (x - 0.45) / 0.225 inside the model, as in the NPU graph.

    ``full_res`` > 0 adds a first feature map at stride 1 (one 3x3 conv of that many
    channels on the input): ResNet's first feature is at H/2, so without it nothing at
    full resolution reaches the decoder's last stage, which places every depth edge.
    """

    depth: str = "resnet18"
    full_res: int = 0
    quant: Quant = FLOAT
    grid_input: bool = False       # the float modes take the image on its 8-bit grid (``Input``)

    @nn.compact
    def __call__(self, rgb, train: bool = False) -> list[Tensor]:
        if self.depth not in STAGE_SIZES:
            raise ValueError(f"unknown encoder {self.depth!r}; choose one of {sorted(STAGE_SIZES)}")
        x = Input("rgb", quant=self.quant, grid=self.grid_input, name="input")(rgb)
        features = []
        if self.full_res:
            features.append(Conv(self.full_res, 3, quant=self.quant, name="conv0")(x, train))
        x = Conv(CHANNELS[0], 7, 2, quant=self.quant, name="conv1")(x, train)
        features.append(x)
        x = MaxPool(3, 2, name="pool")(x)
        for i, blocks in enumerate(STAGE_SIZES[self.depth]):
            for j in range(blocks):
                stride = 2 if (i > 0 and j == 0) else 1
                x = BasicBlock(CHANNELS[i + 1], stride, self.quant, name=f"layer{i + 1}_{j}")(x, train)
            features.append(x)
        return features
