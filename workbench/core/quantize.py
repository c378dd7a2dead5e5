"""Quantization: real int8 kernels (torch FX, x86/fbgemm) and simulated low bit widths."""

from __future__ import annotations

import copy
from collections.abc import Generator, Iterable, Iterator, Sequence

import torch
from torch import nn

from .locks import tracing

QUANT_LAYERS = (nn.Conv2d, nn.Linear)


def int8_engine() -> str:
    engines = torch.backends.quantized.supported_engines
    return "x86" if "x86" in engines else ("fbgemm" if "fbgemm" in engines else "qnnpack")


# what holds the int8 kernels to instructions without VNNI, whose sums saturate (int16 pairs) as on a
# CPU without it: fbgemm's (linear layers) and oneDNN's (convolutions) own settings
ISA_WITHOUT_VNNI = {"FBGEMM_ENABLE_INSTRUCTIONS": ("AVX2", "AVX512", "AVX512_256"),
                    "ONEDNN_MAX_CPU_ISA": ("SSE41", "AVX", "AVX2", "AVX512_CORE")}


def int8_overflows() -> bool:
    """True on x86 CPUs without VNNI: there fbgemm, oneDNN and ONNX Runtime add each pair of uint8 x int8
    products in 16 bits, which full-range weights overflow (2 x 255 x 127 > 32767); VNNI adds in 32
    bits. Weights in 7 bits (|w| <= 63) cannot overflow: 2 x 255 x 63 = 32130. On Lite0 that costs
    0.8 points against 8-bit weights on a VNNI CPU; torch's own remedy, 7-bit activations, costs 4.1
    (docs/benchmarks.md, session 33). Also True where ``FBGEMM_ENABLE_INSTRUCTIONS`` or
    ``ONEDNN_MAX_CPU_ISA`` hold the kernels to instructions without VNNI on a CPU that has it
    (:data:`ISA_WITHOUT_VNNI`): their sums saturate the same way."""
    import os
    import platform

    if platform.machine().lower() not in ("x86_64", "amd64") or int8_engine() not in ("x86", "fbgemm"):
        return False
    if any(os.environ.get(name, "").strip().upper() in values for name, values in ISA_WITHOUT_VNNI.items()):
        return True
    try:
        return not torch.cpu._is_vnni_supported()
    except AttributeError:  # a torch without the check: as before
        return False


NARROW_WEIGHTS = 63  # the weight range on CPUs where int8 sums overflow: 7 bits, symmetric


def _activation_observer(kind: str, relu6: bool = False):
    """The activation observer: "histogram" (L2-optimal range) or "minmax".

    With ``relu6`` the range is clipped to [0, 6], so a conv whose ReLU6 we fuse as
    ReLU saturates exactly at 6.0: ``ConvReLU2d`` then computes ReLU6 in one kernel.
    """
    from torch.ao.quantization.observer import HistogramObserver, MinMaxObserver

    base = HistogramObserver if kind == "histogram" else MinMaxObserver
    if not relu6:
        return base.with_args(reduce_range=False)

    class ReLU6Observer(base):
        def forward(self, x):
            # the observed layer now ends in ReLU: clamp here so calibration downstream sees ReLU6
            return super().forward(x).clamp(0.0, 6.0)

        @torch.jit.export
        def calculate_qparams(self):
            if base is HistogramObserver and self.histogram.sum().item() > 0:
                lo, hi = self._non_linear_param_search()
            else:
                lo, hi = self.min_val, self.max_val
            return self._calculate_qparams(lo.clamp(min=0.0), hi.clamp(max=6.0))

    return ReLU6Observer.with_args(reduce_range=False)


def _backend_config():
    """x86 patterns, plus ZeroPad2d (TF 'same' padding) run on int8 tensors directly."""
    from torch.ao.quantization.backend_config import (
        BackendPatternConfig,
        DTypeConfig,
        ObservationType,
        get_native_backend_config,
    )

    config = get_native_backend_config()
    pad = (BackendPatternConfig(nn.ZeroPad2d)
           .set_observation_type(ObservationType.OUTPUT_SHARE_OBSERVER_WITH_INPUT)
           .add_dtype_config(DTypeConfig(input_dtype=torch.quint8, output_dtype=torch.quint8)))
    return config.set_backend_pattern_config(pad)


def _slow_int8_layers(model: nn.Module) -> list[str]:
    """Blocks holding a depthwise conv that fbgemm runs ~50x slower in int8 than in float
    (5x5, stride 2, padding other than 2: TF 'same' padding on even inputs); they stay float."""
    names = []
    for name, m in model.named_modules():
        if (isinstance(m, nn.Conv2d) and m.groups > 1 and m.groups == m.in_channels
                and m.kernel_size == (5, 5) and m.stride == (2, 2) and m.padding != (2, 2)):
            names.append(name.rsplit(".", 1)[0] if "." in name else name)
    return names


def _swap_relu6_(model: nn.Module, keep: set[str]) -> list[str]:
    """Replace ReLU6 modules by ReLU in place, except in modules named in ``keep``
    (they stay float); returns the names of the swapped modules."""
    names = []
    for name, module in list(model.named_modules()):
        if name in keep:
            continue
        for child_name, child in module.named_children():
            if type(child) is nn.ReLU6:
                setattr(module, child_name, nn.ReLU())
                names.append(f"{name}.{child_name}" if name else child_name)
    return names


def _keep_relu6_clamp_on_outputs_only_(prepared: torch.fx.GraphModule, kind: str) -> None:
    """A ReLU6 qconfig also observes the conv's *input*; there it must not clamp.
    Give every ReLU6 observer that does not follow a fused conv+ReLU a plain one."""
    from torch.ao.nn.intrinsic import ConvReLU2d

    modules = dict(prepared.named_modules())
    for node in prepared.graph.nodes:
        obs = modules.get(node.target) if node.op == "call_module" else None
        if obs is None or type(obs).__name__ != "ReLU6Observer":
            continue
        src = node.args[0]
        if not (getattr(src, "op", None) == "call_module" and isinstance(modules.get(src.target), ConvReLU2d)):
            setattr(prepared, node.target, _activation_observer(kind)())


def _feeding_conv(modules: dict[str, nn.Module], act_name: str) -> list[str]:
    """Names of the Conv2d (and BatchNorm2d) just before ``act_name`` among its siblings
    (ConvBNAct, torchvision's Conv2dNormActivation, a Sequential): they fuse with it."""
    parent, _, child = act_name.rpartition(".")
    siblings = list(modules[parent].named_children())
    i = [n for n, _ in siblings].index(child)
    names = []
    for n, m in reversed(siblings[:i]):
        if not isinstance(m, (nn.Conv2d, nn.BatchNorm2d)):
            break
        names.append(f"{parent}.{n}" if parent else n)
        if isinstance(m, nn.Conv2d):
            break
    return names


def _prepare_int8(model: nn.Module, calibration: list[torch.Tensor], per_channel: bool, exclude: Iterable[str],
                  observer: str, weight_bits: dict[str, int] | None = None, weight_qmax: int | None = None
                  ) -> Generator[str, None, tuple[torch.fx.GraphModule, object]]:
    """Copy, prepare (FX observers) and calibrate ``model`` for 8-bit activations; yields
    progress and returns (prepared model, backend config). ``weight_qmax``: the int8 weights'
    range is [-weight_qmax, weight_qmax] (:data:`NARROW_WEIGHTS`). ``weight_bits``: weights observed at
    these widths instead of 8 (simulation of already-rounded low-bit weights)."""
    from torch.ao.quantization import QConfig, get_default_qconfig_mapping
    from torch.ao.quantization.observer import (
        MinMaxObserver,
        PerChannelMinMaxObserver,
        default_per_channel_weight_observer,
        default_weight_observer,
    )
    from torch.ao.quantization.quantize_fx import prepare_fx

    engine = int8_engine()
    torch.backends.quantized.engine = engine
    if not calibration:
        raise ValueError("int8 calibration needs at least one image")
    work = copy.deepcopy(model)
    exclude = set(exclude)
    relu6_names = _swap_relu6_(work, exclude)
    work.eval()
    weight_obs = default_per_channel_weight_observer if per_channel else default_weight_observer
    if weight_qmax is not None:
        weight_obs = (PerChannelMinMaxObserver if per_channel else MinMaxObserver).with_args(
            dtype=torch.qint8, qscheme=torch.per_channel_symmetric if per_channel else torch.per_tensor_symmetric,
            quant_min=-weight_qmax, quant_max=weight_qmax)
    qconfig = QConfig(activation=_activation_observer(observer), weight=weight_obs)
    mapping = get_default_qconfig_mapping(engine).set_global(qconfig)
    relu6 = QConfig(activation=_activation_observer(observer, relu6=True), weight=weight_obs)
    modules = dict(work.named_modules())
    feeders = {}
    for name in relu6_names:
        mapping.set_module_name(name, relu6)
        for feeder in _feeding_conv(modules, name):
            mapping.set_module_name(feeder, relu6)
            feeders[feeder] = True
    for name, b in (weight_bits or {}).items():
        if b < 8 and name not in exclude:
            qmax = 2 ** (b - 1) - 1
            low = PerChannelMinMaxObserver.with_args(dtype=torch.qint8, qscheme=torch.per_channel_symmetric,
                                                     quant_min=-qmax, quant_max=qmax)
            act = _activation_observer(observer, relu6=name in feeders)
            mapping.set_module_name(name, QConfig(activation=act, weight=low))
    for name in exclude:
        mapping.set_module_name(name, None)
    backend = _backend_config()
    # torch.ao's FX quantization is deprecated in torch 2.14 (its warning is left visible);
    # the migration path is PT2E (torch.export + torchao's X86InductorQuantizer)
    with tracing():
        prepared = prepare_fx(work, mapping, (calibration[0],), backend_config=backend)
    _keep_relu6_clamp_on_outputs_only_(prepared, observer)
    with torch.no_grad():
        for i, x in enumerate(calibration):
            prepared(x)
            yield f"calibrating 8-bit activations: {i + 1}/{len(calibration)} images"
    return prepared, backend


def quantize_int8(model: nn.Module, calibration: Iterable[torch.Tensor], per_channel: bool = True,
                  exclude: Iterable[str] = (), observer: str = "histogram") -> Iterator[str | nn.Module]:
    """Post-training static int8 quantization on real kernels.

    A generator: yields progress strings while calibrating, and the converted
    model last (:func:`float_layers` lists what stays float).  ``model`` is copied,
    never changed.
    """
    from torch.ao.quantization.quantize_fx import convert_fx

    exclude = set(exclude) | set(_slow_int8_layers(model))
    narrow = NARROW_WEIGHTS if int8_overflows() else None
    prepared, backend = yield from _prepare_int8(model, list(calibration), per_channel, exclude, observer,
                                                 weight_qmax=narrow)
    yield "converting to int8 kernels"
    yield convert_fx(prepared, backend_config=backend)


def simulate_act8(model: nn.Module, weight_bits: dict[str, int], calibration: Iterable[torch.Tensor],
                  per_channel: bool = True, exclude: Iterable[str] = ()) -> Iterator[str | nn.Module]:
    """Weights already rounded to ``weight_bits`` (below 8) with 8-bit activations, simulated:
    the int8 path's observers and patterns (histogram ranges, ReLU6 clamps, conv+BN folded),
    converted to torch.ao's *reference* model, which quantizes and dequantizes every
    activation and weight around float kernels. A generator like :func:`quantize_int8`."""
    from torch.ao.quantization.quantize_fx import convert_to_reference_fx

    prepared, backend = yield from _prepare_int8(model, list(calibration), per_channel, exclude, "histogram",
                                                 weight_bits)
    yield "converting to a simulated 8-bit activation model"
    yield convert_to_reference_fx(prepared, backend_config=backend)


def float_layers(model: nn.Module) -> list[str]:
    """Names of the layers of a converted FX model that still run in float."""
    out = []
    for name, module in model.named_modules():
        if type(module) in QUANT_LAYERS:
            out.append(name)
    return out


def fake_quantize_weight(w: torch.Tensor, bits: int, per_channel: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric round-to-nearest: integer codes and scales (one per output channel)."""
    qmax = 2 ** (bits - 1) - 1
    if per_channel:
        absmax = w.detach().abs().reshape(w.shape[0], -1).amax(1)
        scale = (absmax / qmax).clamp(min=1e-12).reshape(-1, *([1] * (w.dim() - 1)))
    else:
        scale = (w.detach().abs().max() / qmax).clamp(min=1e-12).reshape(1)
    codes = torch.clamp(torch.round(w / scale), -qmax, qmax)  # symmetric, as TFLite
    return codes, scale


def simulate_weight_quant_(model: nn.Module, layer_bits: dict[str, int], per_channel: bool = True,
                           rounding: str = "nearest") -> None:
    """Round the weights of the layers in ``layer_bits`` to their bit width, in place
    (quantize-dequantize; the layers still run float kernels). ``rounding="mse"`` picks
    each channel's clipping range to minimise the rounding error (see recover.mse_clip_scale)."""
    from .recover import mse_clip_scale

    modules = dict(model.named_modules())
    with torch.no_grad():
        for name, bits in layer_bits.items():
            w = modules[name].weight
            if bits >= 16:
                w.copy_(w.half().float() if bits == 16 else w)
                continue
            if rounding == "mse" and per_channel and bits < 8:
                scale = mse_clip_scale(w, bits)
                qmax = 2 ** (bits - 1) - 1
                w.copy_(torch.clamp(torch.round(w / scale), -qmax, qmax) * scale)
            else:
                codes, scale = fake_quantize_weight(w, bits, per_channel)
                w.copy_(codes * scale)


def simulate_activation_quant(model: nn.Module, bits: int, calibration: list[torch.Tensor],
                              per_channel: bool = True, weight_bits: int | dict[str, int] | None = None,
                              exclude: Sequence[str] = ()) -> Iterator[str | nn.Module]:
    """Activations at ``bits`` (<= 8), weights at ``weight_bits`` (one width, or {layer name:
    bits} for mixed precision; default: ``bits``), simulated with FX fake-quant modules;
    ``exclude``: layers left float. The weights should already be rounded to their widths
    (:func:`simulate_weight_quant_`): the weight fake-quant then leaves them where they are.

    A generator like :func:`quantize_int8`; the model it yields runs float kernels."""
    from torch.ao.quantization import FakeQuantize, QConfig, QConfigMapping
    from torch.ao.quantization.observer import MinMaxObserver, PerChannelMinMaxObserver
    from torch.ao.quantization.quantize_fx import prepare_fx

    def weight(b: int):
        qmax = 2 ** (b - 1) - 1
        # quant_min = -qmax (symmetric, as TFLite): weights already rounded by
        # simulate_weight_quant_ stay exactly where they are
        if per_channel:
            return FakeQuantize.with_args(observer=PerChannelMinMaxObserver, quant_min=-qmax, quant_max=qmax,
                                          dtype=torch.qint8, qscheme=torch.per_channel_symmetric)
        return FakeQuantize.with_args(observer=MinMaxObserver, quant_min=-qmax, quant_max=qmax,
                                      dtype=torch.qint8, qscheme=torch.per_tensor_symmetric)

    act = FakeQuantize.with_args(observer=MinMaxObserver, quant_min=0, quant_max=2 ** bits - 1,
                                 dtype=torch.quint8, qscheme=torch.per_tensor_affine)
    per_layer = weight_bits if isinstance(weight_bits, dict) else {}
    mapping = QConfigMapping().set_global(QConfig(activation=act, weight=weight(
        weight_bits if isinstance(weight_bits, int) else bits)))
    for name, b in per_layer.items():
        mapping.set_module_name(name, QConfig(activation=act, weight=weight(min(b, 8))))
    for name in exclude:
        mapping.set_module_name(name, None)
    with tracing():
        prepared = prepare_fx(copy.deepcopy(model).eval(), mapping, (calibration[0],))
    prepared.apply(torch.ao.quantization.disable_fake_quant)
    with torch.no_grad():
        for i, x in enumerate(calibration):
            prepared(x)
            yield f"calibrating {bits}-bit activations: {i + 1}/{len(calibration)} images"
    prepared.apply(torch.ao.quantization.disable_observer)
    prepared.apply(torch.ao.quantization.enable_fake_quant)
    for module in prepared.modules():  # the qconfigs only serve a conversion, which never comes, and
        module.__dict__.pop("qconfig", None)  # hold local functions: without them the model pickles
    prepared.meta.pop("_observed_graph_module_attrs", None)
    yield prepared.eval()
