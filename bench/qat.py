"""QAT step time over FP32 step time at the default config, and where the difference goes.

The QAT step computes every layer's output codes as the integer runtime does: int32
accumulators from float32 convolutions split into input-channel groups small enough to
stay exact (``integer_ops.conv_accumulate``), and requantization in 32-bit integer words
(``numerics.requantize``). ``--breakdown`` compiles the QAT step three more times with
either or both replaced by a float stand-in (one float32 convolution per layer; a float
multiply and round), so the table shows what each costs in step time and compilation.
The stand-ins are not exact and exist only here, for timing.

The steps of all variants alternate (A B C ... A B C ...), so the machine's drift falls
on all alike. ``1st step s`` includes the compilation; run with an empty
``JAX_COMPILATION_CACHE_DIR`` to time compilation rather than a cache read.

Prints a readable table and one JSON line. Usage:
    python bench/qat.py [--config configs/default.yaml] [--steps 5] [--breakdown] [--set k=v ...]
"""
from __future__ import annotations

import contextlib
import json
from unittest import mock

import numpy as np

from common import alternating, bench_args, machine, train_step_runner


def _float_requantize(acc, m, shift):
    """``numerics.requantize`` as one float multiply and round (not exact)."""
    import jax.numpy as jnp
    real = jnp.asarray(m, jnp.float32) * jnp.exp2(-(31 + jnp.asarray(shift, jnp.float32)))
    return jnp.round(acc.astype(jnp.float32) * real).astype(jnp.int32)


def _one_conv(x, w, strides, padding, name="conv"):
    """``integer_ops.conv_accumulate`` as one float32 convolution (not exact for wide layers)."""
    import jax
    import jax.numpy as jnp
    return jax.lax.conv_general_dilated(x.astype(jnp.float32), w.astype(jnp.float32), strides, padding,
                                        dimension_numbers=("NHWC", "HWIO", "NHWC")).astype(jnp.int32)


def _stand_ins(requantize: bool, accumulate: bool) -> contextlib.ExitStack:
    """The stand-ins in place while a QAT step is traced and compiled."""
    from jaxdepth.quant import integer_ops, numerics

    stack = contextlib.ExitStack()
    if requantize:
        stack.enter_context(mock.patch.object(numerics, "requantize", _float_requantize))
    if accumulate:
        stack.enter_context(mock.patch.object(integer_ops, "conv_accumulate", _one_conv))
    return stack


def main() -> None:
    args = bench_args(__doc__, extra=lambda p: p.add_argument(
        "--breakdown", action="store_true", help="also time the QAT step with float stand-ins"))
    from jaxdepth.config import load_config

    cfg = load_config(args.config, args.overrides)
    variants = {"fp32": (False, False, False), "qat": (True, False, False)}
    if args.breakdown:
        variants.update({"qat, float requantize": (True, True, False),
                         "qat, one float conv": (True, False, True),
                         "qat, both stand-ins": (True, True, True)})
    runners, first = {}, {}
    for name, (qat, requantize, accumulate) in variants.items():
        with _stand_ins(requantize, accumulate):
            runners[name], first[name] = train_step_runner(cfg, qat)
    times, _ = alternating(runners, args.steps)
    batch = cfg.data.batch_size
    medians = {name: float(np.median(t)) for name, t in times.items()}
    rows = {name: {"step_s": round(s, 3), "images_per_s": round(batch / s, 2),
                   "first_step_s": round(first[name], 1)} for name, s in medians.items()}
    fp32 = rows["fp32"]["step_s"]
    print(f"{'variant':<24}{'step s':>9}{'img/s':>8}{'x FP32':>8}{'1st step s':>12}")
    for name, r in rows.items():
        r["over_fp32"] = round(r["step_s"] / fp32, 3)
        print(f"{name:<24}{r['step_s']:>9.3f}{r['images_per_s']:>8.2f}{r['over_fp32']:>8.2f}"
              f"{r['first_step_s']:>12.1f}")
    print(json.dumps({"bench": "qat", "machine": machine(), "preset": cfg.quant.preset,
                      "height": cfg.data.height, "width": cfg.data.width, "batch": batch,
                      "steps": args.steps, "rows": rows}))


if __name__ == "__main__":
    main()
