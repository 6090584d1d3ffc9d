"""Integer export: requantization, the integer-only forward, agreement with fake-quant
INT8, the artifact on disk, the CLIs."""
from __future__ import annotations

import functools
import json
import sys
from fractions import Fraction
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import tiny_cfg
from jaxdepth.data.sources import eval_pipeline
from jaxdepth.evaluate import Evaluator
from jaxdepth.export import artifact
from jaxdepth.export.compare import compare, format_comparison
from jaxdepth.export.exporter import ExportError, export_graph, used_parameter_count
from jaxdepth.export.integer import (Program, integer_params, make_input_codes, make_integer_forward,
                                     make_intermediates, quantize_inputs, run_codes, storage_dtype)
from jaxdepth.models import build_model
from jaxdepth.quant import numerics as qn
from jaxdepth.quant.calibrate import calibrate

ROOT = Path(__file__).parents[1]
H, W = 32, 64
PRESETS = ("npu_strict", "per_channel", "symmetric")


# ----------------------------------------------------------------------------------------
# Shared, cached set-ups (test_onnx.py uses them too).
# ----------------------------------------------------------------------------------------
def config(data_root: Path, preset: str):
    return tiny_cfg(data_root, data_root.parent / "unused_run", quant__preset=preset)


def initialised(model) -> dict:
    """A model's variables at seed 0, for the tiny H x W inputs."""
    return jax.jit(lambda k: model.init(k, jnp.zeros((1, H, W, 3)), jnp.zeros((1, H, W))))(jax.random.PRNGKey(0))


def with_ranges(cfg, model, variables: dict) -> dict:
    """``variables`` with min-max ranges calibrated on the calib split, both modes."""
    return {**variables, "quant": calibrate(model, variables, eval_pipeline(cfg, "calib").epoch(0), use_lidar=True)}


@functools.cache
def calibrated(data_root: Path) -> dict:
    """The tiny untrained model's variables (scale-0 head only, so that every observer is
    calibrated) with min-max ranges from the calib split; ranges are real-valued: every
    preset derives its scales from the same ones."""
    cfg = config(data_root, "npu_strict")
    model = build_model(cfg.model)
    return with_ranges(cfg, model, initialised(model))


@functools.cache
def exported(data_root: Path, preset: str, condition: str = "ptq") -> tuple:
    """(cfg, variables, graph) with ``preset``. ``ptq``: the min-max ranges. ``qat``: the
    ranges narrowed to 60 %, as QAT's EMA ranges clip outliers: many activations saturate."""
    variables = calibrated(data_root)
    if condition == "qat":
        variables = {**variables, "quant": jax.tree.map(
            lambda x: x * 0.6 if x.dtype == jnp.float32 else x, variables["quant"])}
    cfg = config(data_root, preset)
    return cfg, variables, export_graph(cfg, variables, H, W)


@functools.cache
def prior_exported(data_root: Path, phases: int = 1) -> tuple:
    """(cfg, variables, graph) of a model with linear heads over the LiDAR fill
    (``model.fill_prior``, companded correction), min-max ranges. The head conv, which
    starts at 0, gets random weights, so its corrections differ from pixel to pixel.
    With ``phases``, the same variables export its correction in that many copies
    (``model.correction_phases``; the head's range is fixed, so calibration is the same)."""
    if phases > 1:
        from jaxdepth.config import replace

        cfg, variables, _ = prior_exported(data_root)
        cfg = replace(cfg, model={"correction_phases": phases})
        return cfg, variables, export_graph(cfg, variables, H, W)
    cfg = tiny_cfg(data_root, data_root.parent / "unused_run", model__encoding="log",
                   model__lidar_encoding="log", model__lidar_fill=True, model__fill_prior=True,
                   model__correction_curve=5.0)
    model = build_model(cfg.model)
    variables = initialised(model)
    conv = variables["params"]["decoder"]["fill_head0"]["conv"]
    conv = {**conv, "kernel": 0.05 * jax.random.normal(jax.random.PRNGKey(1), conv["kernel"].shape)}
    params = {**variables["params"], "decoder": {**variables["params"]["decoder"],
                                                 "fill_head0": {"conv": conv}}}
    variables = with_ranges(cfg, model, {**variables, "params": params})
    return cfg, variables, export_graph(cfg, variables, H, W)


CAP = 0.5     # low enough to bind on an untrained model's activations


@functools.cache
def capped_exported(data_root: Path) -> tuple:
    """(cfg, variables, graph) of a model with capped activations (``model.activation_cap``)
    that takes its inputs on their 8-bit grids in every mode (``model.grid_inputs``)."""
    cfg = tiny_cfg(data_root, data_root.parent / "unused_run", model__full_res=4,
                   model__lidar_encoding="log", model__lidar_fill=True,
                   model__activation_cap=CAP, model__grid_inputs=True)
    model = build_model(cfg.model)
    variables = with_ranges(cfg, model, initialised(model))
    return cfg, variables, export_graph(cfg, variables, H, W)


def first_test_batch(cfg) -> dict:
    return next(iter(eval_pipeline(cfg, "test").epoch(0)))


# ----------------------------------------------------------------------------------------
# Requantization.
# ----------------------------------------------------------------------------------------
def _exact(acc: np.ndarray, m: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """round_half_away(acc * m / 2**(31 + shift)) with Python integers (exact)."""
    out = []
    for a, mm, s in zip(acc.tolist(), m.tolist(), shift.tolist()):
        x = Fraction(a * mm, 2 ** (31 + s))
        r = int(abs(x) + Fraction(1, 2))          # floor(|x| + 1/2)
        out.append(r if x >= 0 else -r)
    return np.array(out, np.int64)


def test_requantize_is_exact_with_ties_and_extreme_multipliers():
    rng = np.random.default_rng(0)
    n = 4000
    reals = np.exp(rng.uniform(np.log(1e-9), np.log(60.0), n)).astype(np.float32)  # to left shifts
    m, shift = (np.array(a) for a in qn.quantize_multiplier(reals))
    assert (m >= 2 ** 30).all() and (0 <= 31 + shift).all() and (31 + shift <= 62).all()
    np.testing.assert_array_equal(qn.multiplier_value(m, shift), reals.astype(np.float64))  # exact
    acc = rng.integers(-(2 ** 31) + 1, 2 ** 31, n)
    acc[: n // 4] = rng.integers(-300, 300, n // 4)
    # exact ties: m = 2**30 is the real 2**-(1 + shift), and acc = (2k + 1) * 2**shift
    ties = n // 4
    m[-ties:] = 2 ** 30
    shift[-ties:] = rng.integers(0, 20, ties)
    acc[-ties:] = (2 * rng.integers(-1000, 1000, ties) + 1) * 2 ** shift[-ties:]
    got = np.asarray(qn.requantize(jnp.asarray(acc, jnp.int32), jnp.asarray(m), jnp.asarray(shift)))
    want = _exact(acc, m, shift)
    in_range = np.abs(want) < 2 ** 31
    np.testing.assert_array_equal(got[in_range], want[in_range])
    # float64 agrees wherever its product is exact (|acc * m| < 2**53)
    small = np.abs(acc) < 2 ** 21
    f64 = acc[small] * qn.multiplier_value(m[small], shift[small])
    np.testing.assert_array_equal(got[small], np.sign(f64) * np.floor(np.abs(f64) + 0.5))
    tie_vals = acc[-ties:].astype(np.float64) * 2.0 ** (-1 - shift[-ties:].astype(np.float64))
    assert np.all(np.abs(tie_vals - np.trunc(tie_vals)) == 0.5)          # really ties
    np.testing.assert_array_equal(got[-ties:], np.sign(tie_vals) * np.ceil(np.abs(tie_vals)))


# ----------------------------------------------------------------------------------------
# The exported graph and the integer-only forward.
# ----------------------------------------------------------------------------------------
def test_export_is_fast_and_rejects_checkpoints_it_cannot_export(tiny_data):
    cfg, variables, _ = exported(tiny_data, "npu_strict")
    graph = export_graph(cfg, variables, H, W)
    assert [n.op for n in graph.nodes].count("conv") == 36 and graph.outputs == ["decoder/head0/sigmoid"]
    no_ranges = {**variables, "quant": jax.tree.map(jnp.zeros_like, variables["quant"])}
    with pytest.raises(ValueError, match="no calibrated activation ranges"):
        export_graph(cfg, no_ranges, H, W)
    with pytest.raises(ExportError, match="multiples of 32"):
        export_graph(cfg, variables, 40, 64)
    mono = export_graph(cfg, variables, H, W, use_lidar=False)
    assert mono.inputs == ["rgb"] and not any(n.op == "fusion" for n in mono.nodes)


def _float_eqns(jaxpr, found: list) -> list:
    """Equations with a floating-point input or output, including inside sub-jaxprs."""
    for eqn in jaxpr.eqns:
        avals = [v.aval for v in list(eqn.invars) + list(eqn.outvars) if hasattr(v, "aval")]
        if any(jnp.issubdtype(a.dtype, jnp.floating) for a in avals if hasattr(a, "dtype")):
            found.append(str(eqn.primitive))
        if "callback" in str(eqn.primitive) or "custom_call" in str(eqn.primitive):
            found.append(str(eqn.primitive))
        for p in eqn.params.values():
            for sub in p if isinstance(p, (list, tuple)) else [p]:
                if isinstance(sub, jax.extend.core.ClosedJaxpr):
                    _float_eqns(sub.jaxpr, found)
                elif isinstance(sub, jax.extend.core.Jaxpr):
                    _float_eqns(sub, found)
    return found


@pytest.mark.parametrize("preset", PRESETS)
def test_integer_forward_has_no_float_operation_after_the_inputs(tiny_data, preset):
    cfg, _, graph = exported(tiny_data, preset)
    program, params = Program.of(graph), integer_params(graph)
    inputs = quantize_inputs(program, jnp.zeros((2, H, W, 3)), jnp.zeros((2, H, W)))
    act = storage_dtype(qn.get_scheme(preset).activation)
    assert {np.dtype(c.dtype) for c in inputs.values()} == {act}
    closed = jax.make_jaxpr(lambda p, x: run_codes(program, p, x))(params, inputs)
    assert closed.jaxpr.eqns and not _float_eqns(closed.jaxpr, [])
    full = jax.make_jaxpr(make_integer_forward(graph))(jnp.zeros((2, H, W, 3)), jnp.zeros((2, H, W)))
    assert _float_eqns(full.jaxpr, [])           # the walker does see the float prologue
    assert not any(jnp.issubdtype(np.asarray(c).dtype, jnp.floating) for c in closed.consts)
    avals = jax.eval_shape(lambda p, x: run_codes(program, p, x), params, inputs)
    assert {np.dtype(a.dtype) for k, a in avals.items() if k not in graph.outputs} == {act}
    assert avals[graph.outputs[0]].dtype == jnp.uint8


AGREEMENT = [("npu_strict", "ptq"), ("npu_strict", "qat"), ("per_channel", "ptq"), ("symmetric", "ptq")]


@functools.cache
def _comparison(data_root: Path, preset: str, condition: str) -> dict:
    cfg, variables, graph = exported(data_root, preset, condition)
    return compare(_evaluator(data_root, preset), variables, "test", graph)


@functools.cache
def _evaluator(data_root: Path, preset: str) -> Evaluator:
    """One per preset: the jitted predictors are shared by the range conditions."""
    return Evaluator(exported(data_root, preset)[0])


@pytest.mark.parametrize("preset,condition", AGREEMENT)
def test_integer_head_codes_match_fake_quant(tiny_data, preset, condition):
    result = _comparison(tiny_data, preset, condition)
    a = result["agreement"]
    assert a["codes"] == 6 * H * W * 2                      # 6 test images, 2 head channels
    assert a["equal"] == 1.0 and a["max_diff"] == 0, a      # the same integer kernels
    fake, integer = result["metrics"]["int8 fake-quant"], result["metrics"]["int8 integer"]
    for k in ("abs_rel", "sq_rel", "rmse", "rmse_log", "a1"):
        assert integer[k] == pytest.approx(fake[k], rel=1e-5, abs=1e-7), k
    dev = result["deviation_mm"]
    assert set(dev) == {"all", "0.5-2 m", "2-5 m", "5-10 m", "10-15 m"}
    assert dev["all"]["pixels"] == sum(d["pixels"] for k, d in dev.items() if k != "all") > 0
    assert 0 <= dev["all"]["median"] <= dev["all"]["p95"] <= dev["all"]["p99"] <= dev["all"]["max"]
    assert "equal" in format_comparison(result)


@pytest.mark.parametrize("preset", PRESETS)
def test_monocular_integer_graph_matches_its_fake_quant_forward(tiny_data, preset):
    from jaxdepth.evaluate import make_head_codes
    from jaxdepth.models import quant_for
    from jaxdepth.quant.freeze import freeze

    cfg, variables, _ = exported(tiny_data, preset)
    graph = export_graph(cfg, variables, H, W, use_lidar=False)
    assert graph.inputs == ["rgb"]
    fake = build_model(cfg.model, quant_for(cfg, "fake"))
    b = first_test_batch(cfg)
    want = np.asarray(make_head_codes(fake, use_lidar=False)(freeze(fake, variables, False), b["rgb"], b["lidar"]))
    got = np.asarray(make_integer_forward(graph)(b["rgb"], None), np.int32)
    np.testing.assert_array_equal(got, want)
    # The RGB-only mode derives its own parameters: its skip concats read the RGB encoder's
    # features, not the fused ones, so the LiDAR mode's multipliers would be wrong there.
    apply = jax.jit(lambda v: fake.apply(v, b["rgb"], None)[0])
    inline = np.asarray(apply(variables))
    np.testing.assert_array_equal(np.asarray(apply(freeze(fake, variables, False))), inline)
    assert np.abs(np.asarray(apply(freeze(fake, variables, True))) - inline).max() > 0


def test_full_resolution_skip_and_filled_log_lidar_input_export_exactly(tiny_data):
    cfg = tiny_cfg(tiny_data, tiny_data.parent / "unused_run", model__full_res=4,
                   model__lidar_encoding="log", model__lidar_fill=True)
    model = build_model(cfg.model)
    variables = with_ranges(cfg, model, initialised(model))
    graph = export_graph(cfg, variables, H, W)
    nodes = {n.name: n for n in graph.nodes}
    assert nodes["sparse"].attrs["lidar_encoding"] == "log" and nodes["sparse"].attrs["lidar_fill"]
    assert nodes["san/with_fill"].inputs == ["san/depth", "san/fill"]
    # The full-resolution RGB and LiDAR features, fused, reach the last decoder stage.
    assert nodes["decoder/skip0"].inputs == ["decoder/up0", "fuse0"]
    assert nodes["fuse0"].inputs == ["encoder/conv0", "san/stage_full/sum"]
    a = compare(Evaluator(cfg), variables, "test", graph)["agreement"]
    assert a["equal"] == 1.0 and a["max_diff"] == 0, a


def test_a_stride2_san_stage_with_paths_of_its_own_exports_exactly(tiny_data):
    cfg = tiny_cfg(tiny_data, tiny_data.parent / "unused_run", model__san_path_depths="[1, 2]",
                   model__san_stage0_path_depths="[1]")
    model = build_model(cfg.model)
    variables = with_ranges(cfg, model, initialised(model))
    graph = export_graph(cfg, variables, H, W)
    nodes = {n.name: n for n in graph.nodes}
    assert nodes["san/stage0/sum"].inputs == ["san/stage0/path1_0"]
    assert nodes["san/stage1/sum"].inputs == ["san/stage1/path1_0", "san/stage1/path2_1"]
    a = compare(Evaluator(cfg), variables, "test", graph)["agreement"]
    assert a["equal"] == 1.0 and a["max_diff"] == 0, a


def test_capped_activations_and_grid_inputs_export_exactly(tiny_data):
    from jaxdepth.models.layers import Input, quantize_input

    cfg, variables, graph = capped_exported(tiny_data)
    # The 28 SAN (6 stages x path + sum), fusion and decoder blocks end their ranges at the
    # cap or below; the encoder does not.
    flat = jax.tree_util.tree_flatten_with_path(variables["quant"])[0]
    highs = {"/".join(str(p.key) for p in path[:-2]): float(v) for path, v in flat if path[-1].key == "hi"}
    capped = {k: v for k, v in highs.items()                # not the concats that carry the mask
              if k.startswith(("san/stage", "fuse", "decoder/upconv")) and not k.endswith("with_mask")}
    assert len(capped) == 28 and max(capped.values()) == pytest.approx(CAP) and max(capped.values()) <= CAP
    assert max(v for k, v in highs.items() if k.startswith("encoder/")) > CAP
    a = compare(Evaluator(cfg), variables, "test", graph)["agreement"]
    assert a["equal"] == 1.0 and a["max_diff"] == 0, a
    # With grid inputs the float model's LiDAR input is the integer model's codes, in real values.
    b = first_test_batch(cfg)
    lidar_enc = build_model(cfg.model).lidar_encoding
    got = Input("sparse", lidar_enc, grid=True).apply({}, jnp.asarray(b["lidar"]))
    want = quantize_input("sparse", jnp.asarray(b["lidar"]), qn.UINT8, lidar_enc).value
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    assert len(np.unique(np.asarray(got))) > 10


def test_weights_on_their_grid_keep_the_integer_model_and_bring_fp32_to_it(tiny_data):
    from jaxdepth.models import quant_for
    from jaxdepth.quant.freeze import weights_on_grid

    cfg, variables, graph = capped_exported(tiny_data)
    snapped = weights_on_grid(build_model(cfg.model, quant_for(cfg, "fake")), variables)
    on_grid = export_graph(cfg, snapped, H, W)
    convs = [(a, b) for a, b in zip(graph.nodes, on_grid.nodes) if a.op == "conv"]
    assert len(convs) > 30
    for a, b in convs:
        # Every conv keeps its int8 weights, and its float weights are their real values.
        # Refolding BatchNorm rounds in float32, so a weight scale may move by an ulp, and
        # the requantization multiplier in its last bits.
        np.testing.assert_array_equal(a.int_params["weight"], b.int_params["weight"])
        np.testing.assert_allclose(b.float_params["weight"], b.int_params["weight"] * b.int_params["weight_scale"],
                                   rtol=1e-5, atol=1e-9)
        np.testing.assert_array_equal(a.int_params["shift"], b.int_params["shift"])
        np.testing.assert_allclose(a.int_params["multiplier"], b.int_params["multiplier"], rtol=1e-6)
    evaluator = Evaluator(cfg)
    latent = compare(evaluator, variables, "test", graph)
    grid = compare(evaluator, snapped, "test", on_grid)
    assert grid["agreement"]["equal"] == 1.0                # integer == fake-quant, as always
    # What separates FP32 from integer is now the activations' 8 bits alone (here the
    # larger part: an untrained model with its activations capped at 0.5).
    latent, grid = latent["deviation_mm"]["all"], grid["deviation_mm"]["all"]
    assert grid["median"] < latent["median"] and grid["p99"] < latent["p99"], (grid, latent)


def test_linear_heads_over_the_fill_export_exactly_with_and_without_lidar(tiny_data):
    from jaxdepth.encodings import get_encoding, output_decoder
    from jaxdepth.evaluate import make_head_codes, make_predict
    from jaxdepth.models import quant_for
    from jaxdepth.quant.freeze import freeze

    cfg, variables, graph = prior_exported(tiny_data)
    # The LiDAR graph ends in the correction's conv, uint8 over the fixed range [-1, 1];
    # the fill is added on the host.
    assert graph.outputs == ["decoder/fill_head0/conv"]
    out = graph.tensors["decoder/fill_head0/conv"]
    assert out.fmt == qn.UINT8 and out.scale == pytest.approx(2 / 255) and out.zero_point == 127
    assert artifact.output_names(graph, "log") == ("fill_correction",)
    manifest = artifact.manifest(graph, cfg)
    assert manifest["encoding"]["fill_correction"]["k"] == 5.0
    assert manifest["outputs"][0]["channel_names"] == ["fill_correction"]
    mono = export_graph(cfg, variables, H, W, use_lidar=False)
    assert mono.outputs == ["decoder/head0/sigmoid"]               # the RGB-only pass's own head
    fake = build_model(cfg.model, quant_for(cfg, "fake"))
    b = first_test_batch(cfg)
    for use_lidar, g in ((True, graph), (False, mono)):
        lidar = b["lidar"] if use_lidar else None
        frozen = freeze(fake, variables, use_lidar)
        want = np.asarray(make_head_codes(fake, use_lidar)(frozen, b["rgb"], b["lidar"]))
        got = np.asarray(make_integer_forward(g)(b["rgb"], lidar), np.int32)
        np.testing.assert_array_equal(got, want)
        assert len(np.unique(got)) > 20
        # The host's decode of the integer codes is the fake-quant model's own depth.
        depth = output_decoder(cfg.model, use_lidar)(got, lidar)
        fake_depth = make_predict(fake, get_encoding(cfg.model), use_lidar)(frozen, b["rgb"], b["lidar"])
        np.testing.assert_allclose(np.asarray(depth), np.asarray(fake_depth), rtol=1e-6)


def test_phased_correction_exports_exactly_and_rounds_finer(tiny_data):
    from jaxdepth.encodings import get_encoding, output_decoder, output_grid
    from jaxdepth.evaluate import make_head_codes, make_predict
    from jaxdepth.models import quant_for
    from jaxdepth.quant.freeze import freeze, weights_on_grid

    cfg, variables, graph = prior_exported(tiny_data, 4)
    names = tuple(f"fill_correction_{i}" for i in range(4))
    assert artifact.output_names(graph, "log") == names
    assert artifact.manifest(graph, cfg)["encoding"]["fill_correction"]["phases"] == 4
    # One conv, four output channels: the same int8 kernel, biases a quarter of an output
    # code apart (in accumulator units, where a code is 1 / multiplier).
    p = next(n for n in graph.nodes if n.name == "decoder/fill_head0/conv").int_params
    assert p["weight"].shape[-1] == 4 and (p["weight"] == p["weight"][..., :1]).all()
    code = 2.0 ** (31 + int(p["shift"])) / float(p["multiplier"])
    np.testing.assert_allclose(np.diff(p["bias"].astype(np.float64)), code / 4, atol=1.0)
    fake = build_model(cfg.model, quant_for(cfg, "fake"))
    b = first_test_batch(cfg)
    frozen = freeze(fake, variables, True)
    got = np.asarray(make_integer_forward(graph)(b["rgb"], b["lidar"]), np.int32)
    np.testing.assert_array_equal(got, np.asarray(make_head_codes(fake, True)(frozen, b["rgb"], b["lidar"])))
    steps = got - got[..., :1]
    assert set(np.unique(steps)) == {0, 1} and (np.diff(steps, axis=-1) >= 0).all()   # staggered rounding
    depth = output_decoder(cfg.model, True)(got, b["lidar"])
    fake_depth = make_predict(fake, get_encoding(cfg.model), True)(frozen, b["rgb"], b["lidar"])
    np.testing.assert_allclose(np.asarray(depth), np.asarray(fake_depth), rtol=1e-6)
    # QAT's last step puts the one kernel the copies share on its grid.
    kernel = weights_on_grid(fake, variables)["params"]["decoder"]["fill_head0"]["conv"]["kernel"]
    np.testing.assert_allclose(kernel, p["weight"][..., :1] * np.reshape(p["weight_scale"], -1)[:1], rtol=1e-6)
    # The same FP32 heads on the output grid of one copy and of four: four times finer.
    one, _, _ = prior_exported(tiny_data)
    heads = build_model(cfg.model).apply(variables, b["rgb"], b["lidar"])[0]
    fp32 = get_encoding(cfg.model).decode(heads)
    err = {n: np.abs(np.asarray(output_grid(c.model, True)(heads, b["lidar"]) - fp32)).mean()
           for n, c in ((1, one), (4, cfg))}
    assert err[4] == pytest.approx(err[1] / 4, rel=0.15), err


def test_film_has_no_int8_form(tiny_data):
    from jaxdepth.config import replace

    cfg, variables, _ = exported(tiny_data, "npu_strict")
    film = replace(cfg, model={"film": True})
    model = build_model(film.model)
    v = {**initialised(model), "quant": variables["quant"]}
    with pytest.raises(ExportError, match="FiLM.*no INT8 form|no INT8 form.*FiLM"):
        export_graph(film, v, H, W)


def test_intermediates_are_the_stored_codes_of_every_tensor(tiny_data):
    cfg, _, graph = exported(tiny_data, "per_channel")      # its intermediates serve test_onnx too
    b = first_test_batch(cfg)
    codes = make_intermediates(graph)(b["rgb"], b["lidar"])
    assert set(codes) == set(graph.tensors)
    head = make_integer_forward(graph)(b["rgb"], b["lidar"])
    np.testing.assert_array_equal(codes[graph.outputs[0]], head)
    for name, c in make_input_codes(graph)(b["rgb"], b["lidar"]).items():
        np.testing.assert_array_equal(codes[name], c)
    assert all(c.dtype == storage_dtype(graph.tensors[k].fmt) for k, c in codes.items()
               if k not in graph.outputs)


# ----------------------------------------------------------------------------------------
# The artifact on disk.
# ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def saved(tiny_data, tmp_path_factory):
    cfg, variables, graph = exported(tiny_data, "npu_strict")
    out = tmp_path_factory.mktemp("artifact")
    sizes = artifact.save(graph, cfg, out, used_parameter_count(graph, variables))
    return out, sizes


def test_artifact_round_trip_gives_identical_codes(tiny_data, saved):
    out, _ = saved
    cfg, _, graph = exported(tiny_data, "npu_strict")
    loaded, loaded_cfg = artifact.load(out)
    assert loaded_cfg == cfg and loaded.inputs == graph.inputs and loaded.outputs == graph.outputs
    assert Program.of(loaded) == Program.of(graph)
    for a, b in zip(graph.nodes, loaded.nodes):
        assert (a.op, a.name, a.inputs) == (b.op, b.name, b.inputs)
        for k, v in a.int_params.items():
            assert b.int_params[k].dtype == v.dtype
            np.testing.assert_array_equal(b.int_params[k], v)
        for k, v in a.float_params.items():
            np.testing.assert_array_equal(b.float_params[k], v)
    batch = first_test_batch(cfg)
    np.testing.assert_array_equal(make_integer_forward(loaded)(batch["rgb"], batch["lidar"]),
                                  make_integer_forward(graph)(batch["rgb"], batch["lidar"]))


def test_artifact_is_under_a_third_of_the_fp32_model(saved):
    out, sizes = saved
    files = {p.name for p in out.iterdir()}
    assert files == {"manifest.json", "weights.npz", "float_weights.npz"}
    assert sizes["integer_bytes"] == (out / "manifest.json").stat().st_size + (out / "weights.npz").stat().st_size
    assert sizes["fp32_bytes"] > 4_000_000 and sizes["ratio"] <= 0.3, sizes


def test_manifest_documents_every_layer(saved):
    out, _ = saved
    man = json.loads((out / "manifest.json").read_text())
    assert man["format"] == "jaxdepth-int8" and man["format_version"] == 2
    assert {"config", "encoding", "quantization", "inputs", "outputs", "layers", "files",
            "fp32_reference"} <= set(man)
    assert man["encoding"]["name"] == "intfrac" and man["encoding"]["max_depth"] == 15.0
    assert "ties away from zero" in man["quantization"]["rounding"]
    assert man["quantization"]["preset"] == "npu_strict"
    assert [i["name"] for i in man["inputs"]] == ["rgb", "sparse"]
    assert man["inputs"][0]["shape"] == [1, H, W, 3] and man["inputs"][0]["dtype"] == "uint8"
    assert man["outputs"][0]["channel_names"] == ["int", "frac"]
    assert man["outputs"][0]["scale"] == pytest.approx(1 / 255)
    weights = np.load(out / "weights.npz")
    keys = set()
    for layer in man["layers"]:
        assert {"op", "name", "inputs", "output", "attrs", "output_quant", "params"} <= set(layer)
        for spec in layer["params"].values():
            arr = weights[spec["key"]]
            assert list(arr.shape) == spec["shape"] and str(arr.dtype) == spec["dtype"]
            keys.add(spec["key"])
    assert keys == set(weights.files)
    dtypes = {str(weights[k].dtype) for k in weights.files}
    assert dtypes == {"int8", "int32", "uint8", "float32"}       # float32: weight/gate scales
    assert all(k.endswith("_scale") for k in weights.files if weights[k].dtype == np.float32)
    conv = next(layer for layer in man["layers"] if layer["op"] == "conv")
    assert conv["attrs"] == {"kernel": 7, "stride": 2, "padding": 3, "relu": True, "cap": 0.0}


# ----------------------------------------------------------------------------------------
# Command lines.
# ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def checkpoint_dir(tiny_data, tmp_path_factory):
    """A step folder as the trainer writes it, with PTQ ranges."""
    from jaxdepth import checkpoint
    from jaxdepth.config import to_dict

    cfg, variables, _ = exported(tiny_data, "npu_strict")
    run = tmp_path_factory.mktemp("run")
    ckpts = checkpoint.Checkpoints(run, keep=1)
    ckpts.save(1, variables, {"config": to_dict(cfg), "phase": "fp32", "metrics": None})
    return run


def test_export_cli_writes_artifact_and_onnx(checkpoint_dir, tmp_path, capsys):
    from jaxdepth.export.__main__ import main

    out = tmp_path / "npu"
    assert main([str(checkpoint_dir), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "layers: 84" in text and "ratio 0.2" in text
    assert {p.name for p in out.iterdir()} == {"manifest.json", "weights.npz", "float_weights.npz",
                                               "model_fp32.onnx", "model_int8_qdq.onnx",
                                               "model_int8_integer.onnx"}
    assert main([str(checkpoint_dir), "--out", str(tmp_path / "bad"), "--height", "40"]) == 2


def test_eval_cli_reports_integer_int8_beside_fake_quant(tiny_data, checkpoint_dir, tmp_path, capsys):
    sys.path.insert(0, str(ROOT))
    import eval as eval_cli

    out = tmp_path / "m.json"
    assert eval_cli.main([str(checkpoint_dir), "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "int8 fake-quant" in text and "int8 integer" in text and "|integer - FP32|" in text
    record = json.loads(out.read_text())
    rows = record["results"]
    assert rows["int8 integer"] == pytest.approx(_comparison(tiny_data, "npu_strict", "ptq")["metrics"]["int8 integer"])
    assert rows["int8 integer"]["abs_rel"] == pytest.approx(rows["int8 fake-quant"]["abs_rel"], rel=5e-3)
    assert record["integer"]["agreement"]["equal"] >= 0.999
    assert set(record["integer"]["deviation_mm"]) == {"all", "0.5-2 m", "2-5 m", "5-10 m", "10-15 m"}
