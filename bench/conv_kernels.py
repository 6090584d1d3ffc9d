"""Every convolution of the train step's forward, timed alone: forward, input gradient and
kernel gradient, in XLA:CPU as jaxdepth runs it (``jaxdepth.cli.setup_jax``: XLA's own
Eigen convolutions, YNNPACK's dots and reductions; the kernel gradient on the maps cut into
strips below a batch of 8, ``models.convolution``), in XLA:CPU with YNNPACK's convolutions
(``xla_ynnpack``, XLA's own default) and, when torch is installed, in PyTorch (oneDNN);
then the whole train step compiled both ways. It shows which kernels make the train step
slower than PyTorch's (``bench/torch_reference.py``) and what YNNPACK's would change.

The shapes come from the model itself: the jaxpr of the config's training forward (both
passes with the SAN), so each conv is listed once per call with its count; a conv on the
model's inputs has no input gradient. Each variant of each conv is timed in turn
(A B C A B C ...), medians of ``--repeats``; torch uses 2 threads. Timed alone, a conv
also pays the call and its output's allocation, which the train step's program does not,
and single kernels moved by 10-30 % from run to run: the totals are a rough guide, the
whole train step's times are the measurement.

Usage:
    python bench/conv_kernels.py [--config configs/default.yaml] [--repeats 7] [--set k=v ...]
Prints a table and one JSON line (ms per call; totals weight each conv by its count).
"""
from __future__ import annotations

import json
from collections import Counter
from typing import Callable

from common import alternating, bench_args, machine, train_step_runner

# XLA's own default: convolutions, dots and reductions all on YNNPACK.
XLA_YNNPACK = {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION,"
               "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE"}
PARTS = ("fwd", "dx", "dw")


def conv_calls(cfg) -> Counter:
    """(lhs shape, rhs shape, strides, padding, whether the input needs its gradient) of
    every conv in the training forward; a conv on the model's inputs needs no ``dx``."""
    import jax
    import jax.numpy as jnp
    from jax.extend.core import Literal, jaxprs_in_params

    from jaxdepth.models import build_model
    from jaxdepth.train_lib import init_state, make_optimizer

    d = cfg.data
    model = build_model(cfg.model)
    state = init_state(model, make_optimizer(cfg), 0, d.height, d.width)
    rgb = jnp.zeros((d.batch_size, d.height, d.width, 3), jnp.float32)
    lidar = jnp.zeros((d.batch_size, d.height, d.width), jnp.float32) if cfg.model.sparse else None
    dual = cfg.model.sparse and cfg.train.mono_weight > 0
    jaxpr = jax.make_jaxpr(lambda v: model.apply(v, rgb, lidar, train=True, all_scales=True, dual=dual,
                                                 mutable=["batch_stats"]))(state.variables)
    calls: Counter = Counter()

    def walk(jp, learned: set) -> None:
        """``learned``: the variables of ``jp`` that depend on the model's variables."""
        tracked = lambda v: not isinstance(v, Literal) and v in learned  # noqa: E731
        for eqn in jp.eqns:
            hit = any(map(tracked, eqn.invars))
            if eqn.primitive.name == "conv_general_dilated":
                p = eqn.params
                if p["dimension_numbers"].lhs_spec != (0, 3, 1, 2) or p["feature_group_count"] != 1:
                    raise ValueError(f"conv_kernels times NHWC / HWIO convs without groups, got {p}")
                lhs = eqn.invars[0]
                calls[(tuple(lhs.aval.shape), tuple(eqn.invars[1].aval.shape),
                       tuple(p["window_strides"]), tuple(map(tuple, p["padding"])),
                       tracked(lhs))] += 1
            for sub in jaxprs_in_params(eqn.params):
                inner = ({w for w, v in zip(sub.invars, eqn.invars) if tracked(v)}
                         if len(sub.invars) == len(eqn.invars) else set(sub.invars) if hit else set())
                walk(sub, inner)
            if hit:
                learned.update(eqn.outvars)

    walk(jaxpr.jaxpr, set(jaxpr.jaxpr.invars))
    return calls


def xla_fns(lhs, rhs, strides, padding, options: dict | None) -> dict[str, Callable[[], None]]:
    """Compiled forward, input gradient and kernel gradient of one conv, each through
    jaxdepth's conv op (``models.convolution.float_conv``: the kernel gradient in strips
    below a batch of 8); each gradient's program computes only that gradient."""
    import jax
    import numpy as np

    from jaxdepth.models.convolution import float_conv

    rng = np.random.default_rng(0)
    x = jax.numpy.asarray(rng.standard_normal(lhs, np.float32))
    w = jax.numpy.asarray(rng.standard_normal(rhs, np.float32) * 0.05)
    conv = lambda a, b: float_conv(a, b, strides, padding)  # noqa: E731
    g = conv(x, w)
    fns = {"fwd": (conv, (x, w)),
           "dx": (lambda a, b, c: jax.vjp(lambda u: conv(u, b), a)[1](c)[0], (x, w, g)),
           "dw": (lambda a, b, c: jax.vjp(lambda u: conv(a, u), b)[1](c)[0], (x, w, g))}
    out = {}
    for part, (fn, args) in fns.items():
        compiled = jax.jit(fn).lower(*args).compile(compiler_options=options)
        out[part] = lambda compiled=compiled, args=args: jax.block_until_ready(compiled(*args))
    return out


def torch_fns(lhs, rhs, strides, padding) -> dict[str, Callable[[], None]]:
    """The same three in PyTorch (NCHW); the tensors need no autograd graph, the backward
    op computes each gradient alone."""
    import numpy as np
    import torch

    (t, b), (l, r) = padding
    if t != b or l != r:
        raise ValueError(f"asymmetric padding {padding} has no direct torch conv")
    n, h, w_, c = lhs
    kh, kw, ci, co = rhs
    rng = np.random.default_rng(0)
    x = torch.tensor(rng.standard_normal((n, c, h, w_), np.float32))
    w = torch.tensor(rng.standard_normal((co, ci, kh, kw), np.float32) * 0.05)
    fwd = lambda: torch.nn.functional.conv2d(x, w, None, strides, (t, l))  # noqa: E731
    y = fwd()
    back = lambda mask: torch.ops.aten.convolution_backward(  # noqa: E731
        y, x, w, None, list(strides), [t, l], [1, 1], False, [0, 0], 1, mask)
    return {"fwd": fwd, "dx": lambda: back([True, False, False]), "dw": lambda: back([False, True, False])}


def main() -> None:
    # glibc's malloc as it comes: with PyTorch in the process, huge pages slowed XLA's steps
    # (docs/speed.md, "Memory allocator").
    args = bench_args(__doc__, repeats="repeats", extra=lambda p: p.set_defaults(repeats=7),
                      huge_pages=False)
    import numpy as np

    from jaxdepth.config import load_config

    try:
        import torch
        torch.set_num_threads(2)
    except ImportError:
        torch = None
    cfg = load_config(args.config, args.overrides)
    variants = ["xla", "xla_ynnpack"] + (["torch"] if torch else [])
    rows = []
    for (lhs, rhs, strides, padding, needs_dx), count in conv_calls(cfg).items():
        parts = [p for p in PARTS if needs_dx or p != "dx"]
        fns = {"xla": xla_fns(lhs, rhs, strides, padding, None),
               "xla_ynnpack": xla_fns(lhs, rhs, strides, padding, XLA_YNNPACK)}
        if torch:
            fns["torch"] = torch_fns(lhs, rhs, strides, padding)
        for v in variants:                      # first calls: allocations, torch's kernel choice
            for p in parts:
                fns[v][p]()
        times, _ = alternating({(p, v): fns[v][p] for p in parts for v in variants}, args.repeats)
        row = {"input": list(lhs), "kernel": list(rhs), "stride": strides[0], "count": count}
        for v in variants:                      # milliseconds
            row[v] = {p: round(float(np.median(times[p, v])) * 1e3, 3) if p in parts else 0.0 for p in PARTS}
        rows.append(row)
        print(f"{'x'.join(map(str, lhs)):>14} k{rhs[0]} {rhs[2]:>3}->{rhs[3]:<3} s{strides[0]} x{count}  "
              + "  ".join(f"{v} " + "/".join(f"{row[v][p]:.2f}" if p in parts else "-" for p in PARTS)
                          for v in variants), flush=True)
    totals = {v: {p: round(sum(r[v][p] * r["count"] for r in rows), 1) for p in PARTS} for v in variants}
    print(f"\ntotal ms per train step's convs (count-weighted), {' / '.join(PARTS)}:")
    for v in variants:
        t = totals[v]
        print(f"  {v:<12} {' / '.join(f'{t[p]:7.1f}' for p in PARTS)}   sum {sum(t.values()):7.1f}"
              + (f"   x torch {sum(t.values()) / sum(totals['torch'].values()):.2f}" if torch else ""))
    steps = step_times(cfg, args.repeats)
    print("\nthe whole train step, both XLA forms interleaved: "
          + ", ".join(f"{v} {r['step_s']:.3f} s (loss {r['last_loss']:.7f})" for v, r in steps.items())
          + f"; xla_ynnpack / xla {steps['xla_ynnpack']['step_s'] / steps['xla']['step_s']:.3f}")
    print(json.dumps({"bench": "conv_kernels", "machine": machine(), "height": cfg.data.height,
                      "width": cfg.data.width, "batch": cfg.data.batch_size, "sparse": cfg.model.sparse,
                      "torch": torch.__version__ if torch else None, "totals_ms": totals,
                      "train_step": steps, "convs": rows}))


def step_times(cfg, repeats: int) -> dict:
    """The config's train step compiled with Eigen's and with YNNPACK's convolutions, run in turn."""
    import numpy as np

    runners = {"xla": train_step_runner(cfg)[0], "xla_ynnpack": train_step_runner(cfg, options=XLA_YNNPACK)[0]}
    times, losses = alternating(runners, repeats)
    return {v: {"step_s": round(float(np.median(t)), 3), "last_loss": losses[v]} for v, t in times.items()}


if __name__ == "__main__":
    main()
