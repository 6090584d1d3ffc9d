"""ResNetSAN01: RGB ResNet encoder + sparse auxiliary network, fused scale by scale."""
from __future__ import annotations

from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxdepth.encodings import FillCorrection, LidarEncoding
from jaxdepth.models.decoder import DepthDecoder
from jaxdepth.models.layers import FLOAT, Fusion, Quant, Tensor, value
from jaxdepth.models.resnet import ResNetEncoder
from jaxdepth.models.san import SparseEncoder
from jaxdepth.quant.numerics import QValue


class FiLM(nn.Module):
    """gamma, beta from globally pooled sparse features modulate the scale-0 features.

    FP32 only: the tensor-by-tensor multiply is outside the NPU op set, so it has no
    INT8 form; a fake-quant model (QAT, INT8 evaluation, export) built with it is refused.
    """

    @nn.compact
    def __call__(self, x: jax.Array, sparse: jax.Array) -> jax.Array:
        if isinstance(x, QValue):
            raise ValueError("model.film=True has no INT8 form: FiLM multiplies two tensors, "
                             "an op outside the NPU's op set; train without FiLM to quantize")
        pooled = sparse.mean(axis=(1, 2), keepdims=True)
        gb = nn.Dense(2 * x.shape[-1], kernel_init=nn.initializers.zeros, name="dense")(pooled)
        gamma, beta = jnp.split(gb, 2, axis=-1)
        return x * (1.0 + gamma) + beta


class DualOutput(NamedTuple):
    """Both passes of one forward: shared RGB encoder and SAN, the decoder run twice."""

    lidar: list[jax.Array]      # heads of the RGB + LiDAR pass
    mono: list[jax.Array]       # heads of the RGB-only pass
    consistency: jax.Array      # mean squared gap of the RGB skips to the detached fused ones


class ResNetSAN(nn.Module):
    """Depth from RGB, optionally completed with sparse LiDAR.

    ``lidar`` None runs the RGB path alone (monocular) with the same weights. ``dual``
    runs both passes, as PackNet-SAN trains: the RGB-only pass needs no extra encoder
    work (it decodes the unfused skips), and the consistency term pulls the RGB skips
    towards what the LiDAR adds. In ``fake`` mode ``rgb`` and ``lidar`` may be quantized
    already (``layers.input_codes``); then linear heads over the fill need ``host_lidar``,
    the LiDAR in metres, whose float fill the host adds. The heads are returned as arrays.
    """

    encoder: str = "resnet18"
    out_channels: int = 1
    sparse: bool = True
    san_kernels: tuple[int, ...] = (5, 5, 3, 3, 3)
    san_path_depths: tuple[int, ...] = (1, 2, 3)
    san_stage0_path_depths: tuple[int, ...] = ()
    film: bool = False
    full_res: int = 0
    decoder_channels: tuple[int, ...] = (16, 32, 64, 128, 256)
    num_scales: int = 4
    lidar_encoding: LidarEncoding = LidarEncoding()
    prior: FillCorrection | None = None       # linear heads over the fill: encodings.fill_prior
    quant: Quant = FLOAT
    activation_cap: float = 0.0               # SAN, fusion and decoder activations clipped here
    grid_inputs: bool = False                 # the float modes take the inputs on their 8-bit grids

    @nn.compact
    def __call__(self, rgb: Tensor, lidar: Tensor | None = None, train: bool = False,
                 all_scales: bool = False, dual: bool = False,
                 host_lidar: jax.Array | None = None) -> list[jax.Array] | DualOutput:
        features = ResNetEncoder(self.encoder, self.full_res, self.quant, self.grid_inputs,
                                 name="encoder")(rgb, train)
        decoder = DepthDecoder(self.decoder_channels, self.out_channels, self.num_scales,
                               self.prior, self.quant, self.activation_cap, name="decoder")
        if not self.sparse or (lidar is None and not self.is_initializing()):
            if dual:
                raise ValueError("dual=True needs a model with a SAN and a LiDAR input")
            return decoder(features, train, all_scales)
        if lidar is None:
            lidar = jnp.zeros(rgb.shape[:-1], jnp.float32)
        sparse = SparseEncoder(self.san_kernels, self.san_path_depths, self.san_stage0_path_depths,
                               self.lidar_encoding, self.full_res, self.quant, self.activation_cap,
                               self.grid_inputs, name="san")(lidar, train)
        fills = None
        if self.prior is not None:
            fills = [self._host_fill(lidar, host_lidar)]
            for _ in range(1, self.num_scales if all_scales else 1):
                fills.append(nn.max_pool(fills[-1], (2, 2), (2, 2)))
        fused = [Fusion(self.quant, self.activation_cap, name=f"fuse{i}")(f, s, train)
                 for i, (f, s) in enumerate(zip(features, sparse))]
        if self.film:
            fused[0] = FiLM(name="film")(fused[0], sparse[0])
        heads = decoder(fused, train, all_scales, fills)
        if not dual:
            return heads
        gaps = [jnp.mean(jnp.square(value(r) - jax.lax.stop_gradient(value(f))))
                for r, f in zip(features, fused)]
        return DualOutput(heads, decoder(features, train, all_scales), sum(gaps) / len(gaps))

    def _host_fill(self, lidar: Tensor, host_lidar: jax.Array | None) -> jax.Array:
        """The float fill channel the linear heads add, as the host computes it."""
        if host_lidar is None and isinstance(lidar, QValue):
            raise ValueError("a model with linear heads over the fill fed quantized LiDAR codes "
                             "needs host_lidar, the LiDAR in metres (the host adds its float fill)")
        return self.lidar_encoding.fill_channel(lidar if host_lidar is None else host_lidar)


def build_model(model_cfg, quant: Quant = FLOAT) -> ResNetSAN:
    from jaxdepth.encodings import get_encoding, get_fill_prior, get_lidar_encoding
    enc, lidar = get_encoding(model_cfg), get_lidar_encoding(model_cfg)
    prior = get_fill_prior(model_cfg)
    return ResNetSAN(encoder=model_cfg.encoder, out_channels=enc.channels,
                     sparse=model_cfg.sparse, san_kernels=tuple(model_cfg.san_kernels),
                     san_path_depths=tuple(model_cfg.san_path_depths),
                     san_stage0_path_depths=tuple(model_cfg.san_stage0_path_depths), film=model_cfg.film,
                     full_res=model_cfg.full_res,
                     decoder_channels=tuple(model_cfg.decoder_channels),
                     num_scales=model_cfg.num_scales, lidar_encoding=lidar, prior=prior,
                     quant=quant, activation_cap=model_cfg.activation_cap,
                     grid_inputs=model_cfg.grid_inputs)


def quant_for(cfg, mode: str) -> Quant:
    """The ``Quant`` of a full ``Config`` (its quantization preset) in ``mode``."""
    from jaxdepth.quant.numerics import get_scheme
    return Quant(mode, get_scheme(cfg.quant.preset), cfg.quant.ema_decay)
