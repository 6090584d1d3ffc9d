"""The convolutions of a model as the NPU sees them: BatchNorm folded into kernel and bias.

Post-training weight transformations (weight clipping, cross-layer equalization, rounding,
bias correction) reason about the folded kernel ``k * gamma / sqrt(var + eps)`` and bias
``beta - mean * gamma / sqrt(var + eps)`` (``integer_ops.fold_batch_norm``), the tensors
the integer model stores, but must write plain checkpoint variables, so that FP32
evaluation, fake-quant INT8 and the export read them unchanged. ``set_folded`` writes a
new folded kernel through the BatchNorm scale (``k = k_eff / inv``) and a new folded bias
through ``beta``; the running statistics stay as they are.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from jaxdepth.quant import integer_ops as iops


def _flat(tree: dict) -> dict[str, np.ndarray]:
    return {k: np.asarray(v) for k, v in traverse_util.flatten_dict(jax.device_get(tree), sep="/").items()}


def _unflat(flat: dict[str, np.ndarray]) -> dict:
    return traverse_util.unflatten_dict({tuple(k.split("/")): jnp.asarray(v) for k, v in flat.items()})


class FoldedConvs:
    """Mutable folded view of every Conv block of ``variables`` (params + batch_stats)."""

    def __init__(self, variables: dict) -> None:
        self.variables = variables
        self.params = _flat(variables["params"])
        self.stats = _flat(variables.get("batch_stats", {}))
        self.paths = [k[: -len("/kernel")] for k, v in self.params.items()
                      if k.endswith("/kernel") and v.ndim == 4]

    def has_bn(self, path: str) -> bool:
        return f"{path}/bn_scale" in self.params

    def bn_inv(self, path: str) -> np.ndarray:
        """The per-output-channel factor BatchNorm folds into the kernel (1 without BN)."""
        if not self.has_bn(path):
            return np.ones(self.params[f"{path}/kernel"].shape[-1], np.float32)
        gamma, var = self.params[f"{path}/bn_scale"], self.stats[f"{path}/var"]
        return np.asarray(iops.bn_factor(gamma, jnp.asarray(var)))

    def folded(self, path: str) -> tuple[np.ndarray, np.ndarray]:
        """(kernel HWIO, bias) with BatchNorm folded in, as the fake-quant forward folds them."""
        p = self.params
        if not self.has_bn(path):
            return p[f"{path}/kernel"], p[f"{path}/bias"]
        k, b = iops.fold_batch_norm(p[f"{path}/kernel"], p[f"{path}/bn_scale"], p[f"{path}/bn_bias"],
                                    self.stats[f"{path}/mean"], self.stats[f"{path}/var"])
        return np.asarray(k), np.asarray(b)

    def set_folded(self, path: str, kernel: np.ndarray | None = None,
                   bias: np.ndarray | None = None) -> None:
        """Stores a new folded kernel and/or bias. Output channels whose BatchNorm scale
        is 0 have a folded kernel of 0 whatever the raw one; they keep it."""
        if kernel is not None:
            inv = self.bn_inv(path)
            old = self.params[f"{path}/kernel"]
            self.params[f"{path}/kernel"] = np.where(inv != 0, kernel / np.where(inv != 0, inv, 1), old
                                                     ).astype(old.dtype)
        if bias is not None:
            _, b_old = self.folded(path)
            key = f"{path}/bn_bias" if self.has_bn(path) else f"{path}/bias"
            self.params[key] = (self.params[key] + (bias - b_old)).astype(self.params[key].dtype)

    def scale_outputs(self, path: str, s: np.ndarray) -> None:
        """Divides output channel c of the conv (folded kernel and bias) by ``s[c]`` > 0,
        through gamma and beta (BN) or kernel and bias."""
        p = self.params
        if self.has_bn(path):
            p[f"{path}/bn_scale"] = (p[f"{path}/bn_scale"] / s).astype(np.float32)
            p[f"{path}/bn_bias"] = (p[f"{path}/bn_bias"] / s).astype(np.float32)
        else:
            p[f"{path}/kernel"] = (p[f"{path}/kernel"] / s).astype(np.float32)
            p[f"{path}/bias"] = (p[f"{path}/bias"] / s).astype(np.float32)

    def scale_inputs(self, path: str, s: np.ndarray) -> None:
        """Multiplies input channel c of the conv's kernel by ``s[c]``."""
        k = self.params[f"{path}/kernel"]
        self.params[f"{path}/kernel"] = (k * s[None, None, :, None]).astype(k.dtype)

    def result(self) -> dict:
        """``variables`` with the changed params (batch stats and ranges as given)."""
        return {**self.variables, "params": _unflat(self.params)}
