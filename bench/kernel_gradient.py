"""The kernel gradient of every convolution of the train step, written six ways, timed in
turn: XLA's own (the transposed convolution autodiff builds), jaxdepth's
(``models.convolution.kernel_gradient``: XLA's own on the maps cut into strips stacked
along the batch, so that images times strips make 8; below a batch of 8 only) and four
forms made of XLA's other ops; PyTorch's (oneDNN) beside them when torch is installed.

The kernel gradient is where XLA:CPU's train step loses most to PyTorch's at 192x640
batch 2 (``bench/conv_kernels.py``). The four other forms, each the same sum over (batch,
height, width):

  taps     one matrix product per kernel tap: the shifted input against the output gradient
  rows     one product per kernel row, over that row's taps side by side
  im2col   one product over all k x k patches (skipped where the patches exceed --max-patch-mb)
  reduce   the products summed by a fused multiply-and-reduce (only for <= 16 output channels)

Each result is checked against XLA's own (relative difference < 1e-4). Medians of --repeats.

Usage:
    python bench/kernel_gradient.py [--config configs/default.yaml] [--repeats 7] [--set k=v ...]
Prints a table (ms per call) and one JSON line; totals weight each conv by its count.
"""
from __future__ import annotations

import json
from typing import Callable

from common import alternating, bench_args, machine
from conv_kernels import conv_calls, torch_fns

FORMS = ("xla", "jaxdepth", "taps", "rows", "im2col", "reduce")


def shifted(x, k: int, strides, padding, out_hw) -> list[list]:
    """``x`` under each kernel tap (i, j): the input pixels that tap multiplies, (N, Ho, Wo, C)."""
    import jax

    xp = jax.numpy.pad(x, ((0, 0), *padding, (0, 0)))
    (ho, wo), (sh, sw) = out_hw, strides
    return [[jax.lax.slice(xp, (0, i, j, 0), (x.shape[0], i + sh * (ho - 1) + 1, j + sw * (wo - 1) + 1, x.shape[3]),
                           (1, sh, sw, 1)) for j in range(k)] for i in range(k)]


def gradient_forms(x, w, strides, padding) -> dict[str, Callable]:
    """Functions (x, g) -> dL/dw, g the output gradient, in every form of the docstring."""
    import jax
    import jax.numpy as jnp

    from jaxdepth.models.convolution import kernel_gradient

    k, cin, cout = w.shape[0], w.shape[2], w.shape[3]

    def conv(a, b):
        return jax.lax.conv_general_dilated(a, b, strides, padding, dimension_numbers=("NHWC", "HWIO", "NHWC"))

    def product(a, g):
        return jnp.einsum("nhwc,nhwo->co", a, g)

    def taps(a, g):
        t = shifted(a, k, strides, padding, g.shape[1:3])
        return jnp.stack([jnp.stack([product(t[i][j], g) for j in range(k)]) for i in range(k)])

    def rows(a, g):
        t = shifted(a, k, strides, padding, g.shape[1:3])
        return jnp.stack([product(jnp.concatenate(t[i], -1), g).reshape(k, cin, cout) for i in range(k)])

    def im2col(a, g):
        t = shifted(a, k, strides, padding, g.shape[1:3])
        return product(jnp.concatenate([u for row in t for u in row], -1), g).reshape(k, k, cin, cout)

    def reduce(a, g):
        t = shifted(a, k, strides, padding, g.shape[1:3])
        return jnp.stack([jnp.stack([jnp.sum(t[i][j][..., None] * g[..., None, :], axis=(0, 1, 2))
                                     for j in range(k)]) for i in range(k)])

    return {"xla": lambda a, g: jax.vjp(lambda u: conv(a, u), w)[1](g)[0],
            "jaxdepth": lambda a, g: kernel_gradient(a, g, w, strides, padding),
            "taps": taps, "rows": rows, "im2col": im2col, "reduce": reduce}


def _options(parser) -> None:
    parser.set_defaults(repeats=7)
    parser.add_argument("--max-patch-mb", type=float, default=400)


def main() -> None:
    # glibc's malloc as it comes, as the other benchmark with PyTorch in the process
    # (docs/speed.md, "Memory allocator").
    args = bench_args(__doc__, repeats="repeats", extra=_options, huge_pages=False)
    import jax
    import numpy as np

    from jaxdepth.config import load_config

    try:
        import torch
        torch.set_num_threads(2)
    except ImportError:
        torch = None
    cfg = load_config(args.config, args.overrides)
    rows, totals = [], {f: 0.0 for f in FORMS + (("torch",) if torch else ())}
    for (lhs, rhs, strides, padding, _), count in conv_calls(cfg).items():
        rng = np.random.default_rng(0)
        x = jax.numpy.asarray(rng.standard_normal(lhs, np.float32))
        w = jax.numpy.asarray(rng.standard_normal(rhs, np.float32) * 0.05)
        g = jax.lax.conv_general_dilated(x, w, strides, padding, dimension_numbers=("NHWC", "HWIO", "NHWC"))
        forms = gradient_forms(x, w, strides, padding)
        if np.prod(g.shape[:3]) * np.prod(rhs[:3]) * 4 > args.max_patch_mb * 1e6:
            forms.pop("im2col")
        if rhs[3] > 16:
            forms.pop("reduce")
        compiled = {f: jax.jit(fn).lower(x, g).compile() for f, fn in forms.items()}
        ref = np.asarray(compiled["xla"](x, g))
        for f, c in compiled.items():
            err = float(np.abs(np.asarray(c(x, g)) - ref).max() / np.abs(ref).max())
            if err > 1e-4:
                raise AssertionError(f"{f} kernel gradient of {lhs} * {rhs} differs from XLA's by {err:.2e}")
        calls = {f: (lambda c=c: jax.block_until_ready(c(x, g))) for f, c in compiled.items()}
        if torch:
            calls["torch"] = torch_fns(lhs, rhs, strides, padding)["dw"]
        for fn in calls.values():
            fn()
        times, _ = alternating(calls, args.repeats)
        ms = {f: round(float(np.median(t)) * 1e3, 3) for f, t in times.items()}
        for f in totals:                       # a skipped form counts as XLA's own
            totals[f] += count * ms.get(f, ms["xla"])
        rows.append({"input": list(lhs), "kernel": list(rhs), "stride": strides[0], "count": count, "ms": ms})
        print(f"{'x'.join(map(str, lhs)):>14} k{rhs[0]} {rhs[2]:>3}->{rhs[3]:<3} s{strides[0]} x{count}  "
              + "  ".join(f"{f} {v:7.2f}" for f, v in ms.items()), flush=True)
    print("\ntotal ms per train step's kernel gradients (count-weighted; a skipped form counts as xla):")
    for f, t in totals.items():
        print(f"  {f:<7} {t:8.1f}   x xla {t / totals['xla']:.2f}")
    print(json.dumps({"bench": "kernel_gradient", "machine": machine(), "height": cfg.data.height,
                      "width": cfg.data.width, "batch": cfg.data.batch_size, "sparse": cfg.model.sparse,
                      "torch": torch.__version__ if torch else None,
                      "totals_ms": {f: round(t, 1) for f, t in totals.items()}, "convs": rows}))


if __name__ == "__main__":
    main()
