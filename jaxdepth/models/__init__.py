"""The network: ResNet encoder, sparse auxiliary network, fusion, decoder."""
from jaxdepth.models.layers import FLOAT, Quant
from jaxdepth.models.resnet_san import ResNetSAN, build_model, quant_for

__all__ = ["FLOAT", "Quant", "ResNetSAN", "build_model", "quant_for"]
