"""Which activations' 8 bits cost the integer depth its deviation from FP32, tensor by tensor.

The FP32 forward of a checkpoint with chosen activation tensors rounded to their static
ranges (``numerics.fake_quant`` on the range the integer model stores them in) and every
other tensor, and every weight, in float: each tensor alone, then the encoder, the SAN,
the fusions and the decoder as groups, then all of them. A row is that rounding's
|depth - FP32 depth| in mm (median, p99) over the split's valid pixels, beside the
tensor's range and the median of its non-zero values in codes (few codes: coarse steps).
The inputs are as the model takes them (float, or on their grid with
``model.grid_inputs``); ``bench/deviation.py`` separates the input and output grids. A
tensor rounded alone can read worse than it costs: where the next tensor's grid holds
the original values (a concat over [0, 1] after one over [0, 0.85] of 8-bit inputs), the
integer model, like the "all" row, rounds it back.
Prints the tensors that cost most and one JSON line with every row. Usage:
    python bench/sensitivity.py [CHECKPOINT (default runs/default)] [--split test]
"""
from __future__ import annotations

import json

import numpy as np
from common import machine, run_args

GROUPS = ("encoder/", "san/", "fuse", "decoder/")
TOP = 15


def main() -> None:
    args = run_args(__doc__, "checkpoint")
    import flax.linen as nn
    import jax
    import jax.numpy as jnp

    from jaxdepth import checkpoint
    from jaxdepth.config import config_from_dict
    from jaxdepth.data.sources import eval_pipeline
    from jaxdepth.encodings import get_encoding
    from jaxdepth.export.compare import deviation_stats
    from jaxdepth.metrics import valid_mask
    from jaxdepth.models import build_model, quant_for
    from jaxdepth.models.layers import Observer, path
    from jaxdepth.quant import numerics as qn

    state, meta, step_dir = checkpoint.load(args.checkpoint)
    cfg = config_from_dict(meta["config"])
    variables = {k: state[k] for k in ("params", "batch_stats", "quant")}
    enc, quant = get_encoding(cfg.model), quant_for(cfg, "float")
    model, fmt = build_model(cfg.model, quant), quant.scheme.activation
    batches = list(eval_pipeline(cfg, args.split).epoch(0))
    lidar = lambda b: b["lidar"] if cfg.model.sparse else None

    # Every observed tensor, in the order the forward pass meets it: its range and the
    # median of its non-zero values on the first batch, in codes of that range.
    seen: dict[str, tuple[float, float]] = {}
    values: dict[str, float] = {}

    def record(next_fun, a, kw, ctx):
        y = next_fun(*a, **kw)
        m = ctx.module
        if isinstance(m, Observer) and ctx.method_name == "__call__":
            seen[path(m)] = lo_hi = (float(m.get_variable("quant", "lo")), float(m.get_variable("quant", "hi")))
            scale, _ = qn.activation_qparams(*lo_hi, fmt)
            nz = np.abs(np.asarray(y)[np.asarray(y) != 0])
            values[path(m)] = float(np.median(nz) / scale) if nz.size else 0.0
        return y

    with nn.intercept_methods(record):
        model.apply(variables, batches[0]["rgb"], lidar(batches[0]), train=False)
    names = list(seen)
    index = {n: i for i, n in enumerate(names)}

    @jax.jit
    def depth(v, rgb, lidar, chosen):
        """Depth with the tensors where ``chosen`` is True rounded to their ranges."""
        def rounding(next_fun, a, kw, ctx):
            y = next_fun(*a, **kw)
            m = ctx.module
            if isinstance(m, Observer) and ctx.method_name == "__call__":
                scale, zp = qn.activation_qparams(m.get_variable("quant", "lo"), m.get_variable("quant", "hi"), fmt)
                y = jnp.where(chosen[index[path(m)]], qn.fake_quant(y, scale, zp, fmt), y)
            return y
        with nn.intercept_methods(rounding):
            return enc.decode(model.apply(v, rgb, lidar, train=False)[0])

    none = jnp.zeros(len(names), bool)
    refs = [np.asarray(depth(variables, b["rgb"], lidar(b), none)) for b in batches]
    masks = [np.asarray(valid_mask(b["depth"], enc.min_depth, enc.max_depth, cfg.eval.garg_crop))
             for b in batches]

    def deviation(chosen: np.ndarray) -> dict:
        c = jnp.asarray(chosen)
        errs = [np.abs(np.asarray(depth(variables, b["rgb"], lidar(b), c)) - r)[m] * 1000.0
                for b, r, m in zip(batches, refs, masks)]
        s = deviation_stats(np.concatenate(errs))
        return {"median": s["median"], "p99": s["p99"]}

    rows = {}
    for n in names:
        rows[n] = {**deviation(np.array([m == n for m in names])),
                   "range": list(seen[n]), "median_codes": values[n]}
    groups = {g: deviation(np.array([m.startswith(g) for m in names])) for g in GROUPS
              if any(m.startswith(g) for m in names)}
    groups["all"] = deviation(np.ones(len(names), bool))

    print(f"{step_dir} ({cfg.model.encoding} head, {cfg.quant.preset}), split '{args.split}': "
          "|depth - FP32 depth| in mm with only these activations rounded to their 8-bit ranges")
    print(f"{'tensors':<36}{'median':>8}{'p99':>8}{'range':>16}{'median codes':>14}")
    for g, s in groups.items():
        print(f"{g:<36}{s['median']:>8.2f}{s['p99']:>8.1f}")
    for n in sorted(rows, key=lambda n: -rows[n]["median"])[:TOP]:
        r = rows[n]
        rng = f"[{r['range'][0]:.2f}, {r['range'][1]:.2f}]"
        print(f"{n:<36}{r['median']:>8.2f}{r['p99']:>8.1f}{rng:>16}{r['median_codes']:>14.1f}")
    print(json.dumps({"bench": "sensitivity", "machine": machine(), "checkpoint": str(step_dir),
                      "split": args.split, "groups": groups, "tensors": rows}))


if __name__ == "__main__":
    main()
