"""Export a checkpoint for the NPU: ``python -m jaxdepth.export CKPT --out DIR``.

CKPT is a run folder (its best checkpoint), a ``checkpoints/<name>`` folder or a step
folder; it must hold activation ranges (a QAT run, or the ``fp32`` checkpoint with its
PTQ ranges). DIR receives the integer artifact (``manifest.json`` + ``weights.npz``,
see docs/export_format.md), ``float_weights.npz`` and the ONNX models
``model_fp32.onnx``, ``model_int8_qdq.onnx`` and ``model_int8_integer.onnx``.
"""
from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

from jaxdepth.cli import setup_jax


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jaxdepth.export", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--height", type=int, default=None, help="input height (default: data.height)")
    parser.add_argument("--width", type=int, default=None, help="input width (default: data.width)")
    parser.add_argument("--monocular", action="store_true", help="export the RGB-only graph")
    parser.add_argument("--no-onnx", dest="onnx", action="store_false", help="skip the ONNX models")
    args = parser.parse_args(argv)
    setup_jax()

    from jaxdepth import checkpoint
    from jaxdepth.config import ConfigError, config_from_dict
    from jaxdepth.export import artifact
    from jaxdepth.export.exporter import ExportError, export_graph, used_parameter_count

    try:
        state, meta, step_dir = checkpoint.load(args.checkpoint)
        cfg = config_from_dict(meta["config"])
        variables = {k: state[k] for k in ("params", "batch_stats", "quant")}
        height, width = args.height or cfg.data.height, args.width or cfg.data.width
        graph = export_graph(cfg, variables, height, width, use_lidar=not args.monocular)
    except (ConfigError, ExportError, FileNotFoundError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = Path(args.out)
    n_fp32 = used_parameter_count(graph, variables)
    sizes = artifact.save(graph, cfg, out, n_fp32)
    ops = Counter(n.op for n in graph.nodes)
    print(f"exported {step_dir} (phase {meta.get('phase')}) at {height}x{width}, "
          f"preset {cfg.quant.preset}, encoding {cfg.model.encoding}")
    print(f"layers: {len(graph.nodes)} (" + ", ".join(f"{op} {k}" for op, k in ops.most_common()) + ")")
    for name in graph.inputs + graph.outputs:
        t = graph.tensors[name]
        kind = "input " if name in graph.inputs else "output"
        print(f"{kind} {name}: {t.shape} {t.fmt.name}, scale {t.scale:.6g}, zero point {t.zero_point}")
    print(f"integer artifact: {sizes['integer_bytes']:,} bytes (manifest.json + weights.npz)")
    print(f"FP32 model: {n_fp32:,} parameters used by the graph = {sizes['fp32_bytes']:,} bytes; "
          f"ratio {sizes['ratio']:.3f}")
    print(f"float_weights.npz: {sizes['float_weights_bytes']:,} bytes (FP32 reference, not counted)")
    if args.onnx:
        from jaxdepth.export import onnx as xonnx

        for name, model in (("model_fp32.onnx", xonnx.to_fp32(graph, cfg.model.encoding)),
                            ("model_int8_qdq.onnx", xonnx.to_qdq(graph, cfg.model.encoding)),
                            ("model_int8_integer.onnx", xonnx.to_integer(graph, cfg.model.encoding))):
            (out / name).write_bytes(model.SerializeToString())
            print(f"{name}: {(out / name).stat().st_size:,} bytes")
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
