"""The default model on the shared ImageNet sample (skipped without it, required in CI)."""

import pytest

from workbench.core.compare import compare
from workbench.core.config import OptimizationConfig
from workbench.core.models import load_model
from workbench.core.sources import open_source

pytestmark = pytest.mark.data


@pytest.fixture(scope="module")
def lite0():
    return load_model("efficientnet_lite0")


def test_float_top1_and_int8_agreement_on_all_500(imagenet_sample, lite0, tmp_path):
    report = compare(lite0, open_source(imagenet_sample), OptimizationConfig(bits=8),
                     latency_runs=5, out_dir=tmp_path)
    assert report["images"] == 500 and report["labelled"] == 500
    assert report["original"]["top1"] >= 0.80
    assert report["optimized"]["kernels"].startswith("int8")
    assert report["optimized"]["agreement"] >= 0.90


@pytest.mark.parametrize("config", [OptimizationConfig(runtime="onnxruntime"),
                                    OptimizationConfig(bits=8, runtime="onnxruntime")], ids=["ort-fp32", "ort-int8"])
def test_onnxruntime_agrees_with_float(imagenet_sample, lite0, tmp_path, config):
    report = compare(lite0, open_source(imagenet_sample, limit=200), config, latency_runs=3, out_dir=tmp_path)
    assert report["optimized"]["kernels"].startswith("onnxruntime")
    assert report["optimized"]["agreement"] >= 0.90
