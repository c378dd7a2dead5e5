"""The default model on the shared ImageNet sample (skipped without it, required in CI)."""

import pytest

from workbench.core.compare import compare
from workbench.core.config import MeasureSettings, OptimizationConfig
from workbench.core.models import load_model
from workbench.core.sources import open_source

pytestmark = pytest.mark.data


@pytest.fixture(scope="module")
def lite0():
    return load_model("efficientnet_lite0")


def test_float_top1_and_int8_agreement_on_all_500(imagenet_sample, lite0, tmp_path):
    report = compare(lite0, open_source(imagenet_sample), OptimizationConfig(bits=8),
                     MeasureSettings(latency_runs=5), out_dir=tmp_path)
    assert report["images"] == 500 and report["labelled"] == 500
    assert report["original"]["top1"] >= 0.80
    assert report["optimized"]["kernels"].startswith("int8")
    # int8 agreement depends on the host's fbgemm path: 0.966 on the previous round's EPYC, 0.86 on
    # this round's (AVX2 without VNNI; docs/benchmarks.md); below 0.85 something broke
    assert report["optimized"]["agreement"] >= 0.85


# int8: scored on the 72 photos after the 128 that calibrate, ONNX Runtime's int8 agreed on 0.889 on
# the AVX2-without-VNNI EPYC (as torch's int8 above); float must agree nearly everywhere
@pytest.mark.parametrize("config,floor", [(OptimizationConfig(runtime="onnxruntime"), 0.95),
                                          (OptimizationConfig(bits=8, runtime="onnxruntime"), 0.85)],
                         ids=["ort-fp32", "ort-int8"])
def test_onnxruntime_agrees_with_float(imagenet_sample, lite0, tmp_path, config, floor):
    report = compare(lite0, open_source(imagenet_sample, limit=200), config, MeasureSettings(latency_runs=3), out_dir=tmp_path)
    assert report["optimized"]["kernels"].startswith("onnxruntime")
    assert report["scored"]["images"] == 72
    assert report["optimized"]["agreement"] >= floor


def test_smart_allocation_beats_uniform_at_the_same_target(imagenet_sample, lite0, tmp_path):
    def top1(config):
        report = compare(lite0, open_source(imagenet_sample, limit=150), config, MeasureSettings(latency_runs=2), out_dir=tmp_path)
        return report["optimized"]["top1"]

    bits = OptimizationConfig(bits=4, quant_scheme="weights")
    assert top1(bits) > top1(bits.with_(allocation="uniform")) + 0.02
    sparse = OptimizationConfig(sparsity=0.5)  # uniform: the same sparsity in every layer
    assert top1(sparse) > top1(sparse.with_(prune_method="unstructured")) + 0.10
