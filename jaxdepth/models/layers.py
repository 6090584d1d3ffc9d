"""The building blocks of the network, each aware of how the NPU stores its output.

Every block runs in one of three modes (``Quant.mode``):

* ``float``: plain FP32 (training with BatchNorm batch statistics, evaluation).
* ``calibrate``: FP32, while each activation observer widens its range to the min/max
  seen (post-training min-max calibration).
* ``fake``: INT8 simulation. Blocks exchange ``QValue``s: the integer codes the NPU
  stores plus their real value. Each block derives its integer parameters (weights
  quantized by AQT, bias codes, requantization multipliers, lookup tables; see
  ``quant.integer_ops``) and computes its output codes with the integer kernels, the
  integer runtime's own; gradients pass through the float expression those codes
  approximate. During QAT the observers track an EMA of the batch min/max; otherwise the
  ranges are frozen.

The integer parameters of a block are computed once: when the ``qparams`` collection is
mutable, the block stores what it derived there; when that collection holds them, the
block uses them instead of deriving again. ``quant.freeze`` runs that one derivation, and
fake-quant evaluation and the exporter both read its result, so the exported integer
model is the fake-quant model by construction. Each block also names its op and
attributes (``OP``, ``export_attrs``) for the exporter, which watches one fake-quant
forward (``export.exporter``); the blocks themselves know nothing of export.

The variables are the same in every mode, so one checkpoint serves FP32 training, QAT,
calibration and export.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Sequence, Union

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxdepth.encodings import FillCorrection, LidarEncoding
from jaxdepth.models.convolution import float_conv
from jaxdepth.models.pooling import max_pool
from jaxdepth.quant import aqt_backend
from jaxdepth.quant import integer_ops as iops
from jaxdepth.quant import numerics as qn

Tensor = Union[jax.Array, qn.QValue]
MODES = ("float", "calibrate", "fake")
BN_MOMENTUM = 0.9
QPARAMS = "qparams"       # the collection holding each block's derived integer parameters


@dataclass(frozen=True)
class Quant:
    """How the blocks quantize: the mode, the scheme (NPU rules) and the EMA decay."""

    mode: str = "float"
    scheme: qn.Scheme = qn.PRESETS["npu_strict"]
    ema_decay: float = 0.99

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"unknown quantization mode {self.mode!r}; expected one of {MODES}")

    @property
    def fake(self) -> bool:
        return self.mode == "fake"


FLOAT = Quant()


def value(x: Tensor) -> jax.Array:
    """The real-valued content of a tensor in any mode."""
    return x.value if isinstance(x, qn.QValue) else x


def shape(x: Tensor) -> tuple[int, ...]:
    return value(x).shape


def path(module: nn.Module) -> str:
    """A module's path, e.g. ``encoder/layer1_0/conv1``: the name of its output tensor."""
    return "/".join(module.scope.path)


def same_padding(kernel: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """Symmetric zero padding k//2 (the NPU's padding), output = ceil(input / stride)."""
    p = kernel // 2
    return ((p, p), (p, p))


def frozen_params(module: nn.Module) -> dict | None:
    """The block's integer parameters from the ``qparams`` collection, if derived already."""
    if module.has_variable(QPARAMS, "node"):
        return module.get_variable(QPARAMS, "node")
    return None


def materialized(params: Any) -> Any:
    """``params`` behind an optimization barrier: the scales, multipliers, bias codes, zero
    points and tables a block derived, as arrays its consumers read as they are.

    Without it XLA rewrites a float expression across the ops that compute it: deriving a
    multiplier inline, it merged ``(hi - lo) / 255`` (the input scale) and ``bound / 127``
    (the weight scale) into one product with ``1 / 32385``, which rounds otherwise than the
    two scales do when ``quant.freeze`` stores them and a forward reads them back (with
    XLA:CPU's Eigen convolutions, 1908 of 16384 head codes of a test model moved, by up to
    6). Behind the barrier the forward that derives its parameters inline (QAT) reads the
    arrays that freeze stores, with YNNPACK's convolutions or Eigen's
    (``tests/test_export.py``). The weight codes, integers that no float expression
    rescales, stay outside it: there it only slowed the QAT step (``docs/speed.md``).
    """
    return jax.lax.optimization_barrier(params)


def store_params(module: nn.Module, params: dict) -> None:
    """Keeps what the block derived, when the caller collects it (``quant.freeze``)."""
    if module.is_mutable_collection(QPARAMS):
        module.put_variable(QPARAMS, "node", params)


def capped(y: jax.Array, cap: float) -> jax.Array:
    """``min(y, cap)`` (``cap`` 0: ``y``). A block's static range then ends at or below
    ``cap``, where the integer model's codes saturate: the float model is bounded as its
    quantized form is, and the range, no longer set by rare outliers, keeps fine steps."""
    return jnp.minimum(y, cap) if cap else y


class Observer(nn.Module):
    """The static range of one activation tensor."""

    quant: Quant = FLOAT

    @nn.compact
    def __call__(self, x: jax.Array, update: bool) -> tuple[jax.Array, jax.Array] | jax.Array:
        """Updates the range if ``update``; returns ``x`` (float modes) or the range's
        (scale, int32 zero point) (``fake``)."""
        lo = self.variable("quant", "lo", lambda: jnp.zeros((), jnp.float32))
        hi = self.variable("quant", "hi", lambda: jnp.zeros((), jnp.float32))
        count = self.variable("quant", "count", lambda: jnp.zeros((), jnp.int32))
        if update and self.quant.mode != "float" and not self.is_initializing():
            lo.value, hi.value = ema_range(lo.value, hi.value, count.value, jax.lax.stop_gradient(x),
                                           self.quant.ema_decay if self.quant.fake else None)
            count.value = count.value + 1
        if not self.quant.fake:
            return x
        return qn.activation_qparams(lo.value, hi.value, self.quant.scheme.activation)


def ema_range(lo: jax.Array, hi: jax.Array, count: jax.Array, x: jax.Array,
              decay: float | None) -> tuple[jax.Array, jax.Array]:
    """The range after seeing ``x``: the running min/max (calibration, ``decay`` None) or
    an exponential moving average of the batch min/max (QAT); the first batch sets it."""
    if decay is None:
        first = count == 0
        return (jnp.where(first, x.min(), jnp.minimum(lo, x.min())),
                jnp.where(first, x.max(), jnp.maximum(hi, x.max())))
    d = jnp.where(count == 0, 0.0, decay)
    return d * lo + (1 - d) * x.min(), d * hi + (1 - d) * x.max()


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _conv_straight_through(x, w, y, strides, padding):
    return y


def _cst_fwd(x, w, y, strides, padding):
    return y, (x, w)


def _cst_bwd(strides, padding, res, g):
    x, w = res
    _, vjp = jax.vjp(lambda a, b: float_conv(a, b, strides, padding), x, w)
    gx, gw = vjp(g)
    return gx, gw, jnp.zeros_like(g)


_conv_straight_through.defvjp(_cst_fwd, _cst_bwd)


class Conv(nn.Module):
    """Conv (+ BatchNorm or bias) (+ ReLU), output stored in INT8.

    In ``fake`` mode BatchNorm is folded into the kernel and bias with its running
    statistics, as the NPU folds it, and the folded kernel is what AQT quantizes.
    """

    features: int
    kernel: int = 3
    stride: int = 1
    bn: bool = True
    relu: bool = True
    quant: Quant = FLOAT
    zero_init: bool = False        # start at output 0 (the bias): a correction to a prior
    out_range: tuple[float, float] | None = None   # fixed uint8 output range (a head) instead of an observed int8 one
    cap: float = 0.0               # ReLU-N: the output clipped at cap (0: unbounded); ``capped``
    phases: int = 1                # with out_range: each output channel in phase-shifted copies (``iops.spread_phases``)
    OP: ClassVar[str] = "conv"

    def export_attrs(self) -> dict:
        return {"kernel": self.kernel, "stride": self.stride, "padding": self.kernel // 2,
                "relu": self.relu, "cap": self.cap}

    @nn.compact
    def __call__(self, x: Tensor, train: bool = False) -> Tensor:
        cin = shape(x)[-1]
        init = nn.initializers.zeros if self.zero_init else nn.initializers.kaiming_normal()
        k = self.param("kernel", init,
                       (self.kernel, self.kernel, cin, self.features))
        if self.bn:
            gamma = self.param("bn_scale", nn.initializers.ones, (self.features,))
            beta = self.param("bn_bias", nn.initializers.zeros, (self.features,))
            mean = self.variable("batch_stats", "mean", jnp.zeros, (self.features,))
            var = self.variable("batch_stats", "var", jnp.ones, (self.features,))
        else:
            bias = self.param("bias", nn.initializers.zeros, (self.features,))
        if self.phases > 1:
            if self.bn or self.out_range is None:
                raise ValueError(f"{path(self)}: phases need a fixed output range and a bias, not BatchNorm")
            k = jnp.repeat(k, self.phases, axis=-1)   # one kernel: the copies differ by their bias only
            bias = iops.spread_phases(bias, self.phases, self.out_range)
        update = train or self.quant.mode == "calibrate"
        if self.quant.fake:
            k_eff, b_eff = (iops.fold_batch_norm(k, gamma, beta, mean.value, var.value) if self.bn
                            else (k, bias))
            return self._fake(x, k_eff, b_eff, update)
        y = float_conv(value(x), k, (self.stride,) * 2, same_padding(self.kernel))
        y = self._batch_norm(y, gamma, beta, mean, var, train) if self.bn else y + bias
        if self.relu:
            y = jax.nn.relu(y)
        y = capped(y, self.cap)
        return y if self.out_range else Observer(self.quant, name="out")(y, update=update)

    def _fake(self, x: qn.QValue, k_eff: jax.Array, b_eff: jax.Array, update: bool) -> qn.QValue:
        """AQT's weight codes convolved exactly with the input codes, requantized by the
        integer runtime's arithmetic."""
        strides, pad = (self.stride,) * 2, same_padding(self.kernel)
        p = frozen_params(self)
        if p is None:
            cp = iops.conv_params(k_eff, b_eff, x.scale, self.quant.scheme.per_channel_weights)
            weight_scale, bias = materialized((cp.weight_scale, cp.bias))
            p = {"weight": cp.weight, "weight_scale": weight_scale, "bias": bias}
        acc = iops.conv_accumulate(x.centered(), p["weight"], strides, pad, path(self))
        w = qn.straight_through(k_eff, p["weight"] * p["weight_scale"])
        y = _conv_straight_through(x.value, w, acc * (x.scale * p["weight_scale"]), strides, pad)
        y = y + b_eff
        if self.relu:
            y = jax.nn.relu(y)
        y = capped(y, self.cap)
        fmt = iops.HEAD_FORMAT if self.out_range else self.quant.scheme.activation
        if "multiplier" not in p:
            scale, zp = (qn.fixed_qparams(*self.out_range, fmt) if self.out_range
                         else Observer(self.quant, name="out")(y, update=update))
            m, shift = iops.rescale(x.scale * p["weight_scale"], scale)
            p = {**p, **materialized({"multiplier": m, "shift": shift, "scale": scale, "zero_point": zp}),
                 "float": {"weight": k_eff, "bias": b_eff}}
            store_params(self, p)
        codes = iops.conv_output(acc, p["bias"], (p["multiplier"], p["shift"]), p["zero_point"],
                                 fmt, self.relu)
        return qn.QValue.of(codes, y, p["scale"], p["zero_point"], fmt, path(self))

    def _batch_norm(self, y, gamma, beta, mean, var, train: bool) -> jax.Array:
        if train:
            m = y.mean(axis=(0, 1, 2))
            v = jnp.square(y - m).mean(axis=(0, 1, 2))
            if not self.is_initializing():
                mean.value = BN_MOMENTUM * mean.value + (1 - BN_MOMENTUM) * jax.lax.stop_gradient(m)
                var.value = BN_MOMENTUM * var.value + (1 - BN_MOMENTUM) * jax.lax.stop_gradient(v)
        else:
            m, v = mean.value, var.value
        return (y - m) * (gamma * jax.lax.rsqrt(v + iops.BN_EPS)) + beta


def _sum_codes(module: nn.Module, terms: Sequence[jax.Array], term_scales: Sequence[jax.Array],
               y: jax.Array, update: bool, left_shift: int, relu: bool,
               extra: Callable[[jax.Array], dict] | None = None) -> qn.QValue:
    """Output of a sum block (add, fusion) from its int32 terms: the observer's range, the
    TFLite ADD multipliers (derived once) and the integer sum kernel."""
    fmt = module.quant.scheme.activation
    p = frozen_params(module)
    if p is None:
        scale, zp = Observer(module.quant, name="out")(y, update=update)
        inputs, output = iops.sum_multipliers(term_scales, scale, left_shift)
        p = {"scale": scale, "zero_point": zp, "output_multiplier": output[0],
             "output_shift": output[1], **(extra(scale) if extra else {})}
        for i, (m, shift) in enumerate(inputs):
            p.update({f"input{i}_multiplier": m, f"input{i}_shift": shift})
        p = materialized(p)
        store_params(module, p)
    inputs = [(p[f"input{i}_multiplier"], p[f"input{i}_shift"]) for i in range(len(terms))]
    codes = iops.sum_output(terms, left_shift, inputs, (p["output_multiplier"], p["output_shift"]),
                            p["zero_point"], fmt, relu, p.get("bias"))
    return qn.QValue.of(codes, y, p["scale"], p["zero_point"], fmt, path(module))


class Add(nn.Module):
    """Elementwise sum of several tensors (+ ReLU), requantized to one output range."""

    relu: bool = False
    quant: Quant = FLOAT
    cap: float = 0.0               # the output clipped at cap (``capped``)
    OP: ClassVar[str] = "add"

    def export_attrs(self) -> dict:
        return {"relu": self.relu, "left_shift": iops.ADD_LEFT_SHIFT, "cap": self.cap}

    @nn.compact
    def __call__(self, *xs: Tensor, train: bool = False) -> Tensor:
        y = sum(value(x) for x in xs)
        if self.relu:
            y = jax.nn.relu(y)
        y = capped(y, self.cap)
        update = train or self.quant.mode == "calibrate"
        if not self.quant.fake:
            return Observer(self.quant, name="out")(y, update=update)
        return _sum_codes(self, [x.centered() for x in xs], [x.scale for x in xs], y, update,
                          iops.ADD_LEFT_SHIFT, self.relu)


class Concat(nn.Module):
    """Channel concat; each input is requantized to the output's single scale."""

    quant: Quant = FLOAT
    OP: ClassVar[str] = "concat"

    def export_attrs(self) -> dict:
        return {}

    @nn.compact
    def __call__(self, xs: Sequence[Tensor], train: bool = False) -> Tensor:
        y = jnp.concatenate([value(x) for x in xs], axis=-1)
        update = train or self.quant.mode == "calibrate"
        if not self.quant.fake:
            return Observer(self.quant, name="out")(y, update=update)
        p = frozen_params(self)
        if p is None:
            scale, zp = Observer(self.quant, name="out")(y, update=update)
            p = {"scale": scale, "zero_point": zp}
            for i, x in enumerate(xs):
                m, shift = iops.rescale(x.scale, scale)
                p.update({f"input{i}_multiplier": m, f"input{i}_shift": shift})
            p = materialized(p)
            store_params(self, p)
        fmt = self.quant.scheme.activation
        codes = iops.concat_output([x.centered() for x in xs],
                                   [(p[f"input{i}_multiplier"], p[f"input{i}_shift"]) for i in range(len(xs))],
                                   p["zero_point"], fmt)
        return qn.QValue.of(codes, y, p["scale"], p["zero_point"], fmt, path(self))


class Fusion(nn.Module):
    """out = s(w) * rgb + (1 - s(w)) * sparse + b, per channel (s = logistic).

    NPU form: two per-channel constant multiplies and an add. Quantized, the gate
    coefficients s(w) and 1 - s(w) are int8 weights (AQT, one per-tensor scale each) and
    ``b`` is stored as codes at the output scale.
    """

    quant: Quant = FLOAT
    cap: float = 0.0               # the output clipped at cap (``capped``)
    OP: ClassVar[str] = "fusion"

    def export_attrs(self) -> dict:
        return {"left_shift": iops.FUSION_LEFT_SHIFT, "cap": self.cap}

    @nn.compact
    def __call__(self, rgb: Tensor, sparse: Tensor, train: bool = False) -> Tensor:
        c = shape(rgb)[-1]
        w = self.param("gate", nn.initializers.constant(0.5), (c,))
        b = self.param("bias", nn.initializers.zeros, (c,))
        update = train or self.quant.mode == "calibrate"
        gate_rgb, gate_sparse = jax.nn.sigmoid(w), 1.0 - jax.nn.sigmoid(w)
        if not self.quant.fake:
            y = capped(gate_rgb * rgb + gate_sparse * sparse + b, self.cap)
            return Observer(self.quant, name="out")(y, update=update)
        p = frozen_params(self)
        if p is None:
            gates = materialized(iops.fusion_gates(w))
            codes, scales = [gt.codes for gt in gates], [gt.scale for gt in gates]
        else:
            codes, scales = [p["coeff0"], p["coeff1"]], [p["coeff0_scale"], p["coeff1_scale"]]
        g_rgb, g_sparse = (qn.straight_through(g, c * s) for g, c, s in
                           zip((gate_rgb, gate_sparse), codes, scales))
        # The observer ranges the float sum; the bias is then stored as codes at that output
        # scale (the integer form adds it after the rescale).
        y = capped(g_rgb * rgb.value + g_sparse * sparse.value + b, self.cap)
        terms = [x.centered() * c for x, c in zip((rgb, sparse), codes)]
        extra = lambda scale: {"coeff0": codes[0], "coeff1": codes[1], "coeff0_scale": scales[0],
                               "coeff1_scale": scales[1], "bias": iops.fusion_bias(b, scale),
                               "float": {"gate_rgb": gate_rgb, "gate_sparse": gate_sparse, "bias": b}}
        return _sum_codes(self, terms, [x.scale * s for x, s in zip((rgb, sparse), scales)], y,
                          update, iops.FUSION_LEFT_SHIFT, False, extra)


class MaxPool(nn.Module):
    """Max pooling with symmetric padding; exact on integer codes, so no requantization."""

    window: int
    stride: int
    OP: ClassVar[str] = "max_pool"

    @property
    def padding(self) -> int:
        return self.window // 2 if self.window % 2 else 0

    def export_attrs(self) -> dict:
        return {"window": self.window, "stride": self.stride, "padding": self.padding}

    def __call__(self, x: Tensor) -> Tensor:
        if not isinstance(x, qn.QValue):
            return max_pool(x, self.window, self.stride, self.padding)
        codes = iops.max_pool(x.codes, self.window, self.stride, self.padding, x.fmt)
        value = max_pool(x.value, self.window, self.stride, self.padding)
        return x.replace(value=value, codes=codes, name=path(self))


class Upsample(nn.Module):
    """Nearest-neighbour upsampling; copies codes, so no requantization."""

    factor: int = 2
    OP: ClassVar[str] = "upsample"

    def export_attrs(self) -> dict:
        return {"factor": self.factor, "mode": "nearest"}

    def __call__(self, x: Tensor) -> Tensor:
        up = functools.partial(iops.upsample, factor=self.factor)
        return x.map(up, path(self)) if isinstance(x, qn.QValue) else up(x)


class Split(nn.Module):
    """One channel of a tensor (an NPU Split); codes and quantization unchanged."""

    channel: int
    OP: ClassVar[str] = "split"

    def export_attrs(self) -> dict:
        return {"channel": self.channel}

    def __call__(self, x: Tensor) -> Tensor:
        take = lambda v: v[..., self.channel:self.channel + 1]
        return x.map(take, path(self)) if isinstance(x, qn.QValue) else take(x)


class Sigmoid(nn.Module):
    """The logistic of a head's logits; output uint8 over [0, 1] (scale 1/255).

    Quantized, it is a 256-entry table from logit code to output code.
    """

    quant: Quant = FLOAT
    OP: ClassVar[str] = "sigmoid"

    def export_attrs(self) -> dict:
        return {"input_qmin": self.quant.scheme.activation.qmin}

    @nn.compact
    def __call__(self, logits: Tensor) -> Tensor:
        s = jax.nn.sigmoid(value(logits))
        if not self.quant.fake:
            return s
        p = frozen_params(self)
        if p is None:
            scale, zp = qn.fixed_qparams(*iops.HEAD_RANGE, iops.HEAD_FORMAT)
            p = {"table": iops.sigmoid_table(logits.fmt, logits.zero_point, logits.scale),
                 "scale": scale, "zero_point": zp}
            p = materialized(p)
            store_params(self, p)
        codes = iops.lookup(p["table"], logits.codes, logits.fmt)
        return qn.QValue.of(codes, s, p["scale"], p["zero_point"], iops.HEAD_FORMAT, path(self))


class Head(nn.Module):
    """Conv3x3 -> ``channels`` -> sigmoid; with ``prior``, a linear head over the LiDAR
    fill: conv3x3 -> the correction z, uint8 over ``CORRECTION_RANGE`` (the graph's output,
    in ``prior.phases`` phase-shifted copies, ``iops.spread_phases``), and
    ``prior.head(copies, fill)`` with the host's float ``fill`` (``encodings.FillCorrection``).

    Its conv starts at 0 (at nearest fill): a kaiming-initialised conv starts with
    corrections of whole depth ranges, and training then silences the features it reads
    instead of learning corrections (measured on the default run: the model stayed at
    exactly nearest fill). In ``fake`` mode the head sows its output codes
    (``intermediates``), which ``evaluate.make_head_codes`` compares with the integer
    forward's.
    """

    channels: int
    quant: Quant = FLOAT
    prior: FillCorrection | None = None

    @nn.compact
    def __call__(self, x: Tensor, train: bool = False, fill: jax.Array | None = None) -> Tensor:
        if self.prior is None:
            logits = Conv(self.channels, 3, bn=False, relu=False, quant=self.quant, name="conv")(x, train)
            out = Sigmoid(self.quant, name="sigmoid")(logits)
        else:
            out = Conv(self.channels, 3, bn=False, relu=False, quant=self.quant, zero_init=True,
                       out_range=iops.CORRECTION_RANGE, phases=self.prior.phases, name="conv")(x, train)
        if isinstance(out, qn.QValue):
            self.sow("intermediates", "codes", out.codes)
        return out if self.prior is None else self.prior.head(value(out), fill)


RGB_MEAN, RGB_STD = 0.45, 0.225


def normalize_rgb(rgb: jax.Array) -> jax.Array:
    """(x - 0.45) / 0.225, inside the model as in the reference's NPU graph."""
    return (rgb - RGB_MEAN) / RGB_STD


INPUT_BOUNDS = {"rgb": ((0.0 - RGB_MEAN) / RGB_STD, (1.0 - RGB_MEAN) / RGB_STD),
                "sparse": (0.0, 1.0)}


def quantize_input(kind: str, x: jax.Array, fmt: qn.Format,
                   lidar_encoding: LidarEncoding | None = None) -> qn.QValue:
    """A model input transformed (``normalize_rgb`` / ``LidarEncoding.encode``) and
    quantized by AQT over its fixed range: the integer model's only float step."""
    if kind not in INPUT_BOUNDS:
        raise ValueError(f"unknown input kind {kind!r}; expected one of {sorted(INPUT_BOUNDS)}")
    scale, zp = qn.fixed_qparams(*INPUT_BOUNDS[kind], fmt)
    t = normalize_rgb(x) if kind == "rgb" else lidar_encoding.encode(x)
    return qn.QValue.of(aqt_backend.quantize_input(t, scale, zp, fmt), None, scale, zp, fmt, kind)


_input_codes = jax.jit(quantize_input, static_argnums=(0, 2, 3))


def input_codes(rgb: jax.Array, lidar: jax.Array | None, fmt: qn.Format,
                lidar_encoding: LidarEncoding) -> tuple[qn.QValue, qn.QValue | None]:
    """The quantized model inputs, by one compiled computation: fake-quant evaluation and
    the integer runtime both call this, so both start from the same codes on any backend."""
    sparse = None if lidar is None else _input_codes("sparse", lidar, fmt, lidar_encoding)
    return _input_codes("rgb", rgb, fmt, None), sparse


class Input(nn.Module):
    """A model input: its in-graph transform and its quantization over a fixed range.

    ``rgb``: normalised image, range [(0 - mean) / std, (1 - mean) / std].
    ``sparse``: the LiDAR depth by its ``LidarEncoding``, range [0, 1].
    In ``fake`` mode the input may arrive quantized already (``input_codes``). With
    ``grid`` the float modes too take the input on its 8-bit grid (the real values of the
    codes the integer model is fed), so FP32 and INT8 see one input.
    """

    kind: str
    lidar_encoding: LidarEncoding | None = None
    quant: Quant = FLOAT
    grid: bool = False

    @property
    def OP(self) -> str:   # noqa: N802 (the exporter reads OP on every block)
        return f"input_{self.kind}"

    def export_attrs(self) -> dict:
        return ({"mean": RGB_MEAN, "std": RGB_STD} if self.kind == "rgb"
                else self.lidar_encoding.attrs()) | {"grid": self.grid}

    @nn.compact
    def __call__(self, x: Tensor) -> Tensor:
        if not self.quant.fake:
            if self.grid:
                return quantize_input(self.kind, x, self.quant.scheme.activation, self.lidar_encoding).value
            return normalize_rgb(x) if self.kind == "rgb" else self.lidar_encoding.encode(x)
        if isinstance(x, qn.QValue):
            if x.fmt != self.quant.scheme.activation or x.name != self.kind:
                raise ValueError(f"input {self.kind!r}: got pre-quantized {x.name!r} codes in "
                                 f"{x.fmt.name}, expected {self.quant.scheme.activation.name}")
        else:
            x = quantize_input(self.kind, x, self.quant.scheme.activation, self.lidar_encoding)
        if frozen_params(self) is None:
            store_params(self, {"scale": x.scale, "zero_point": x.zero_point})
        return x


def is_block(module: Any) -> bool:
    """Whether ``module`` is one node of the integer graph (it declares its op)."""
    return hasattr(type(module), "OP")
