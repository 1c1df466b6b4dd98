"""The onnx2tf route for threshold mode in TFLite (vitedge.exporters.onnx2tf).

CI (no onnx2tf): the missing-executable errors, the Slice clamp, and the checks around the CLI call,
driven by a fake ``onnx2tf`` script (a failing one; one that writes another model's .tflite, which
the parity check must reject, leaving no file). With onnx2tf available (``$VITEDGE_ONNX2TF`` or
``onnx2tf`` on PATH, e.g. ``VITEDGE_ONNX2TF=/work/venv-onnx2tf/bin/onnx2tf``): a real conversion
of a tiny threshold-mode ViT, checked for parity (ONNX and PyTorch), ops and signature.
"""
from __future__ import annotations

import os
import shutil
import stat
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from conftest import make_tiny_vit
from vitedge.exporters import onnx2tf as o2t
from vitedge.exporters.graphs import export_pruned
from vitedge.exporters.onnx import ExportError
from vitedge.exporters.onnx2tf import (ONNX2TF_OPSET, ConversionParityError, Onnx2tfUnavailableError,
                                       export_tflite_onnx2tf, find_onnx2tf, prepare_onnx)
from vitedge.exporters.tflite import TFLiteUnavailableError
from vitedge.exporters.validation import ParityError
from vitedge.models.adapter import PrunableViT

THETA = 0.0589  # the tiny ViT's CLS scores at block 2 lie in 0.057-0.061: 6-10 of 16 patches kept


def _onnx2tf_available() -> bool:
    try:
        find_onnx2tf()
    except Onnx2tfUnavailableError:
        return False
    return True


# ------------------------------------------------------------------------------ finding the executable
def test_missing_onnx2tf_names_the_extra(monkeypatch, tmp_path):
    monkeypatch.delenv(o2t.ENV_VAR, raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(Onnx2tfUnavailableError) as err:
        find_onnx2tf()
    msg = str(err.value)
    assert "pip install 'vitedge[onnx2tf]'" in msg and o2t.ENV_VAR in msg and "\n" not in msg
    assert isinstance(err.value, TFLiteUnavailableError) and isinstance(err.value, ExportError)
    with pytest.raises(Onnx2tfUnavailableError):          # checked before anything is written
        export_tflite_onnx2tf(tmp_path / "in.onnx", tmp_path / "out.tflite")
    assert sorted(os.listdir(tmp_path)) == []


def test_env_var_must_name_an_executable(monkeypatch, tmp_path):
    monkeypatch.setenv(o2t.ENV_VAR, str(tmp_path / "nope"))
    with pytest.raises(Onnx2tfUnavailableError, match=f"{o2t.ENV_VAR}=.*nope is not an executable file"):
        find_onnx2tf()
    exe = _script(tmp_path / "onnx2tf", "raise SystemExit(0)")
    monkeypatch.setenv(o2t.ENV_VAR, str(exe))
    assert find_onnx2tf() == str(exe)


# ------------------------------------------------------------------------------ the ONNX file given to onnx2tf
@pytest.fixture(scope="module")
def threshold_onnx(tmp_path_factory):
    pm = PrunableViT(make_tiny_vit())
    pm.set_thresholds([None, THETA])
    path = tmp_path_factory.mktemp("onnx2tf") / "threshold.onnx"
    export_pruned(pm, path, opset=ONNX2TF_OPSET)
    return pm, path


def _slice_bounds(path):
    m = onnx.load(str(path))
    consts = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
    consts.update({n.output[0]: numpy_helper.to_array(n.attribute[0].t) for n in m.graph.node if n.op_type == "Constant"})
    return [np.concatenate([consts[n.input[1]], consts[n.input[2]]]) for n in m.graph.node if n.op_type == "Slice"]


def test_prepare_onnx_clamps_slice_ends_into_int32(threshold_onnx, tmp_path):
    _, path = threshold_onnx
    assert any((b > 2**31 - 1).any() for b in _slice_bounds(path))       # x[:, 1:] -> end = INT64_MAX
    assert prepare_onnx(path, tmp_path / "clamped.onnx") >= 1
    assert all((b <= 2**31 - 1).all() and (b >= -(2**31)).all() for b in _slice_bounds(tmp_path / "clamped.onnx"))
    onnx.checker.check_model(onnx.load(str(tmp_path / "clamped.onnx")), full_check=True)
    import onnxruntime as ort

    x = np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)
    a = ort.InferenceSession(str(path)).run(None, {"image": x})
    b = ort.InferenceSession(str(tmp_path / "clamped.onnx")).run(None, {"image": x})
    assert all(np.array_equal(u, v) for u, v in zip(a, b))             # the same model


# ------------------------------------------------------------------------------ around the CLI call (fake onnx2tf)
def _script(path: Path, body: str) -> Path:
    """An executable Python script (run by subprocess with an argument list)."""
    path.write_text(f"#!{sys.executable}\nimport os, shutil, sys\n{body}\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


FAKE_WRITES = """
args = sys.argv[1:]
out = args[args.index("-o") + 1]
os.makedirs(out, exist_ok=True)
shutil.copyfile(os.environ["FAKE_TFLITE"], os.path.join(out, "model_float32.tflite"))
shutil.copyfile(os.environ["FAKE_TFLITE"], os.path.join(out, "model_float16.tflite"))
"""


def test_failing_onnx2tf_is_one_line_and_leaves_nothing(threshold_onnx, tmp_path):
    exe = _script(tmp_path / "onnx2tf", "print('INFO: converting'); print('ERROR: The trace log is below.', file=sys.stderr); "
                                        "sys.exit(1)")
    out = tmp_path / "out" / "model.tflite"
    with pytest.raises(ExportError) as err:
        export_tflite_onnx2tf(threshold_onnx[1], out, exe=str(exe))
    msg = str(err.value)
    assert "onnx2tf failed on model.onnx (exit 1)" in msg and "The trace log is below" in msg and "\n" not in msg
    assert os.listdir(out.parent) == []


def test_onnx2tf_writing_no_float32_file(threshold_onnx, tmp_path):
    exe = _script(tmp_path / "onnx2tf", "pass")
    with pytest.raises(ExportError, match="wrote 0 float32 .tflite files"):
        export_tflite_onnx2tf(threshold_onnx[1], tmp_path / "model.tflite", exe=str(exe))
    assert not (tmp_path / "model.tflite").exists()


@pytest.fixture(scope="module")
def linear_pair(tmp_path_factory):
    """An ONNX linear model and the litert-torch .tflite of *another* linear model with the same I/O."""
    pytest.importorskip("litert_torch")
    pytest.importorskip("ai_edge_litert")
    from vitedge.exporters.onnx import export_onnx
    from vitedge.exporters.tflite import export_tflite

    root = tmp_path_factory.mktemp("linear")
    torch.manual_seed(0)
    a, b = torch.nn.Linear(12, 4).eval(), torch.nn.Linear(12, 4).eval()
    export_onnx(a, (torch.zeros(1, 12),), root / "a.onnx", input_names=["args_0"], output_names=["output_0"])
    export_tflite(a, (torch.zeros(1, 12),), root / "a.tflite")
    export_tflite(b, (torch.zeros(1, 12),), root / "b.tflite")
    return root


def test_right_conversion_is_kept(linear_pair, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_TFLITE", str(linear_pair / "a.tflite"))
    exe = _script(tmp_path / "onnx2tf", FAKE_WRITES)
    res = export_tflite_onnx2tf(linear_pair / "a.onnx", tmp_path / "out" / "m.tflite", exe=str(exe))
    assert os.listdir(tmp_path / "out") == ["m.tflite"]
    assert res.parity["max_abs_diff"] < 1e-5 and res.parity["inputs"] == 8 and res.op_types == {"FULLY_CONNECTED": 1}


def test_wrong_conversion_is_rejected_and_not_kept(linear_pair, tmp_path, monkeypatch):
    """onnx2tf has written wrong files silently: another model's .tflite must fail the parity check."""
    monkeypatch.setenv("FAKE_TFLITE", str(linear_pair / "b.tflite"))
    exe = _script(tmp_path / "onnx2tf", FAKE_WRITES)
    out = tmp_path / "out" / "m.tflite"
    out.parent.mkdir()
    with pytest.raises(ConversionParityError) as err:
        export_tflite_onnx2tf(linear_pair / "a.onnx", out, exe=str(exe))
    msg = str(err.value)
    assert "onnx2tf produced a wrong m.tflite" in msg and "max |diff|" in msg and "\n" not in msg
    assert err.value.max_abs_diff > 1e-2 and isinstance(err.value, ParityError)
    assert os.listdir(out.parent) == []                                # never keep a file that failed parity


def test_conversion_with_other_outputs_is_rejected(linear_pair, threshold_onnx, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_TFLITE", str(linear_pair / "a.tflite"))
    exe = _script(tmp_path / "onnx2tf", FAKE_WRITES)
    with pytest.raises(ConversionParityError, match="not a conversion of threshold.onnx"):
        export_tflite_onnx2tf(threshold_onnx[1], tmp_path / "m.tflite", exe=str(exe))
    assert not (tmp_path / "m.tflite").exists()


def _with_extra_output(src: Path, dst: Path, *, constant: bool) -> Path:
    """``src`` plus an int64 output ``kept_tokens``: a constant (as a model that prunes nothing has) or computed."""
    m = onnx.load(str(src))
    if constant:
        m.graph.initializer.append(numpy_helper.from_array(np.array([12, 12], np.int64), "kept_tokens"))
    else:
        m.graph.node.append(onnx.helper.make_node("Shape", [m.graph.input[0].name], ["kept_tokens"]))
    m.graph.output.append(onnx.helper.make_tensor_value_info("kept_tokens", onnx.TensorProto.INT64, [2]))
    onnx.save(m, str(dst))
    return dst


def test_dropped_constant_output_is_accepted_and_reported(linear_pair, tmp_path):
    """onnx2tf drops constant outputs (kept_tokens when nothing is pruned); a computed output may not go missing."""
    feeds = o2t._image_feeds(linear_pair / "a.onnx", count=2)
    onnx_const = _with_extra_output(linear_pair / "a.onnx", tmp_path / "const.onnx", constant=True)
    res = o2t.check_parity_onnx(linear_pair / "a.tflite", onnx_const, feeds)
    assert res["constant_outputs_dropped"] == ["kept_tokens"] and res["outputs"] == ["output_0"]
    onnx_computed = _with_extra_output(linear_pair / "a.onnx", tmp_path / "computed.onnx", constant=False)
    with pytest.raises(ConversionParityError, match="not a conversion of computed.onnx"):
        o2t.check_parity_onnx(linear_pair / "a.tflite", onnx_computed, feeds)


# ------------------------------------------------------------------------------ a real conversion (onnx2tf installed)
needs_onnx2tf = pytest.mark.skipif(not _onnx2tf_available(),
                                   reason="onnx2tf not installed (set VITEDGE_ONNX2TF or put onnx2tf on PATH)")


@pytest.fixture(scope="module")
def converted(threshold_onnx, tmp_path_factory):
    pytest.importorskip("ai_edge_litert")
    pm, onnx_path = threshold_onnx
    out = tmp_path_factory.mktemp("onnx2tf-real") / "threshold.tflite"
    images = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(3)).numpy()
    res = export_tflite_onnx2tf(onnx_path, out, feeds=[{"image": images[i:i + 1]} for i in range(8)])
    return pm, out, res, images


@needs_onnx2tf
def test_real_conversion_parity_ops_and_signature(converted):
    from ai_edge_litert.interpreter import Interpreter

    from vitedge.data.digits import ImageSet
    from vitedge.exporters.tflite import check_parity_tflite, xnnpack_delegation

    pm, path, res, images = converted
    assert os.listdir(path.parent) == [path.name]
    assert res.parity["max_abs_diff"] < 1e-4 and res.parity["kept_mismatch"] == 0 and res.slice_bounds_clamped >= 1
    ops = res.op_types
    assert not {k for k in ops if k == "TOPK_V2" or k.startswith(("FLEX", "CUSTOM"))}, ops
    assert {"WHERE", "GATHER", "GELU"} <= set(ops)                     # NonZero -> WHERE; opset 20 GELU builtin
    sigs = Interpreter(model_path=str(path)).get_signature_list()
    assert sigs == {"serving_default": {"inputs": ["image"], "outputs": ["kept_tokens", "logits"]}}
    par = check_parity_tflite(pm, path, ImageSet(images=images, labels=None, name="random"))
    assert par.max_abs_diff < 1e-4 and par.kept_match + par.boundary_flips / 8 >= 0.875
    kept = []
    with torch.no_grad():
        for i in range(8):
            kept.append(int(pm.forward_with_info(torch.from_numpy(images[i:i + 1])).kept[1]))
    assert min(kept) < 16 and len(set(kept)) > 1                       # pruning happens and varies per image
    d = xnnpack_delegation(path)
    assert 0 < d.nodes and d.delegated <= d.nodes and "WHERE" in d.not_delegated  # NonZero stays on the reference kernels


@needs_onnx2tf
def test_real_conversion_of_another_model_is_rejected(converted, tmp_path, monkeypatch):
    """Another threshold model (other weights) 'converted' into the first model's file: refused."""
    _, path, _, images = converted
    other = PrunableViT(make_tiny_vit(seed=1))
    other.set_thresholds([None, THETA])
    export_pruned(other, tmp_path / "other.onnx", opset=ONNX2TF_OPSET)

    def stale_output(onnx_path, workdir, **kw):
        dst = Path(workdir) / "stale_float32.tflite"
        shutil.copyfile(path, dst)
        return dst

    monkeypatch.setattr(o2t, "run_onnx2tf", stale_output)
    with pytest.raises(ConversionParityError, match="onnx2tf produced a wrong"):
        export_tflite_onnx2tf(tmp_path / "other.onnx", tmp_path / "out.tflite",
                              feeds=[{"image": images[i:i + 1]} for i in range(8)])
    assert not (tmp_path / "out.tflite").exists()


@needs_onnx2tf
def test_real_conversion_of_a_model_that_prunes_nothing(tmp_path):
    """kept_tokens is a constant there: onnx2tf drops it; the file is still checked and kept (logits only)."""
    from ai_edge_litert.interpreter import Interpreter

    from vitedge.data.digits import ImageSet
    from vitedge.exporters.tflite import check_parity_tflite

    pm = PrunableViT(make_tiny_vit())
    export_pruned(pm, tmp_path / "keep_all.onnx", opset=ONNX2TF_OPSET)
    images = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(5)).numpy()
    res = export_tflite_onnx2tf(tmp_path / "keep_all.onnx", tmp_path / "keep_all.tflite",
                                feeds=[{"image": images[i:i + 1]} for i in range(4)])
    assert res.parity["constant_outputs_dropped"] == ["kept_tokens"] and res.parity["max_abs_diff"] < 1e-4
    assert Interpreter(model_path=str(tmp_path / "keep_all.tflite")).get_signature_list()["serving_default"]["outputs"] == ["logits"]
    par = check_parity_tflite(pm, tmp_path / "keep_all.tflite", ImageSet(images=images, labels=None, name="random"))
    assert par.kept_match == 1.0 and par.max_abs_diff < 1e-4
    pm.set_thresholds([None, THETA])                                   # PyTorch now prunes, the file cannot say so
    with pytest.raises(ParityError, match="kept tokens equal on 0/4"):
        check_parity_tflite(pm, tmp_path / "keep_all.tflite", ImageSet(images=images, labels=None, name="random"))


@needs_onnx2tf
@pytest.mark.slow
def test_cli_export_through_onnx2tf(tmp_path):
    """`vitedge export --format tflite --tflite-converter onnx2tf` with a budget above the unpruned latency:
    two conversions (unpruned, keep-all), the ONNX Runtime table, the report's converter facts."""
    import json

    from click.testing import CliRunner
    from safetensors.torch import save_file

    from vitedge.cli.main import main
    from vitedge.models.reference import build_reference

    torch.manual_seed(0)
    save_file(build_reference(weights=False).state_dict(), str(tmp_path / "ref.safetensors"))
    out = tmp_path / "out"
    r = CliRunner().invoke(main, ["export", "--checkpoint", str(tmp_path / "ref.safetensors"), "--quiet", "--warmup", "1",
                                  "--runs", "3", "--min-time", "0", "--calib-limit", "24", "--threads", "1",
                                  "--cache-dir", str(tmp_path / "cache"), "--format", "tflite", "--tflite-converter", "onnx2tf",
                                  "--budget-ms", "10000", "-o", str(out)], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in out.iterdir()) == ["model.tflite", "report.json", "schedule.json"]
    rep = json.loads((out / "report.json").read_text())
    assert rep["format"] == "tflite" and rep["mode"] == "threshold" and rep["tflite_converter"] == "onnx2tf"
    assert [c["file"] for c in rep["conversions"]] == ["unpruned.tflite", "keep_all.tflite"]
    assert all(c["parity_vs_onnx"]["max_abs_diff"] < 1e-4 for c in rep["conversions"])
    assert rep["parity"]["max_abs_diff"] < 1e-4 and rep["xnnpack"]["nodes"] > 0
    assert "onnx2tf" in rep["notes"][0] and rep["device"]["runtime"] == "onnxruntime"   # the table's runtime
    assert rep["device"]["model_runtime"] == "litert"
    assert "via onnx2tf" in r.stdout
    assert any(p.name.startswith("table-") and "onnxruntime" in p.name for p in (tmp_path / "cache").iterdir())
