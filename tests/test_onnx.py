"""ONNX export: the FP32 model against the JAX FP32 forward, the QDQ model in
onnxruntime against jaxdepth's integer forward, and the NPU op rules."""
from __future__ import annotations

import functools

import jax
import numpy as np
import onnx
import pytest
from onnx import helper

from jaxdepth.data.sources import eval_pipeline
from jaxdepth.export import onnx as xonnx
from jaxdepth.export.integer import make_integer_forward, make_intermediates
from jaxdepth.models import build_model
from test_export import capped_exported, exported, first_test_batch, prior_exported


@functools.cache
def fp32_heads(data_root):
    cfg, _, _ = exported(data_root, "npu_strict")
    model = build_model(cfg.model)
    return jax.jit(lambda v, rgb, lidar: model.apply(v, rgb, lidar, train=False)[0])


@functools.cache
def models(data_root, preset: str) -> tuple:
    cfg, _, graph = exported(data_root, preset)
    enc = cfg.model.encoding
    return (xonnx.to_fp32(graph, enc), xonnx.to_qdq(graph, enc),
            xonnx.to_qdq(graph, enc, weights="uint8", code_inputs=True))


def test_fp32_model_matches_jax_fp32(tiny_data):
    cfg, variables, graph = exported(tiny_data, "npu_strict")
    sess = xonnx.session(models(tiny_data, "npu_strict")[0])
    for batch in eval_pipeline(cfg, "test").epoch(0):
        got = xonnx.heads(sess, graph, cfg.model.encoding, xonnx.feeds(graph, batch["rgb"], batch["lidar"]))
        want = np.asarray(fp32_heads(tiny_data)(variables, batch["rgb"], batch["lidar"]))
        assert got.shape == want.shape and got.shape[1:] == (32, 64, 2)
        assert np.abs(got - want).max() < 1e-4


def test_fp32_model_uses_only_npu_ops_and_names_the_heads(tiny_data):
    fp32, qdq, _ = models(tiny_data, "npu_strict")
    assert xonnx.op_types(fp32) <= xonnx.NPU_OPS
    assert not xonnx.op_types(fp32) & {"Reshape", "Flatten", "Transpose", "Div", "Sub", "Gemm"}
    assert xonnx.op_types(qdq) <= xonnx.NPU_OPS | {"QuantizeLinear", "DequantizeLinear"}
    for m in (fp32, qdq):
        assert [i.name for i in m.graph.input] == ["rgb", "sparse"]
        assert [o.name for o in m.graph.output] == ["int", "frac"]
    for node in fp32.graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type in ("Conv", "MaxPool"):
            pads = attrs.get("pads", [0, 0, 0, 0])
            assert pads[:2] == pads[2:] and "auto_pad" not in attrs           # explicit, symmetric
        if node.op_type == "Resize":
            assert attrs["mode"] == b"nearest"
        if node.op_type == "Mul":
            const = next(i for i in fp32.graph.initializer if i.name == node.input[1])
            assert len(const.dims) == 4 and const.dims[0] == const.dims[2] == const.dims[3] == 1
    onnx.checker.check_model(qdq)


INTEGER_OPS = {"ConvInteger", "Pad", "Cast", "Sub", "Add", "Mul", "Div", "Abs", "Sign", "Max", "Min",
               "Concat", "Slice", "Split", "MaxPool", "Resize", "Gather"}


@pytest.mark.parametrize("preset", ["npu_strict", "per_channel", "symmetric"])
def test_integer_model_in_onnxruntime_equals_integer_forward(tiny_data, preset):
    """The artifact's integer arithmetic, run by onnxruntime from the file format's
    numbers alone, gives jaxdepth's integer head codes exactly."""
    cfg, _, graph = exported(tiny_data, preset)
    model = xonnx.to_integer(graph, cfg.model.encoding)
    assert xonnx.op_types(model) <= INTEGER_OPS
    assert [o.name for o in model.graph.output] == ["int", "frac"]
    sess = xonnx.session(model)
    forward = make_integer_forward(graph)
    for batch in eval_pipeline(cfg, "test").epoch(0):
        got = xonnx.heads(sess, graph, cfg.model.encoding, xonnx.code_feeds(graph, batch["rgb"], batch["lidar"]))
        np.testing.assert_array_equal(got, np.asarray(forward(batch["rgb"], batch["lidar"])))


def _layerwise(model: onnx.ModelProto, graph) -> onnx.ModelProto:
    """Every dequantized activation becomes a graph input and every quantized activation
    an output: each layer runs from jaxdepth's own input codes, so one rounding difference
    cannot cascade through the layers after it."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    for node in m.graph.node:
        if node.op_type == "DequantizeLinear" and node.input[0].endswith("/q"):
            t = node.input[0][:-2]
            node.input[0] = f"{t}/in"
            elem = xonnx._ELEM[graph.tensors[t].fmt.name]
            _, h, w, c = graph.tensors[t].shape
            m.graph.input.append(helper.make_tensor_value_info(f"{t}/in", elem, ["N", c, h, w]))
            m.graph.output.append(helper.make_tensor_value_info(f"{t}/q", elem, None))
    return m


@pytest.mark.parametrize("preset", ["npu_strict", "per_channel", "symmetric"])
def test_qdq_layers_in_onnxruntime_match_integer_layers(tiny_data, preset):
    """onnxruntime's QLinear kernels requantize with a float32 product and round half to
    even: layer by layer within one code of the exact integer arithmetic, almost always
    equal (end to end, one early difference spreads: docs/export_format.md, "ONNX")."""
    cfg, _, graph = exported(tiny_data, preset)
    sess = xonnx.session(_layerwise(models(tiny_data, preset)[2], graph))
    batch = first_test_batch(cfg)
    codes = jax.tree.map(np.asarray, make_intermediates(graph)(batch["rgb"], batch["lidar"]))
    nchw = {k: np.ascontiguousarray(v.transpose(0, 3, 1, 2)) for k, v in codes.items()}
    feeds = {i.name: nchw[i.name.removesuffix("/in")] for i in sess.get_inputs()}
    names = [o.name for o in sess.get_outputs()]
    out = dict(zip(names, sess.run(names, feeds)))
    heads = np.concatenate([out[n] for n in xonnx.output_names(graph, cfg.model.encoding)], axis=1)
    out[graph.outputs[0] + "/q"] = heads
    equal, total = 0, 0
    for name, got in out.items():
        if name.endswith("/q"):
            d = np.abs(got.astype(int) - nchw[name[:-2]].astype(int))
            assert d.max() <= 1, name
            equal, total = equal + int((d == 0).sum()), total + d.size
    assert total > 1_000_000 and equal / total >= 0.9999, equal / total


@pytest.mark.parametrize("phases", [1, 4])
def test_linear_heads_over_the_fill_in_onnxruntime(tiny_data, phases):
    from jaxdepth.encodings import get_fill_prior, get_lidar_encoding

    cfg, variables, graph = prior_exported(tiny_data, phases)
    model = build_model(cfg.model)
    prior, lidar_enc = get_fill_prior(cfg.model), get_lidar_encoding(cfg.model)
    fp32_heads = jax.jit(lambda v, rgb, lidar: model.apply(v, rgb, lidar)[0])
    fp32 = xonnx.session(xonnx.to_fp32(graph, "log"))
    integer = xonnx.session(xonnx.to_integer(graph, "log"))
    names = ["fill_correction"] if phases == 1 else [f"fill_correction_{i}" for i in range(phases)]
    assert [o.name for o in fp32.get_outputs()] == [o.name for o in integer.get_outputs()] == names
    forward = make_integer_forward(graph)
    for batch in eval_pipeline(cfg, "test").epoch(0):
        want = np.asarray(fp32_heads(variables, batch["rgb"], batch["lidar"]))
        z = xonnx.heads(fp32, graph, "log", xonnx.feeds(graph, batch["rgb"], batch["lidar"]))
        got = np.asarray(prior.head(z, lidar_enc.fill_channel(batch["lidar"])))   # the host's sum
        assert np.abs(got - want).max() < 1e-4
        codes = xonnx.heads(integer, graph, "log", xonnx.code_feeds(graph, batch["rgb"], batch["lidar"]))
        np.testing.assert_array_equal(codes, np.asarray(forward(batch["rgb"], batch["lidar"])))


def test_capped_grid_input_model_in_onnxruntime(tiny_data):
    cfg, variables, graph = capped_exported(tiny_data)
    model = build_model(cfg.model)
    fp32_heads = jax.jit(lambda v, rgb, lidar: model.apply(v, rgb, lidar)[0])
    fp32 = xonnx.to_fp32(graph, cfg.model.encoding)
    assert "Clip" in xonnx.op_types(fp32)
    integer, forward = xonnx.session(xonnx.to_integer(graph, cfg.model.encoding)), make_integer_forward(graph)
    fp32 = xonnx.session(fp32)
    for batch in eval_pipeline(cfg, "test").epoch(0):
        # fed on the inputs' 8-bit grids (xonnx.feeds), the FP32 model is jaxdepth's FP32 forward
        got = xonnx.heads(fp32, graph, cfg.model.encoding, xonnx.feeds(graph, batch["rgb"], batch["lidar"]))
        want = np.asarray(fp32_heads(variables, batch["rgb"], batch["lidar"]))
        assert np.abs(got - want).max() < 1e-4
        codes = xonnx.heads(integer, graph, cfg.model.encoding,
                            xonnx.code_feeds(graph, batch["rgb"], batch["lidar"]))
        np.testing.assert_array_equal(codes, np.asarray(forward(batch["rgb"], batch["lidar"])))
