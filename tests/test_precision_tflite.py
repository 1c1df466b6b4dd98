"""Full-integer int8 TFLite files (int8 inputs and outputs): the device runner feeds them float32 inputs quantized with
the input's own scale and zero point, and returns dequantized outputs; the profiler times their parts."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import make_tiny_vit, require_tflite_extra
from vitedge.devices import MeasureConfig, get_device
from vitedge.devices.runner import litert_signature_inputs, measure_feeds, open_session
from vitedge.models.adapter import PrunableViT

FAST = MeasureConfig(warmup=1, min_runs=3, min_time_s=0.0)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    require_tflite_extra()
    from vitedge.exporters.registry import get_exporter
    from vitedge.exporters.tflite_quantize import quantize_tflite

    work = tmp_path_factory.mktemp("fullint")
    model = PrunableViT(make_tiny_vit())
    fp32, q = work / "m.tflite", work / "m_int8.tflite"
    get_exporter("tflite").export(model, fp32, pruned=False)
    rng = np.random.default_rng(0)
    feeds = [{"image": rng.standard_normal((1, 3, 32, 32)).astype(np.float32)} for _ in range(16)]
    quantize_tflite(fp32, q, feeds, precision="int8", method="static")
    return fp32, q, feeds


def test_the_full_integer_file_takes_int8_and_the_runner_lists_its_scale(files):
    from ai_edge_litert.interpreter import Interpreter

    _, q, _ = files
    (spec,) = next(iter(litert_signature_inputs(Interpreter(model_path=str(q))).values()))
    assert spec["dtype"] == "int8" and spec["quantization"][0] > 0 and -128 <= spec["quantization"][1] <= 127


def test_runner_quantizes_float_feeds_and_dequantizes_outputs(files):
    from vitedge.exporters.tflite_quantize import tflite_runner

    fp32, q, feeds = files
    s, ref = open_session("litert", str(q), 1), open_session("litert", str(fp32), 1)
    for f in feeds[:4]:
        (out,), (want,) = s.run(dict(f)), ref.run(dict(f))
        assert out.dtype == np.float32
        np.testing.assert_array_equal(out, tflite_runner(q)(f["image"])[0])  # the parity check's own quantization
        assert np.corrcoef(out.ravel(), want.ravel())[0, 1] > 0.9            # an int8 approximation of the float file
    m = measure_feeds(s, feeds[:2], FAST)
    assert m.error_code == 0 and len(m.samples_ms) >= FAST.min_runs


@pytest.mark.slow
def test_profile_at_full_integer_int8_in_litert(tmp_path):
    require_tflite_extra()
    from vitedge.profiling import profile

    model = PrunableViT(make_tiny_vit())
    dev = get_device("local", runtime="litert", threads=1, config=FAST)
    table = profile(model, dev, progress=False, workdir=tmp_path, precision="int8", quantization="static", tokens_step=8)
    assert table.meta["precision"] == "int8" and table.meta["quantization"] == "static"
    assert table.in_graph["tokens"] and float(table.predict_ms([8] * model.depth, mode="capacity")) > 0
