"""The integer runtime against an independent reference written from
docs/export_format.md in plain numpy (int64), sharing no code with jaxdepth's kernels:
conv, add, fusion, concat, max_pool, upsample, the sigmoid lookup and requantization, on
random data with random parameters."""
from __future__ import annotations

import numpy as np
import pytest

from jaxdepth.export.integer import Program, Step, run_codes
from jaxdepth.quant import numerics as qn

RNG = np.random.default_rng(7)


# ----------------------------------------------------------------------------------------
# The reference, from the format specification.
# ----------------------------------------------------------------------------------------
def ref_round(x: np.ndarray) -> np.ndarray:
    """round(x) = sign(x) * floor(|x| + 0.5) on exact rationals a / 2**k (int64 inputs)."""
    return np.sign(x) * np.floor(np.abs(x) + 0.5)


def ref_requantize(acc: np.ndarray, m: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """round(acc * m * 2**-(31 + shift)): the 64-bit product |acc| * m, plus
    2**(30 + shift), shifted right by 31 + shift, sign restored."""
    acc, m, shift = (np.asarray(a, np.int64) for a in (acc, m, shift))
    total = 31 + shift
    half = np.where(total > 0, np.int64(1) << np.maximum(total - 1, 0), 0)
    return np.sign(acc) * ((np.abs(acc) * m + half) >> total)


def ref_clamp(y: np.ndarray, lo, hi) -> np.ndarray:
    return np.minimum(np.maximum(y, lo), hi)


def ref_conv(x, zx, w, bias, m, shift, zy, stride, pad, relu, fmt) -> np.ndarray:
    n, h, wd, c = x.shape
    kh, kw, _, o = w.shape
    xp = np.pad(x.astype(np.int64) - zx, ((0, 0), (pad, pad), (pad, pad), (0, 0)))  # pads zx
    ho, wo = -(-h // stride), -(-wd // stride)
    acc = np.zeros((n, ho, wo, o), np.int64) + bias
    for a in range(kh):
        for b in range(kw):
            patch = xp[:, a:a + stride * ho:stride, b:b + stride * wo:stride, :]
            acc += np.einsum("nhwc,co->nhwo", patch, w[a, b].astype(np.int64))
    y = ref_requantize(acc, m, shift) + zy
    return ref_clamp(y, zy if relu else fmt.qmin, fmt.qmax)


def ref_sum(xs, zxs, coeffs, mults, out_mult, left_shift, bias, zy, relu, fmt) -> np.ndarray:
    total = 0
    for x, zx, coeff, (m, s) in zip(xs, zxs, coeffs, mults):
        term = x.astype(np.int64) - zx
        if coeff is not None:
            term = term * coeff.astype(np.int64)
        total = total + ref_requantize(term << left_shift, m, s)
    y = ref_requantize(total, *out_mult) + zy
    if bias is not None:
        y = y + bias
    return ref_clamp(y, zy if relu else fmt.qmin, fmt.qmax)


def ref_multiplier(real: float) -> tuple[np.int64, np.int64]:
    """m in [2**30, 2**31) and shift with m * 2**-(31 + shift) ~= real."""
    mant, exp = np.frexp(real)
    return np.int64(min(round(mant * 2 ** 31), 2 ** 31 - 1)), np.int64(-exp)


# ----------------------------------------------------------------------------------------
# Running one op through the integer runtime.
# ----------------------------------------------------------------------------------------
def run_op(op: str, attrs: dict, inputs: dict[str, tuple[np.ndarray, int, qn.Format]],
           params: dict, out_zp: int, fmt: qn.Format) -> np.ndarray:
    steps = [Step("input_rgb", name, (), (), f) for name, (_, _, f) in inputs.items()]
    steps.append(Step(op, "y", tuple(inputs), tuple(sorted(attrs.items())), fmt))
    program = Program(tuple(steps), "y")
    dtype = {"uint8": np.uint8, "int8": np.int8}
    codes = {name: x.astype(dtype[f.name]) for name, (x, _, f) in inputs.items()}
    zps = {name: np.int32(zp) for name, (_, zp, _) in inputs.items()} | {"y": np.int32(out_zp)}
    return np.asarray(run_codes(program, {"nodes": {"y": params}, "zero_points": zps}, codes)["y"])


def codes(shape, fmt: qn.Format) -> np.ndarray:
    return RNG.integers(fmt.qmin, fmt.qmax + 1, size=shape)


# ----------------------------------------------------------------------------------------
# Tests.
# ----------------------------------------------------------------------------------------
def test_requantize_matches_the_reference():
    acc = np.concatenate([RNG.integers(-2 ** 31 + 1, 2 ** 31, 3000), RNG.integers(-500, 500, 1000)])
    m = RNG.integers(2 ** 30, 2 ** 31, acc.size)
    shift = RNG.integers(-31, 32, acc.size)
    want = ref_requantize(acc, m, shift)
    ok = np.abs(want) < 2 ** 31                     # in range: no saturation involved
    got = np.asarray(qn.requantize(acc.astype(np.int32), m.astype(np.int32), shift.astype(np.int32)))
    np.testing.assert_array_equal(got[ok], want[ok])
    np.testing.assert_array_equal(got[~ok], np.sign(want[~ok]) * (2 ** 31 - 1))


@pytest.mark.parametrize("fmt,stride,relu,per_channel", [(qn.UINT8, 1, True, False),
                                                         (qn.UINT8, 2, False, True),
                                                         (qn.INT8, 2, True, False)])
def test_conv(fmt, stride, relu, per_channel):
    x = codes((2, 9, 11, 5), fmt)
    zx = 0 if fmt.symmetric else int(RNG.integers(0, 256))
    zy = 0 if fmt.symmetric else int(RNG.integers(0, 128))
    w = RNG.integers(-127, 128, (3, 3, 5, 4))
    bias = RNG.integers(-3000, 3000, 4)
    reals = RNG.uniform(0.002, 0.02, 4 if per_channel else 1)
    m, shift = (np.array(a) for a in zip(*[ref_multiplier(r) for r in reals]))
    if not per_channel:
        m, shift = m[0], shift[0]
    want = ref_conv(x, zx, w, bias, m, shift, zy, stride, 1, relu, fmt)
    params = {"weight": w.astype(np.int8), "bias": bias.astype(np.int32),
              "multiplier": np.asarray(m, np.int32), "shift": np.asarray(shift, np.int32),
              "weight_sum": w.sum(axis=(0, 1, 2)).astype(np.int32)}    # as integer_params adds it
    got = run_op("conv", {"kernel": 3, "stride": stride, "padding": 1, "relu": relu},
                 {"x": (x, zx, fmt)}, params, zy, fmt)
    assert len(np.unique(want)) > 20
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("op", ["add", "fusion"])
def test_add_and_fusion(op):
    fmt = qn.UINT8
    xs = [codes((2, 6, 7, 8), fmt) for _ in range(2)]
    zxs = [int(z) for z in RNG.integers(0, 256, 2)]
    zy = int(RNG.integers(0, 256))
    left = 20 if op == "add" else 15
    coeffs = [RNG.integers(0, 128, 8), RNG.integers(0, 128, 8)] if op == "fusion" else [None, None]
    mults = [ref_multiplier(r) for r in RNG.uniform(0.3, 0.5, 2)]
    out_mult = ref_multiplier(float(RNG.uniform(2.0, 4.0) / 2 ** left * (1 if op == "add" else 1 / 64)))
    bias = RNG.integers(-20, 20, 8) if op == "fusion" else None
    relu = op == "add"
    want = ref_sum(xs, zxs, coeffs, mults, out_mult, left, bias, zy, relu, fmt)
    params = {"output_multiplier": np.int32(out_mult[0]), "output_shift": np.int32(out_mult[1])}
    for i, (m, s) in enumerate(mults):
        params.update({f"input{i}_multiplier": np.int32(m), f"input{i}_shift": np.int32(s)})
    if op == "fusion":
        params.update({"coeff0": coeffs[0].astype(np.int8), "coeff1": coeffs[1].astype(np.int8),
                       "bias": bias.astype(np.int32)})
    got = run_op(op, {"left_shift": left, "relu": relu},
                 {"a": (xs[0], zxs[0], fmt), "b": (xs[1], zxs[1], fmt)}, params, zy, fmt)
    assert len(np.unique(want)) > 50
    np.testing.assert_array_equal(got, want)


def test_concat_max_pool_upsample():
    fmt = qn.UINT8
    a, b = codes((1, 4, 6, 3), fmt), codes((1, 4, 6, 2), fmt)
    za, zb, zy = 20, 200, 90
    ma, mb = ref_multiplier(0.7), ref_multiplier(1.9)
    want = np.concatenate([ref_clamp(ref_requantize(a.astype(np.int64) - za, *ma) + zy, 0, 255),
                           ref_clamp(ref_requantize(b.astype(np.int64) - zb, *mb) + zy, 0, 255)], -1)
    params = {"input0_multiplier": np.int32(ma[0]), "input0_shift": np.int32(ma[1]),
              "input1_multiplier": np.int32(mb[0]), "input1_shift": np.int32(mb[1])}
    got = run_op("concat", {}, {"a": (a, za, fmt), "b": (b, zb, fmt)}, params, zy, fmt)
    np.testing.assert_array_equal(got, want)

    x = codes((1, 7, 9, 2), fmt)
    xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=fmt.qmin)
    want = np.stack([[xp[0, 2 * i:2 * i + 3, 2 * j:2 * j + 3].max(axis=(0, 1)) for j in range(5)]
                     for i in range(4)])[None]
    got = run_op("max_pool", {"window": 3, "stride": 2, "padding": 1}, {"x": (x, 0, fmt)}, {}, 0, fmt)
    np.testing.assert_array_equal(got, want)
    got = run_op("upsample", {"factor": 2, "mode": "nearest"}, {"x": (x, 0, fmt)}, {}, 0, fmt)
    np.testing.assert_array_equal(got[0, 5, 7], x[0, 2, 3])
    np.testing.assert_array_equal(got[:, ::2, ::2], x)


@pytest.mark.parametrize("fmt", [qn.UINT8, qn.INT8])
def test_sigmoid_table_and_lookup(fmt):
    from jaxdepth.quant.integer_ops import sigmoid_table

    zp, scale = (0 if fmt.symmetric else 131), 0.043
    table = np.asarray(sigmoid_table(fmt, np.int32(zp), np.float32(scale)))
    # table[k - qmin] = round(sigmoid((k - zp) * scale) * 255), clamped to [0, 255]
    k = np.arange(fmt.qmin, fmt.qmax + 1)
    exact = 255.0 / (1.0 + np.exp(-(k - zp) * scale))
    want = ref_clamp(ref_round(exact), 0, 255)
    not_near_tie = np.abs(exact - np.floor(exact) - 0.5) > 1e-4
    np.testing.assert_array_equal(table[not_near_tie], want[not_near_tie])
    assert np.abs(table - want).max() <= 1 and table.dtype == np.int32
    x = codes((1, 5, 5, 2), fmt)
    got = run_op("sigmoid", {"input_qmin": fmt.qmin}, {"x": (x, zp, fmt)},
                 {"table": table.astype(np.uint8)}, 0, qn.UINT8)
    np.testing.assert_array_equal(got, table[x - fmt.qmin])
