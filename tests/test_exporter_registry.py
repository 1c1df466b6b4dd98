"""The exporter registry (vitedge.exporters.registry): its entries, its one-line errors, its lazy imports."""
from __future__ import annotations

import subprocess
import sys

import pytest

from vitedge.context import Options, check_format_mode, resolve_mode
from vitedge.errors import BadInput
from vitedge.exporters.registry import converters, formats, get_exporter
from vitedge.pipeline import Artifact


def test_entries():
    assert formats() == ["onnx", "tflite"]
    assert converters("tflite") == ["litert-torch", "onnx2tf"] and converters("onnx") == []
    onnx, litert, o2t = get_exporter("onnx"), get_exporter("tflite"), get_exporter("tflite", "onnx2tf")
    assert (onnx.converter, onnx.suffix, onnx.modes, onnx.static_shapes) == (None, ".onnx", ("threshold", "capacity"), False)
    assert (litert.converter, litert.suffix, litert.modes, litert.static_shapes) == ("litert-torch", ".tflite", ("capacity",), True)
    assert (o2t.converter, o2t.suffix, o2t.modes, o2t.static_shapes, o2t.feeds) == ("onnx2tf", ".tflite", ("threshold",), False, 8)
    assert get_exporter("tflite", "litert-torch") is litert and not o2t.default
    for e in (onnx, litert, o2t):
        assert callable(e.export) and callable(e.audit) and callable(e.parity)
    onnx.require()  # ONNX needs nothing beyond vitedge's own dependencies


@pytest.mark.parametrize("fmt, conv, msg", [
    ("coreml", None, "unknown format 'coreml': use onnx or tflite"),
    ("tflite", "tf.lite", "unknown TFLite converter 'tf.lite': use litert-torch or onnx2tf"),
    ("onnx", "onnx2tf", "unknown ONNX converter 'onnx2tf': ONNX has one route, name none"),
])
def test_unknown_is_one_line(fmt, conv, msg):
    with pytest.raises(BadInput) as e:
        get_exporter(fmt, conv)
    assert str(e.value) == msg and isinstance(e.value, ValueError)


def test_modes_refused_by_entries():
    """check_format_mode reads the entries' modes and refusals (messages unchanged)."""
    with pytest.raises(ValueError, match="^threshold mode has a dynamic token count"):
        check_format_mode("tflite", "threshold", "litert-torch")
    with pytest.raises(ValueError, match="^--tflite-converter onnx2tf is for threshold mode"):
        check_format_mode(None, "capacity", "onnx2tf")
    with pytest.raises(ValueError, match="^--tflite-converter onnx2tf converts to TFLite"):
        check_format_mode("onnx", None, "onnx2tf")
    with pytest.raises(ValueError, match="^unknown TFLite converter 'x': use litert-torch or onnx2tf$"):
        check_format_mode("onnx", None, "x")
    with pytest.raises(ValueError, match="^unknown format 'pb': use onnx or tflite$"):
        resolve_mode(Options(format="pb"))
    for fmt, mode, conv in (("onnx", "threshold", "litert-torch"), ("onnx", "capacity", "litert-torch"),
                            ("tflite", "capacity", "litert-torch"), ("tflite", "threshold", "onnx2tf"), (None, None, "onnx2tf")):
        check_format_mode(fmt, mode, conv)


def test_artifact_keeps_its_interface():
    onnx, tfl = Artifact("onnx"), Artifact("tflite")
    assert (onnx.fmt, onnx.suffix, onnx.converter, onnx.conversions) == ("onnx", ".onnx", None, [])
    assert (tfl.suffix, tfl.converter) == (".tflite", "litert-torch")
    assert Artifact("tflite", "onnx2tf").exporter is get_exporter("tflite", "onnx2tf")


def test_import_is_lazy():
    """Importing the registry (and reading its entries) imports neither litert-torch, TensorFlow nor torch."""
    code = ("import sys; from vitedge.exporters.registry import get_exporter, formats; "
            "[get_exporter(f) for f in formats()]; get_exporter('tflite', 'onnx2tf'); "
            "print(sorted(m for m in ('litert_torch', 'tensorflow', 'onnx2tf', 'torch') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"


@pytest.mark.parametrize("fmt, conv, mode, apart", [("onnx", "litert-torch", "threshold", False),
                                                    ("tflite", "litert-torch", "capacity", False),
                                                    ("tflite", "onnx2tf", "threshold", True)])
def test_context_reads_the_route(fmt, conv, mode, apart):
    """The default mode is the entry's first; only onnx2tf's dynamic graphs are profiled apart (ONNX Runtime)."""
    from vitedge.context import Context

    ctx = Context(Options(format=fmt, tflite_converter=conv))
    assert (ctx.mode, ctx.profiled_apart) == (mode, apart)
    assert ctx.exporter is get_exporter(fmt, conv if fmt == "tflite" else None)


def test_onnx2tf_conversions_are_logged(monkeypatch, tmp_path):
    """Each onnx2tf conversion (checked against its ONNX file on the feeds) lands in Artifact.conversions."""
    from types import SimpleNamespace

    from vitedge.exporters import graphs, onnx2tf

    seen = {}

    def fake_export(model, path, *, opset=None):
        seen["opset"] = opset

    def fake_convert(onnx_path, out_path, *, feeds=None):
        seen["feeds"] = feeds
        return SimpleNamespace(convert_seconds=1.5, parity={"max_abs_diff": 0.0})

    monkeypatch.setattr(graphs, "export_pruned", fake_export)
    monkeypatch.setattr(onnx2tf, "export_tflite_onnx2tf", fake_convert)
    art = Artifact("tflite", "onnx2tf", feeds=["x"])
    art.export(None, tmp_path / "round0.tflite")
    assert seen == {"opset": onnx2tf.ONNX2TF_OPSET, "feeds": ["x"]}
    assert art.conversions == [{"file": "round0.tflite", "convert_seconds": 1.5, "parity_vs_onnx": {"max_abs_diff": 0.0}}]
