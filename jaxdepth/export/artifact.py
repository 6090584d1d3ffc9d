"""The exported model on disk, readable without jaxdepth (numpy + json).

A folder with three files (``docs/export_format.md`` is the specification):

* ``manifest.json``: format version, config, encoding, quantization scheme and rounding
  rule, inputs, outputs and the ordered layer list (op, inputs, attributes, output
  quantization, parameter keys with shapes and dtypes).
* ``weights.npz``: the integer model, keys ``<layer name>/<param>``: int8 weights, int32
  biases, int32 multipliers and shifts, uint8 tables (and the float32 weight scales as
  metadata, which QDQ toolchains need to rebuild the same multipliers).
* ``float_weights.npz``: BN-folded FP32 parameters, for the FP32 ONNX graph and for
  reference; not part of the integer artifact and not counted in its size.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from jaxdepth.config import Config, config_from_dict, to_dict
from jaxdepth.encodings import ENCODINGS, get_encoding, get_fill_prior
from jaxdepth.export.graph import Graph, Node, TensorSpec
from jaxdepth.export.integer import storage_dtype
from jaxdepth.quant import numerics as qn

FORMAT = "jaxdepth-int8"
FORMAT_VERSION = 2     # 2: linear heads over the fill output their correction (encodings.FillCorrection)
MANIFEST, WEIGHTS, FLOAT_WEIGHTS = "manifest.json", "weights.npz", "float_weights.npz"
ROUNDING = ("Every rounding is to nearest, ties away from zero: round(x) = sign(x) * "
            "floor(|x| + 0.5). Requantization: y = round(acc * multiplier * 2**-(31 + shift)), "
            "with multiplier an int32 in [2**30, 2**31) and 0 <= 31 + shift <= 62, computed "
            "exactly (64-bit product, one rounding).")
_FORMATS = {f.name: f for f in (qn.UINT8, qn.INT8)}


def _plain(x: Any) -> Any:
    """JSON-ready copy of attribute values (numpy scalars to Python numbers)."""
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    return x.item() if isinstance(x, np.generic) else x


def _quant(t: TensorSpec) -> dict:
    return {"shape": list(t.shape), "dtype": str(storage_dtype(t.fmt)), "format": t.fmt.name,
            "scale": t.scale, "zero_point": t.zero_point, "qmin": t.fmt.qmin, "qmax": t.fmt.qmax}


def _param_specs(node: Node, params: dict[str, np.ndarray]) -> dict:
    return {k: {"key": f"{node.name}/{k}", "shape": list(v.shape), "dtype": str(v.dtype)}
            for k, v in params.items()}


def _encoding(graph: Graph, cfg: Config) -> dict:
    """How the host turns the output codes into metres."""
    enc = get_encoding(cfg.model)
    out = {"name": enc.name, "channels": enc.channels, "min_depth": enc.min_depth,
           "max_depth": enc.max_depth}
    prior = get_fill_prior(cfg.model)
    if prior is None or not is_correction(graph):
        return {**out, "decode": "depth_m = decode(head_codes / 255), see docs/export_format.md"}
    return {**out, "fill_correction": {"a": prior.a, "b": prior.b, "k": prior.k, "phases": prior.phases},
            "decode": "z = mean over the phases i of (code_i - zero_point - i / phases) * scale; "
                      "head = a * fill + b + sinh(k z) / sinh(k) "
                      "(z when k = 0), fill = the host's float fill channel of the LiDAR input; "
                      "depth_m = decode(head), see docs/export_format.md"}


def manifest(graph: Graph, cfg: Config, fp32_parameters: int | None = None) -> dict:
    """The manifest of ``graph`` (see the module docstring)."""
    enc = get_encoding(cfg.model)
    scheme = qn.get_scheme(cfg.quant.preset)
    layers = []
    for n in graph.nodes:
        layers.append({"op": n.op, "name": n.name, "inputs": list(n.inputs), "output": n.output,
                       "attrs": _plain(n.attrs), "output_quant": _quant(graph.tensors[n.output]),
                       "params": _param_specs(n, n.int_params),
                       "float_params": _param_specs(n, n.float_params)})
    out = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "config": to_dict(cfg),
        "encoding": _encoding(graph, cfg),
        "quantization": {
            "preset": scheme.name, "per_channel_weights": scheme.per_channel_weights,
            "activation_format": scheme.activation.name,
            "weights": "int8 symmetric, codes in [-127, 127], zero point 0, scale per "
                       + ("output channel" if scheme.per_channel_weights else "tensor"),
            "rounding": ROUNDING,
        },
        "inputs": [{"name": name, **_quant(graph.tensors[name])} for name in graph.inputs],
        "outputs": [{"name": name, "channel_names": list(output_names(graph, enc.name)),
                     **_quant(graph.tensors[name])} for name in graph.outputs],
        "layers": layers,
        "files": {"weights": WEIGHTS, "float_weights": FLOAT_WEIGHTS},
    }
    if fp32_parameters is not None:
        out["fp32_reference"] = {
            "parameters": fp32_parameters, "bytes": 4 * fp32_parameters,
            "definition": "trainable FP32 parameters (params collection, BatchNorm scale and "
                          "offset included, running statistics excluded) of the modules this "
                          "graph uses, 4 bytes each"}
    return out


def is_correction(graph: Graph) -> bool:
    """Whether the graph ends in the correction's conv of a linear head over the LiDAR
    fill (``encodings.FillCorrection``; the host adds the fill), not in a sigmoid."""
    return next(n.op for n in graph.nodes if n.output == graph.outputs[0]) == "conv"


def output_names(graph: Graph, encoding: str) -> tuple[str, ...]:
    """Names of the output's channels: the encoding's head channels (``depth_log``;
    ``int``, ``frac``; ``coarse``, ``cos_4m``, ...), or ``fill_correction`` for the
    correction of a linear head (``is_correction``), ``fill_correction_0`` ... for its
    phase-shifted copies."""
    out = graph.outputs[0]
    if is_correction(graph):
        phases = graph.tensors[out].shape[3]
        names = ("fill_correction",) if phases == 1 else tuple(f"fill_correction_{i}" for i in range(phases))
    else:
        names = ENCODINGS[encoding]().head_names
    if len(names) != graph.tensors[out].shape[3]:
        raise ValueError(f"encoding {encoding!r} has {len(names)} head channels, the graph "
                         f"{graph.tensors[out].shape[3]}")
    return names


def save(graph: Graph, cfg: Config, out_dir: str | Path, fp32_parameters: int | None = None) -> dict:
    """Writes the three files; returns ``size_report``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    np.savez(out / WEIGHTS, **{f"{n.name}/{k}": v for n in graph.nodes for k, v in n.int_params.items()})
    np.savez(out / FLOAT_WEIGHTS, **{f"{n.name}/{k}": np.asarray(v, np.float32)
                                     for n in graph.nodes for k, v in n.float_params.items()})
    (out / MANIFEST).write_text(json.dumps(manifest(graph, cfg, fp32_parameters), indent=1))
    return size_report(out)


def size_report(out_dir: str | Path) -> dict:
    """Bytes of the integer artifact (manifest + weights.npz) and, when the manifest knows
    the FP32 model, its bytes and the ratio."""
    out = Path(out_dir)
    ints = (out / MANIFEST).stat().st_size + (out / WEIGHTS).stat().st_size
    report = {"integer_bytes": ints, "float_weights_bytes": (out / FLOAT_WEIGHTS).stat().st_size}
    ref = json.loads((out / MANIFEST).read_text()).get("fp32_reference")
    if ref:
        report.update(fp32_bytes=ref["bytes"], ratio=ints / ref["bytes"])
    return report


def load(out_dir: str | Path) -> tuple[Graph, Config]:
    """The graph and config of an artifact folder (float params only if the file is there)."""
    out = Path(out_dir)
    man = json.loads((out / MANIFEST).read_text())
    if man.get("format") != FORMAT or man.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{out}: not a {FORMAT} v{FORMAT_VERSION} artifact "
                         f"(format {man.get('format')!r} v{man.get('format_version')})")
    with np.load(out / WEIGHTS) as z:
        ints = {k: z[k] for k in z.files}
    floats: dict[str, np.ndarray] = {}
    if (out / FLOAT_WEIGHTS).exists():
        with np.load(out / FLOAT_WEIGHTS) as z:
            floats = {k: z[k] for k in z.files}
    graph = Graph()
    for layer in man["layers"]:
        q = layer["output_quant"]
        graph.tensors[layer["output"]] = TensorSpec(layer["output"], tuple(q["shape"]), q["scale"],
                                                   q["zero_point"], _FORMATS[q["format"]])
        graph.nodes.append(Node(
            layer["op"], layer["name"], list(layer["inputs"]), layer["output"], dict(layer["attrs"]),
            {k: floats[s["key"]] for k, s in layer["float_params"].items() if s["key"] in floats},
            {k: ints[s["key"]] for k, s in layer["params"].items()}))
    graph.inputs = [i["name"] for i in man["inputs"]]
    graph.outputs = [o["name"] for o in man["outputs"]]
    return graph, config_from_dict(man["config"])
