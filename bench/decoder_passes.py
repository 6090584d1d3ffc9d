"""The decoder's two passes of a train step with the SAN (the fused skips, then the RGB-only
skips: ``ResNetSAN`` with ``dual``) against one pass over both batches stacked.

The decoder has no normalisation, so in FP32 the two passes could run as one over a batch
twice the size, in fewer and larger kernels (in the fake-quant model they cannot: the two
passes' inputs carry different per-tensor scales). Timed here: forward and backward (to the
decoder's weights and its input features) of the config's decoder, on random feature maps
of the config's shapes, both programs in turn, medians of --repeats. Both passes use the
RGB-only pass's heads, so the two programs compute the same sums.

Usage:
    python bench/decoder_passes.py [--config configs/default.yaml] [--repeats 9] [--set k=v ...]
Prints a table and one JSON line.
"""
from __future__ import annotations

import json

from common import alternating, bench_args, machine


def main() -> None:
    args = bench_args(__doc__, repeats="repeats", extra=lambda p: p.set_defaults(repeats=9))
    import jax
    import jax.numpy as jnp
    import numpy as np

    from jaxdepth.config import load_config
    from jaxdepth.encodings import get_encoding
    from jaxdepth.models.decoder import DepthDecoder
    from jaxdepth.models.resnet import ResNetEncoder

    cfg = load_config(args.config, args.overrides)
    m, d = cfg.model, cfg.data
    encoder = ResNetEncoder(m.encoder, m.full_res)
    rgb = jax.ShapeDtypeStruct((d.batch_size, d.height, d.width, 3), jnp.float32)
    shapes = jax.eval_shape(lambda x: encoder.init_with_output(jax.random.PRNGKey(0), x)[0], rgb)
    rng = np.random.default_rng(0)
    fused, plain = ([jnp.asarray(rng.standard_normal(s.shape, np.float32)) for s in shapes] for _ in range(2))
    decoder = DepthDecoder(tuple(m.decoder_channels), get_encoding(m).channels, m.num_scales, cap=m.activation_cap)
    variables = decoder.init(jax.random.PRNGKey(0), fused, True, True)
    params = variables["params"]
    n = d.batch_size

    def loss(heads, sl: slice) -> jax.Array:
        return sum(jnp.mean(h[sl]) for h in heads)

    def two(p, a, b):
        run = lambda f: decoder.apply({**variables, "params": p}, f, True, True)  # noqa: E731
        return loss(run(a), slice(None)) + loss(run(b), slice(None))

    def one(p, a, b):
        heads = decoder.apply({**variables, "params": p}, [jnp.concatenate(u) for u in zip(a, b)], True, True)
        return loss(heads, slice(None, n)) + loss(heads, slice(n, None))

    programs = {name: jax.jit(jax.grad(fn, argnums=(0, 1, 2))).lower(params, fused, plain).compile()
                for name, fn in (("two passes", two), ("one stacked pass", one))}
    calls = {name: (lambda c=c: jax.block_until_ready(c(params, fused, plain))) for name, c in programs.items()}
    for fn in calls.values():
        fn()
    times, _ = alternating(calls, args.repeats)
    ms = {name: round(float(np.median(t)) * 1e3, 1) for name, t in times.items()}
    ratio = ms["one stacked pass"] / ms["two passes"]
    print(f"the decoder's two passes, forward + backward, {d.height}x{d.width} batch {n} each")
    for name, v in ms.items():
        print(f"  {name:<18} {v:8.1f} ms")
    print(f"  one / two          {ratio:8.2f}")
    print(json.dumps({"bench": "decoder_passes", "machine": machine(), "height": d.height, "width": d.width,
                      "batch": n, "ms": ms, "one_over_two": round(ratio, 3)}))


if __name__ == "__main__":
    main()
