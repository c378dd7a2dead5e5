"""The controls that say what to optimize: they map to and from an OptimizationConfig.

Labels, choices and tooltips come from the method registry (``core.methods``); the scheme
combo's first entry is the shared default (``methods.default_scheme``) and says what it
resolves to at the current bit width."""

from __future__ import annotations

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import QComboBox, QGridLayout, QGroupBox, QHBoxLayout, QLabel, QSlider, QWidget

from ..core import methods
from ..core.config import BIT_STOPS, OptimizationConfig

AUTO = "default"
ACT8 = "act8"  # weights below 8 bits, activations at 8 (W4A8)


def _combo(name: str, accessible: str, table: dict[str, methods.Method]) -> QComboBox:
    combo = QComboBox(objectName=name)
    combo.setAccessibleName(accessible)
    for i, m in enumerate(table.values()):
        combo.addItem(m.label, m.key)
        combo.setItemData(i, m.help, Qt.ItemDataRole.ToolTipRole)
    return combo


class ConfigPanel(QWidget):
    changed = Signal(object)  # OptimizationConfig, on every change of a control
    invalid = Signal(str)  # the controls ask for something impossible (why)

    def __init__(self, parent=None):
        super().__init__(parent)
        self.layer_overrides: tuple[tuple[str, ...], tuple[tuple[str, int], ...]] = ((), ())
        row = QHBoxLayout(self)
        row.setContentsMargins(0, 0, 0, 0)
        prune = QGroupBox("Pruning")
        pl = QGridLayout(prune)
        self.sparsity_slider = QSlider(Qt.Orientation.Horizontal, objectName="sparsitySlider")
        self.sparsity_slider.setAccessibleName("Sparsity in percent")
        self.sparsity_slider.setRange(0, 95)
        self.sparsity_slider.setToolTip("Share of weights (or channels) removed: smaller files, and faster only "
                                        "when whole channels go; costs accuracy")
        self.sparsity_label = QLabel("0 %")
        self.prune_method = _combo("pruneMethodCombo", "Pruning method", methods.PRUNE_METHODS)
        self.prune_method.setToolTip("How weights are chosen and repaired: unstructured keeps more accuracy but "
                                     "only shrinks the file; structured removes channels, which is faster")
        pl.addWidget(QLabel("sparsity"), 0, 0)
        pl.addWidget(self.sparsity_slider, 0, 1)
        pl.addWidget(self.sparsity_label, 0, 2)
        pl.addWidget(self.prune_method, 1, 0, 1, 3)

        quant = QGroupBox("Quantization")
        ql = QGridLayout(quant)
        self.bits_slider = QSlider(Qt.Orientation.Horizontal, objectName="bitsSlider")
        self.bits_slider.setAccessibleName("Bit width")
        self.bits_slider.setRange(0, len(BIT_STOPS) - 1)
        self.bits_slider.setValue(len(BIT_STOPS) - 1)
        self.bits_slider.setPageStep(1)
        self.bits_slider.setToolTip("Bits per weight: fewer bits make a smaller file; 8-bit weights + activations "
                                    "run on real int8 kernels, other widths are simulated")
        self.bits_label = QLabel("32 bits (off)")
        self.quant_scheme = _combo("quantSchemeCombo", "Quantization scheme", methods.QUANT_SCHEMES)
        self.quant_scheme.insertItem(0, "", AUTO)
        self.quant_scheme.addItem("weights + 8-bit activations", ACT8)
        self.quant_scheme.setCurrentIndex(0)
        self.quant_scheme.setToolTip("Weights only shrink the file; weights + activations at 8 bits also run on "
                                     "faster int8 kernels, and cost a little more accuracy; 4-bit weights with "
                                     "8-bit activations (W4A8) are simulated")
        self.runtime = _combo("runtimeCombo", "Runtime of the optimized model", methods.RUNTIMES)
        self.runtime.setToolTip("What runs the optimized model: PyTorch, or ONNX Runtime as it would be deployed "
                                "(often faster; exporting takes a few seconds)")
        self.device = QComboBox(objectName="deviceCombo")
        self.device.setAccessibleName("Device of the optimized model")
        self.device.addItem("CPU", "cpu")
        self.device.setToolTip("Where the optimized model runs: a GPU is faster for float and 16-bit models; "
                               "int8 kernels run on the CPU")
        self.device.setVisible(False)
        ql.addWidget(QLabel("bits"), 0, 0)
        ql.addWidget(self.bits_slider, 0, 1)
        ql.addWidget(self.bits_label, 0, 2)
        ql.addWidget(self.quant_scheme, 1, 0, 1, 2)
        ql.addWidget(self.runtime, 1, 2)
        ql.addWidget(self.device, 2, 0, 1, 3)
        for w in (prune, quant):
            w.setMinimumWidth(260)
            row.addWidget(w, 1)
        for s in (self.sparsity_slider, self.bits_slider):
            s.valueChanged.connect(self._on_changed)
        for c in (self.prune_method, self.quant_scheme, self.runtime, self.device):
            c.currentIndexChanged.connect(self._on_changed)
        self._update_labels()

    def add_gpu(self, name: str) -> None:
        """Offer a CUDA device (float and 16-bit models can run on it)."""
        if self.device.findData("cuda") < 0:
            self.device.addItem(f"GPU: {name}", "cuda")
            self.device.setVisible(True)

    @property
    def bits(self) -> int:
        return BIT_STOPS[self.bits_slider.value()]

    def config(self) -> OptimizationConfig:
        """The configuration the controls show (raises ConfigError for an impossible mix)."""
        scheme = self.quant_scheme.currentData()
        excluded, layer_bits = self.layer_overrides
        return OptimizationConfig(sparsity=self.sparsity_slider.value() / 100,
                                  prune_method=self.prune_method.currentData(), bits=self.bits,
                                  quant_scheme=None if scheme in (AUTO, ACT8) else scheme,
                                  act_bits=8 if scheme == ACT8 else None,
                                  runtime=self.runtime.currentData(), device=self.device.currentData(),
                                  exclude=excluded, layer_bits=layer_bits)

    def set_config(self, config: OptimizationConfig) -> None:
        """Move the controls to ``config`` (one ``changed`` signal at the end)."""
        widgets = (self.sparsity_slider, self.prune_method, self.bits_slider, self.quant_scheme, self.runtime,
                   self.device)
        for w in widgets:
            w.blockSignals(True)
        self.sparsity_slider.setValue(round(config.sparsity * 100))
        self.prune_method.setCurrentIndex(self.prune_method.findData(config.prune_method))
        self.bits_slider.setValue(BIT_STOPS.index(config.bits))
        default = OptimizationConfig(bits=config.bits).quant_scheme
        self.quant_scheme.setCurrentIndex(self.quant_scheme.findData(ACT8) if config.act_bits == 8
                                          else 0 if config.quant_scheme == default
                                          else self.quant_scheme.findData(config.quant_scheme))
        self.runtime.setCurrentIndex(self.runtime.findData(config.runtime))
        self.device.setCurrentIndex(max(0, self.device.findData(config.device)))
        self.layer_overrides = (tuple(config.exclude), tuple(config.layer_bits))
        for w in widgets:
            w.blockSignals(False)
        self._on_changed()

    def set_layer_overrides(self, excluded, layer_bits) -> None:
        self.layer_overrides = (tuple(sorted(excluded)), tuple(sorted(layer_bits.items())))
        self._on_changed()

    def _update_labels(self) -> None:
        self.sparsity_label.setText(f"{self.sparsity_slider.value()} %")
        bits = self.bits
        self.bits_label.setText("32 bits (off)" if bits == 32 else f"{bits} bits")
        resolved = methods.QUANT_SCHEMES[methods.default_scheme(bits)].label
        self.quant_scheme.setItemText(0, f"default: {resolved}")

    def _on_changed(self, *_) -> None:
        self._update_labels()
        try:
            config = self.config()
        except ValueError as exc:  # e.g. 4-bit activations asked of ONNX Runtime
            self.invalid.emit(str(exc))
            return
        self.changed.emit(config)
