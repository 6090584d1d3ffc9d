"""From a calibrated or QAT model to its integer graph (``export.graph.Graph``)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxdepth.config import Config
from jaxdepth.export.graph import Graph, record
from jaxdepth.models import build_model, quant_for

STRIDE = 32   # five stride-2 stages; the decoder's skip concats need exact halvings


class ExportError(ValueError):
    """The model or checkpoint cannot be exported; the message says why."""


def export_graph(cfg: Config, variables: dict, height: int, width: int,
                 use_lidar: bool = True) -> Graph:
    """Records the scale-0 depth graph for (1, height, width) inputs.

    ``use_lidar`` False (or a model without SAN) exports the monocular RGB graph. Raises
    ``ExportError`` (a ``ValueError``) for a checkpoint without activation ranges, a size
    the network cannot run at, or a model with an op outside the NPU set (FiLM).
    """
    if height % STRIDE or width % STRIDE:
        raise ExportError(f"export size {height}x{width}: height and width must be multiples of {STRIDE}")
    counts = [np.asarray(c) for c in jax.tree.leaves(variables.get("quant", {}))
              if np.asarray(c).dtype.kind == "i"]
    if not counts or not any(int(c) > 0 for c in counts):
        raise ExportError("the checkpoint has no calibrated activation ranges: export needs the "
                         "ranges of a QAT run or of a post-training calibration")
    model = build_model(cfg.model, quant_for(cfg, "export"))
    rgb = jax.ShapeDtypeStruct((1, height, width, 3), jnp.float32)
    lidar = jax.ShapeDtypeStruct((1, height, width), jnp.float32)
    try:
        with record() as graph:
            model.apply(variables, rgb, lidar if (use_lidar and cfg.model.sparse) else None, train=False)
    except ValueError as e:     # the blocks' own checks: uncalibrated range, FiLM
        raise ExportError(str(e)) from e
    return graph


def used_parameter_count(graph: Graph, variables: dict) -> int:
    """Number of FP32 parameters (``params`` collection) of the modules the graph uses.

    Only trainable parameters count (kernels, biases, BatchNorm scale and offset, fusion
    gates), not BatchNorm running statistics, nor the heads of the coarser scales.
    """
    total = 0
    for node in graph.nodes:
        if not node.float_params:
            continue
        tree = variables["params"]
        for part in node.name.split("/"):
            tree = tree[part]
        total += sum(int(np.size(leaf)) for leaf in jax.tree.leaves(tree))
    return total
