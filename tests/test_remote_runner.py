"""The remote protocol without a network: the runner's --progress-jsonl stream and its exit when
the host goes away, several input files cycled, a RemoteDevice over the local transport (copy to a
mktemp directory, stream, read back, clean up), the probe's install hint, and the partial file that
makes profiles resumable."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from vitedge.devices import MeasureConfig, RuntimeMissingError
from vitedge.devices import runner as R
from vitedge.devices.remote import RemoteDevice
from vitedge.devices.transports import LocalTransport
from vitedge.partial import PartialProfile, PartialProfileError, partial_path

FAST = {"warmup": 1, "min_runs": 3, "min_time_s": 0.0}


def tiny_onnx(path) -> str:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, "n", 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, "n", 8])
    w = numpy_helper.from_array(np.eye(8, dtype=np.float32), "w")
    g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g", [x], [y], [w])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, str(path))
    return str(path)


def plan(model, n=4, **extra):
    return dict({"config": FAST, "points": [
        {"name": f"p{i}", "model": model, "inputs": {"x": {"shape": [1, i + 1, 8], "dtype": "float32"}},
         "tags": {"tokens": i + 1}} for i in range(n)]}, **extra)


def test_progress_jsonl_streams_every_point(tmp_path, capsys):
    tiny_onnx(tmp_path / "m.onnx")
    (tmp_path / "plan.json").write_text(json.dumps(plan("m.onnx")))
    assert R.main(["--progress-jsonl", str(tmp_path / "plan.json"), str(tmp_path / "r.json")]) == 0
    out = capsys.readouterr()
    rows = [json.loads(ln)["point"] for ln in out.out.splitlines()]
    result = json.loads((tmp_path / "r.json").read_text())
    assert sorted(r["name"] for r in rows) == ["p0", "p1", "p2", "p3"]
    assert {r["name"]: r for r in rows} == {r["name"]: r for r in result["points"]}
    assert "[4/4]" in out.err


def test_runner_stops_when_the_host_goes_away(tmp_path):
    tiny_onnx(tmp_path / "m.onnx")
    p = plan("m.onnx", n=40, config=dict(FAST, min_time_s=0.01))
    (tmp_path / "plan.json").write_text(json.dumps(p))
    proc = subprocess.Popen([sys.executable, R.__file__, "--progress-jsonl", "plan.json", "r.json"], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert json.loads(proc.stdout.readline())["point"]
    proc.stdout.close()  # the link is gone
    assert proc.wait(60) == 4
    assert not (tmp_path / "r.json").exists() and "Traceback" not in proc.stderr.read()


def test_inputs_npz_list_is_cycled(tmp_path):
    for i in range(3):
        np.savez(tmp_path / f"f{i}.npz", x=np.full((1, 2, 8), i, np.float32))
    seen = []

    class Recorder:
        input_specs, version = [], "rec-1"

        def run(self, feeds):
            seen.append(float(feeds["x"][0, 0, 0]))
            return []
    (tmp_path / "m.onnx").write_bytes(b"x")
    p = {"config": dict(FAST, warmup=0, min_runs=6, max_runs=6),
         "points": [{"name": "img", "model": "m.onnx", "inputs_npz": ["f0.npz", "f1.npz", "f2.npz"]}]}
    res = R.run_plan(p, base_dir=str(tmp_path), session_factory=lambda *a: Recorder())
    # the model's first inference (input set 0), then the cycle (re-measured for drift after)
    assert res["points"][0]["runs"] == 6 and seen[:7] == [0, 0, 1, 2, 0, 1, 2]


def local_device(tmp_path, **kw):
    d = tmp_path / "device"
    d.mkdir(exist_ok=True)
    return RemoteDevice(name="board", runtime="onnxruntime", threads=1, config=MeasureConfig(**FAST),
                        transport=LocalTransport(tmp_root=str(d)), python=sys.executable, **kw), d


def test_remote_device_over_local_transport(tmp_path):
    dev, devdir = local_device(tmp_path)
    assert dev.runtime_version() == __import__("onnxruntime").__version__
    seen = []
    res = dev.run_plan(plan(tiny_onnx(tmp_path / "m.onnx")), on_point=seen.append)
    assert [r["name"] for r in res["points"]] == ["p0", "p1", "p2", "p3"] and len(seen) == 4
    assert res["environment"]["runtime"] == "onnxruntime"
    m = dev.measure_model(tmp_path / "m.onnx", [{"x": np.ones((1, 2, 8), np.float32)}] * 2)
    assert m["error_code"] == 0 and m["median_ms"] > 0
    assert os.listdir(devdir) == []
    d = dev.describe()
    assert d["transport"]["kind"] == "local" and d["python"] == sys.executable


def test_probe_names_the_install_command(tmp_path):
    fake = tmp_path / "site"
    fake.mkdir()
    (fake / "onnxruntime.py").write_text("raise ImportError('simulated: no onnxruntime here')\n")
    dev, _ = local_device(tmp_path, env={"PYTHONPATH": str(fake)})
    with pytest.raises(RuntimeMissingError, match=r"onnxruntime is not importable on board .*-m pip install onnxruntime"):
        dev.runtime_version()
    dev2, _ = local_device(tmp_path, )
    dev2.python = str(tmp_path / "no-python-here")
    with pytest.raises(RuntimeMissingError, match="cannot run .*no-python-here"):
        dev2.runtime_version()


def test_partial_file_is_durable_checked_and_repaired(tmp_path):
    path = partial_path(tmp_path / "t.json")
    assert path.name == "t.json.partial.jsonl"
    store = PartialProfile.open(path, {"fingerprint": "abc"}, resume=False)
    assert store.append({"name": "a", "error_code": 0, "samples_ms": [1.0]})
    assert not store.append({"name": "a", "error_code": 0, "samples_ms": [2.0]})  # first measurement stands
    assert not store.append({"name": "b", "error_code": 1, "samples_ms": []})    # failures are re-measured
    store.close()
    with open(path, "ab") as f:
        f.write(b'{"row": {"name": "c", "error_co')  # killed mid-write
    with pytest.raises(PartialProfileError, match="pass --resume"):
        PartialProfile.open(path, {"fingerprint": "abc"}, resume=False)
    with pytest.raises(PartialProfileError, match="another profile"):
        PartialProfile.open(path, {"fingerprint": "xyz"}, resume=True)
    store = PartialProfile.open(path, {"fingerprint": "abc"}, resume=True)
    assert list(store.rows) == ["a"] and store.rows["a"]["samples_ms"] == [1.0]
    assert store.append({"name": "c", "error_code": 0, "samples_ms": [3.0]})
    store.close()
    lines = path.read_text().splitlines()
    assert len(lines) == 3 and all(json.loads(ln) for ln in lines)  # the torn line is gone
    store = PartialProfile.open(path, {"fingerprint": "abc"}, resume=True)
    assert sorted(store.rows) == ["a", "c"]
    store.remove()
    assert not path.exists()
