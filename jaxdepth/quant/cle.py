"""Cross-layer equalization (Nagel et al., ICCV 2019) of conv-ReLU-conv chains.

For a conv with ReLU whose output feeds only a second conv, ReLU(x / s) = ReLU(x) / s
for s > 0: dividing the first conv's output channel c by ``s[c]`` and multiplying the
second conv's input channel c by ``s[c]`` leaves the FP32 function unchanged. With
``s = sqrt(r1 / r2)`` (r1: range of the first folded kernel's output channel, r2: range
of the second's input channel) both channels end with range ``sqrt(r1 * r2)``, which
evens out the per-channel ranges a per-tensor weight scale has to cover.

The chains of ResNetSAN are found by name: a residual block's ``conv1 -> conv2`` and a
SAN path's ``pathD_j -> pathD_{j+1}`` (every other conv output feeds a sum, a concat, an
upsampling or several consumers). The equalized checkpoint needs new activation ranges
(the first conv's output changes scale): calibrate after equalizing.
"""
from __future__ import annotations

import re

import numpy as np

from jaxdepth.quant.folding import FoldedConvs

ITERATIONS = 4       # chains of three convs converge in a few sweeps


def chains(paths: list[str]) -> list[tuple[str, str]]:
    """(producer, consumer) conv pairs of conv-ReLU-conv chains, by block name."""
    have = set(paths)
    pairs = []
    for p in paths:
        head, _, name = p.rpartition("/")
        nxt = None
        if name == "conv1":
            nxt = f"{head}/conv2"
        elif m := re.fullmatch(r"path(\d+)_(\d+)", name):
            nxt = f"{head}/path{m[1]}_{int(m[2]) + 1}"
        if nxt in have:
            pairs.append((p, nxt))
    return pairs


def equalize(variables: dict, iterations: int = ITERATIONS) -> tuple[dict, list[tuple[str, str]]]:
    """``variables`` with every chain equalized, and the chains."""
    convs = FoldedConvs(variables)
    pairs = chains(convs.paths)
    for _ in range(iterations):
        for first, second in pairs:
            k1, _ = convs.folded(first)
            k2, _ = convs.folded(second)
            r1 = np.abs(k1).max(axis=(0, 1, 2))
            r2 = np.abs(k2).max(axis=(0, 1, 3))
            ok = (r1 > 0) & (r2 > 0)
            s = np.where(ok, np.sqrt(np.where(ok, r1 / np.where(r2 > 0, r2, 1), 1)), 1.0).astype(np.float32)
            convs.scale_outputs(first, s)
            convs.scale_inputs(second, s)
    return convs.result(), pairs
