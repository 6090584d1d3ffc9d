"""What every Conv block receives in one forward pass, reduced inside the jitted pass.

Bias correction and rounding optimisation need statistics of each convolution's input
in the fake-quant model (the dequantized codes the integer conv consumes). Flax's
``intercept_methods`` shows each ``Conv`` call's input to ``reduce`` without changing
the model; only the reduced statistics leave the compiled function. ``mode_passes``
feeds a calibration set through both modes of a LiDAR model, each on its own integer
parameters.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

import flax.linen as nn
import jax

from jaxdepth.models.layers import Conv, path, value
from jaxdepth.quant.freeze import freeze

# reduce(path, input (real values, NHWC), the Conv block) -> any pytree of statistics
Reduce = Callable[[str, jax.Array, Conv], Any]


def conv_taps(model: nn.Module, variables: dict, rgb: jax.Array, lidar: jax.Array | None,
              reduce: Reduce) -> dict[str, Any]:
    """``{conv path: reduce(path, x, conv)}`` for every Conv that runs (call inside
    ``jax.jit``)."""
    out: dict[str, Any] = {}

    def interceptor(next_fun, args, kwargs, context):
        m = context.module
        if isinstance(m, Conv) and context.method_name == "__call__":
            out[path(m)] = reduce(path(m), value(args[0]), m)
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(interceptor):
        model.apply(variables, rgb, lidar, train=False)
    return out


def mode_passes(model: nn.Module, variables: dict, batches: Iterable[dict],
                use_lidar: bool) -> Iterator[tuple[dict, jax.Array, jax.Array | None]]:
    """``(variables, rgb, lidar)`` of every pass over ``batches``: with ``use_lidar`` the
    LiDAR pass then the monocular one (``lidar`` None) of each batch, each mode on its own
    frozen integer parameters (``quant.freeze``), as the exported graphs run them."""
    modes = (True, False) if use_lidar else (False,)
    frozen = {m: freeze(model, variables, m) for m in modes}
    for batch in batches:
        for m in modes:
            yield frozen[m], batch["rgb"], batch["lidar"] if m else None
