"""Tests of devices/runner.py (the self-contained on-device runner).

No torch here: the test models are built with onnx.helper.  No timing assertions beyond what
the protocol guarantees (e.g. the timed loop lasts at least min_time_s).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import onnx
import onnxruntime
import pytest
from onnx import TensorProto, helper, numpy_helper

from vitedge.devices import runner as R

RUNNER_PATH = os.path.abspath(R.__file__)
FAST = {"warmup": 1, "min_runs": 3, "min_time_s": 0.0, "reference_every": 2}
DIM = 8


def make_model(path, dim=DIM, tokens="tokens"):
    """x[1, tokens, dim] -> Relu(x @ W) with a dynamic (named) token axis unless tokens is int."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, tokens, dim])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, tokens, dim])
    w = numpy_helper.from_array(np.arange(dim * dim, dtype=np.float32).reshape(dim, dim) / 10, "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["h"]),
                               helper.make_node("Relu", ["h"], ["y"])], "tiny", [x], [y], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return str(path)


def point(name, model, tokens, **extra):
    return dict({"name": name, "model": model,
                 "inputs": {"x": {"shape": [1, tokens, DIM], "dtype": "float32"}},
                 "tags": {"part": "mlp", "tokens": tokens}}, **extra)


@pytest.fixture
def registry(monkeypatch):
    """A private copy of the runtime registry, restored after the test."""
    monkeypatch.setattr(R, "_RUNTIMES", dict(R._RUNTIMES))
    return R._RUNTIMES


class FakeSession:
    """Session stand-in: counts runs, optionally sleeps per call (seconds from a function)."""

    def __init__(self, delay=lambda n: 0.0):
        self.calls, self.delay, self.feeds_seen = 0, delay, []
        self.input_specs, self.version = [{"name": "x", "shape": [1], "dtype": "float32"}], "fake-1"

    def run(self, feeds):
        self.calls += 1
        self.feeds_seen.append(feeds)
        d = self.delay(self.calls)
        if d:
            time.sleep(d)
        return []


# ---------------------------------------------------------------- measure()
def test_measure_respects_min_runs_and_min_time():
    calls = []
    cfg = R.MeasureConfig(warmup=2, min_runs=5, min_time_s=0.02)
    t0 = time.perf_counter()
    m = R.measure(lambda: calls.append(1), cfg, name="noop")
    elapsed = time.perf_counter() - t0
    assert m.error_code == 0 and m.error is None and m.name == "noop"
    assert m.runs >= 5 and m.runs == len(m.samples_ms) == len(calls) - 2
    assert elapsed >= 0.02           # the timed loop lasts at least min_time_s
    assert all(s >= 0 for s in m.samples_ms)
    assert m.timestamp <= time.time()


def test_measure_stops_at_max_runs():
    m = R.measure(lambda: None, R.MeasureConfig(warmup=0, min_runs=3, max_runs=3, min_time_s=60))
    assert m.runs == 3 and m.error_code == 0


def test_measure_statistics_match_numpy():
    m = R.measure(lambda: sum(range(200)), R.MeasureConfig(warmup=0, min_runs=25, min_time_s=0))
    a = np.asarray(m.samples_ms)
    assert m.median_ms == pytest.approx(np.median(a))
    assert m.p90_ms == pytest.approx(np.percentile(a, 90))
    assert m.mad_ms == pytest.approx(np.median(np.abs(a - np.median(a))))
    s = R.summarize("k", [1.0, 2.0, 3.0, 4.0, 100.0], 0.0)
    assert (s.median_ms, s.mad_ms, s.runs) == (3.0, 1.0, 5)
    assert s.p90_ms == pytest.approx(np.percentile([1, 2, 3, 4, 100], 90))


def test_measure_records_exception_and_timeout():
    def boom():
        raise RuntimeError("bad\nshape")
    m = R.measure(boom, R.MeasureConfig(warmup=1))
    assert m.error_code == R.ErrorCode.RUNTIME_ERROR and m.runs == 0 and m.median_ms is None
    assert m.error == "RuntimeError: bad shape"
    cfg = R.MeasureConfig(warmup=0, min_runs=10**6, min_time_s=100, timeout_s=0.01)
    m = R.measure(lambda: time.sleep(0.002), cfg)
    assert m.error_code == R.ErrorCode.TIMEOUT and 1 <= m.runs < 10**6
    assert m.median_ms is not None and "timeout_s" in m.error


def test_measure_feeds_cycles_round_robin():
    sess = FakeSession()
    feeds = [{"x": np.full(1, i)} for i in range(3)]
    cfg = R.MeasureConfig(warmup=2, min_runs=7, max_runs=7, min_time_s=0)
    m = R.measure_feeds(sess, feeds, cfg, name="whole")
    assert m.runs == 7 and m.error_code == 0 and sess.calls == 9
    assert [int(f["x"][0]) for f in sess.feeds_seen] == [0, 1, 2, 0, 1, 2, 0, 1, 2]
    with pytest.raises(ValueError):
        R.measure_feeds(sess, [], cfg)


# ---------------------------------------------------------------- sessions
def test_open_session_onnxruntime(tmp_path):
    sess = R.open_session("onnxruntime", make_model(tmp_path / "m.onnx"), threads=1)
    assert sess.input_specs == [{"name": "x", "shape": [1, "tokens", DIM], "dtype": "float32"}]
    assert isinstance(sess.version, str) and sess.version
    w = np.arange(DIM * DIM, dtype=np.float32).reshape(DIM, DIM) / 10
    for tokens in (1, 7):      # one session serves every token count
        x = np.random.default_rng(0).standard_normal((1, tokens, DIM)).astype(np.float32)
        (y,) = sess.run({"x": x})
        np.testing.assert_allclose(y, np.maximum(x @ w, 0), rtol=1e-5, atol=1e-5)
    m = R.measure_feeds(sess, [{"x": np.ones((1, t, DIM), np.float32)} for t in (3, 5)],
                        R.MeasureConfig(warmup=1, min_runs=4, min_time_s=0))
    assert m.error_code == 0 and m.runs >= 4
    with pytest.raises(R.PlanError, match="unknown runtime"):
        R.open_session("tensorrt", "m.onnx", 1)


def test_missing_onnxruntime_raises_runtime_missing(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)   # makes `import onnxruntime` fail
    with pytest.raises(R.RuntimeMissingError, match=r"python3 -m pip install onnxruntime"):
        R.open_session("onnxruntime", make_model(tmp_path / "m.onnx"), 1)
    assert issubclass(R.RuntimeMissingError, RuntimeError) and issubclass(R.PlanError, ValueError)


def test_register_runtime_warns_on_overwrite(registry):
    @R.register_runtime("fake")
    def fake(model_path, threads):
        return (lambda feeds: []), [], "0"
    assert "fake" in R.available_runtimes() and registry["fake"] is fake
    with pytest.warns(UserWarning, match="overwriting runtime 'fake'"):
        R.register_runtime("fake", fake)
    assert R.open_session("fake", "any", 2).version == "0"


# ---------------------------------------------------------------- run_plan()
def test_run_plan_tiny_model(tmp_path):
    make_model(tmp_path / "mlp.onnx")
    make_model(tmp_path / "mlp2.onnx", tokens="n")
    token_counts = [1, 5, 17, 33, 65, 9, 2]
    points = [point(f"t{t}", "mlp.onnx", t) for t in token_counts]
    points.append(point("other", "mlp2.onnx", 4))
    bad = point("bad_rank", "mlp.onnx", 3)
    bad["inputs"]["x"]["shape"] = [1, DIM]                       # wrong rank -> runtime error
    points.insert(3, bad)
    plan = {"runtime": "onnxruntime", "threads": 1, "config": dict(FAST, seed=3),
            "reference": "t17", "points": points}
    seen, opened = [], []

    def factory(runtime, model_path, threads):
        opened.append(os.path.basename(model_path))
        return R.open_session(runtime, model_path, threads)

    res = R.run_plan(plan, on_point=seen.append, base_dir=str(tmp_path), session_factory=factory)
    json.dumps(res, allow_nan=False)                              # strict-JSON-able
    assert res["format"] == "vitedge-runner/1" and res["reference"] == "t17"
    names = [p["name"] for p in points]
    assert [r["name"] for r in res["points"]] == names            # plan order, each once
    assert [r["index"] for r in res["points"]] == list(range(len(points)))
    assert sorted(res["order"]) == sorted(names) and res["order"][0] == "t17"
    assert res["order"] != names                                  # shuffled
    assert [r["name"] for r in seen] == res["order"]              # on_point once per point
    assert sorted(opened) == ["mlp.onnx", "mlp2.onnx"]            # one session per model file
    for r, p in zip(res["points"], points):
        assert r["tags"] == p["tags"] and r["model"] == p["model"]
        if r["name"] == "bad_rank":
            assert r["error_code"] == R.ErrorCode.RUNTIME_ERROR and r["error"]
            assert r["median_ms"] is None and r["samples_ms"] == []
        else:
            assert r["error_code"] == 0 and r["error"] is None and r["runs"] >= FAST["min_runs"]
            assert r["median_ms"] > 0 and len(r["samples_ms"]) == r["runs"]
    n_others = len(points) - 1                                    # start + every 2 + end
    meds = res["drift"]["reference_medians_ms"]
    assert len(meds) == 2 + (n_others - 1) // FAST["reference_every"]
    ref_row = next(r for r in res["points"] if r["name"] == "t17")
    assert all(m > 0 for m in meds) and meds[0] == ref_row["median_ms"]
    assert set(res["drift"]) >= {"detected", "reference_medians_ms", "max_rel_dev"}
    assert res["config"] == R.asdict(R.MeasureConfig(**dict(FAST, seed=3)))
    env = res["environment"]
    assert env["runtime"] == "onnxruntime" and env["threads"] == 1
    assert env["runtime_version"] == onnxruntime.__version__
    assert {"cpu_model", "cpu_count", "machine", "system", "release", "python", "numpy",
            "hostname"} <= set(env)
    assert res["started"] <= res["finished"]
    res2 = R.run_plan(dict(plan, config=dict(FAST, seed=4)), base_dir=str(tmp_path))
    assert res2["order"] != res["order"] and sorted(res2["order"]) == sorted(names)


def test_run_plan_inputs_npz_static_shapes_and_broken_model(tmp_path):
    make_model(tmp_path / "static.onnx", tokens=6)
    (tmp_path / "broken.onnx").write_bytes(b"not an onnx model")
    np.savez(tmp_path / "x.npz", x=np.ones((1, 6, DIM), np.float32))
    np.savez(tmp_path / "wrong.npz", x=np.ones((1, 6, DIM), np.int64))
    plan = {"config": FAST, "points": [
        {"name": "npz", "model": "static.onnx", "inputs_npz": "x.npz"},
        {"name": "from_specs", "model": "static.onnx"},
        {"name": "wrong_dtype", "model": "static.onnx", "inputs_npz": "wrong.npz"},
        {"name": "broken1", "model": "broken.onnx"},
        {"name": "broken2", "model": "broken.onnx"}]}
    res = R.run_plan(plan, base_dir=str(tmp_path))
    codes = {r["name"]: r["error_code"] for r in res["points"]}
    assert codes == {"npz": 0, "from_specs": 0, "wrong_dtype": R.ErrorCode.RUNTIME_ERROR,
                     "broken1": R.ErrorCode.SESSION_ERROR, "broken2": R.ErrorCode.SESSION_ERROR}
    assert all(r["tags"] == {} for r in res["points"])


def test_dynamic_shape_without_inputs_is_input_error(tmp_path):
    make_model(tmp_path / "dyn.onnx")
    res = R.run_plan({"config": FAST, "points": [{"name": "a", "model": "dyn.onnx"}]},
                     base_dir=str(tmp_path))
    (row,) = res["points"]
    assert row["error_code"] == R.ErrorCode.INPUT_ERROR and "dynamic shape" in row["error"]
    assert res["drift"]["detected"] is False


# ---------------------------------------------------------------- drift
def test_detect_drift_pure():
    d = R.detect_drift([1.0, 1.05, 0.97], 0.10)
    assert d["detected"] is False and d["max_rel_dev"] == pytest.approx(0.05)
    d = R.detect_drift([1.0, 1.5, 1.0], 0.10)
    assert d["detected"] is True and d["max_rel_dev"] == pytest.approx(0.5)
    assert d["reference_medians_ms"] == [1.0, 1.5, 1.0] and d["tolerance"] == 0.10
    assert R.detect_drift([2.0], 0.1)["detected"] is False
    assert R.detect_drift([None, 1.0, 2.0], 0.1)["detected"] is True    # failed runs skipped
    assert R.detect_drift([], 0.1) == {"detected": False, "reference_medians_ms": [],
                                       "max_rel_dev": 0.0, "tolerance": 0.1}


def test_run_plan_detects_injected_drift(tmp_path):
    for f in ("ref.onnx", "a.onnx"):
        (tmp_path / f).write_bytes(b"dummy")        # the fake factory never reads them
    cfg = dict(FAST, warmup=0, min_runs=3, max_runs=3)
    ref_runs = cfg["warmup"] + cfg["min_runs"]      # calls of the first reference measurement
    sessions = {"ref.onnx": FakeSession(delay=lambda n: 0.0 if n <= ref_runs else 0.02),
                "a.onnx": FakeSession()}
    plan = {"config": cfg, "points": [
        {"name": "ref", "model": "ref.onnx", "inputs": {"x": {"shape": [1], "dtype": "float32"}}}]
        + [{"name": f"p{i}", "model": "a.onnx", "inputs": {"x": {"shape": [2], "dtype": "int64"}}}
           for i in range(4)]}
    res = R.run_plan(plan, base_dir=str(tmp_path),
                     session_factory=lambda rt, path, th: sessions[os.path.basename(path)])
    drift = res["drift"]
    assert drift["detected"] is True and drift["max_rel_dev"] > 0.10
    assert len(drift["reference_medians_ms"]) == 3                 # start, after 2 points, end
    assert res["environment"]["runtime_version"] == "fake-1"
    feeds = sessions["a.onnx"].feeds_seen[0]
    assert feeds["x"].dtype == np.int64 and not feeds["x"].any()    # ints are zeros


# ---------------------------------------------------------------- plan validation and main()
@pytest.mark.parametrize("mutate, match", [
    (lambda p: p.update(runtime="tensorrt"), "unknown runtime 'tensorrt'"),
    (lambda p: p.update(points=[]), "no points"),
    (lambda p: p["points"][0].update(model="missing.onnx"), "model file not found"),
    (lambda p: p["points"][0]["inputs"]["x"].update(dtype="float128"), "bad dtype 'float128'"),
    (lambda p: p["points"][0]["inputs"]["x"].update(shape=[1, -1]), "'shape'"),
    (lambda p: p["points"].append(dict(p["points"][0])), "duplicate point name"),
    (lambda p: p.update(reference="nope"), "reference 'nope'"),
    (lambda p: p.update(threads="4"), "'threads'"),
    (lambda p: p.update(config={"min_run": 3}), "unknown config key 'min_run'"),
    (lambda p: p.update(config={"min_runs": 0}), "min_runs >= 1"),
    (lambda p: p["points"][0].update(inputs_npz="nope.npz"), "inputs_npz not found"),
])
def test_bad_plans_raise_plan_error(tmp_path, mutate, match):
    make_model(tmp_path / "m.onnx")
    plan = {"points": [point("a", "m.onnx", 3)]}
    R.validate_plan(plan, str(tmp_path))
    mutate(plan)
    with pytest.raises(R.PlanError, match=match) as e:
        R.validate_plan(plan, str(tmp_path))
    assert "\n" not in str(e.value)


def _write_plan(tmp_path, plan):
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(plan))
    return str(path)


def test_main_writes_result_atomically(tmp_path, monkeypatch, capsys):
    make_model(tmp_path / "m.onnx")
    plan_path = _write_plan(tmp_path, {"config": FAST, "points": [point("a", "m.onnx", 3),
                                                                  point("b", "m.onnx", 9)]})
    out = tmp_path / "result.json"
    replaced, real_replace = [], os.replace

    def spy(src, dst):
        replaced.append((src, dst))
        real_replace(src, dst)
    monkeypatch.setattr(R.os, "replace", spy)
    assert R.main([plan_path, str(out)]) == 0
    (src, dst), = replaced
    assert os.path.dirname(src) == str(tmp_path) and dst == str(out)
    res = json.loads(out.read_text())
    assert res["format"] == R.FORMAT and {p["name"] for p in res["points"]} == {"a", "b"}
    assert sorted(os.listdir(tmp_path)) == ["m.onnx", "plan.json", "result.json"]
    assert "[2/2]" in capsys.readouterr().err
    # a failed write leaves the previous result intact and no temp file behind
    with pytest.raises(ValueError):
        R.write_json_atomic(str(out), {"x": float("nan")})
    assert json.loads(out.read_text()) == res
    assert sorted(os.listdir(tmp_path)) == ["m.onnx", "plan.json", "result.json"]


@pytest.mark.parametrize("plan", [
    {"points": []},
    {"points": [{"name": "a", "model": "missing.onnx"}]},
    {"runtime": "nope", "points": [{"name": "a", "model": "missing.onnx"}]},
    "not json",
])
def test_main_bad_plan_exits_2_with_one_line(tmp_path, capsys, plan):
    if plan == "not json":
        path = tmp_path / "plan.json"
        path.write_text("{oops")
        plan_path = str(path)
    else:
        plan_path = _write_plan(tmp_path, plan)
    assert R.main([plan_path, str(tmp_path / "r.json")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("runner: bad plan: ") and err.count("\n") == 1
    assert not (tmp_path / "r.json").exists()
    assert R.main([plan_path]) == 2                                 # usage


def test_main_missing_runtime_exits_3(tmp_path, capsys, registry):
    def missing(model_path, threads):
        raise R.RuntimeMissingError("onnxruntime is not installed on this device: run "
                                    "`python3 -m pip install onnxruntime`")
    with pytest.warns(UserWarning, match="overwriting"):
        R.register_runtime("onnxruntime", missing)
    make_model(tmp_path / "m.onnx")
    plan_path = _write_plan(tmp_path, {"config": FAST, "points": [point("a", "m.onnx", 3)]})
    assert R.main([plan_path, str(tmp_path / "r.json")]) == 3
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "python3 -m pip install onnxruntime" in err
    assert not (tmp_path / "r.json").exists()


# ---------------------------------------------------------------- self-containment
def test_runner_imports_only_stdlib_and_numpy():
    code = (
        "import sys, importlib.util\n"
        "before = set(sys.modules)\n"
        "spec = importlib.util.spec_from_file_location('runner', sys.argv[1])\n"
        "mod = sys.modules['runner'] = importlib.util.module_from_spec(spec)\n"
        "spec.loader.exec_module(mod)\n"
        "new = {m.split('.')[0] for m in set(sys.modules) - before}\n"
        "bad = sorted(m for m in new if m not in sys.stdlib_module_names\n"
        "             and m not in ('numpy', 'runner'))\n"
        "assert not bad, bad\n"
        "assert 'torch' not in sys.modules and 'onnxruntime' not in sys.modules\n"
        "assert not any(m.startswith('vitedge') for m in sys.modules)\n"
        "print('ok')\n")
    proc = subprocess.run([sys.executable, "-I", "-c", code, RUNNER_PATH],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"


def test_cli_as_copied_script(tmp_path):
    """The file copied alone to a 'device' directory runs as `python3 runner.py PLAN RESULT`."""
    dev = tmp_path / "pi"
    dev.mkdir()
    shutil.copy(RUNNER_PATH, dev / "runner.py")
    make_model(dev / "m.onnx")
    plan = {"runtime": "onnxruntime", "threads": 1, "config": FAST,
            "points": [point("a", "m.onnx", 4), point("b", "m.onnx", 12)]}
    (dev / "plan.json").write_text(json.dumps(plan))
    proc = subprocess.run([sys.executable, "-I", str(dev / "runner.py"), str(dev / "plan.json"),
                           str(dev / "result.json")], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    res = json.loads((dev / "result.json").read_text())
    assert [p["name"] for p in res["points"]] == ["a", "b"]
    assert all(p["error_code"] == 0 for p in res["points"])
    assert res["points"][1]["tags"] == {"part": "mlp", "tokens": 12}


# ---------------------------------------------------------------- feeds meet inputs (issue 15)
class FakeSignatureRunner:
    """A LiteRT signature runner: inputs {signature input name: (tensor name, shape)}; returns 2 x the first."""

    def __init__(self, inputs: dict):
        self.inputs, self.calls = inputs, []

    def get_input_details(self):  # as ai-edge-litert 1.4/2.x and tflite-runtime give it
        return {n: {"name": t, "index": i, "shape": np.array(sh, np.int32), "shape_signature": np.array(sh, np.int32),
                    "dtype": np.float32} for i, (n, (t, sh)) in enumerate(self.inputs.items())}

    def __call__(self, **kw):
        assert list(kw) == list(self.inputs), kw  # exactly the signature's inputs: a second array fails here
        for n, (_, sh) in self.inputs.items():
            assert kw[n].shape == tuple(sh), (n, kw[n].shape)
        self.calls.append(kw)
        return {"output_0": next(iter(kw.values())) * 2}


class FakeInterpreter:
    """ai_edge_litert.interpreter.Interpreter stand-in with the signatures of ``SIGNATURES``."""

    SIGNATURES: dict = {}
    made: list = []

    def __init__(self, model_path, num_threads=None):
        self.runners = {k: FakeSignatureRunner(v) for k, v in self.SIGNATURES.items()}
        FakeInterpreter.made.append(self)

    def allocate_tensors(self):
        pass

    def get_signature_list(self):
        return {k: {"inputs": list(v), "outputs": ["output_0"]} for k, v in self.SIGNATURES.items()}

    def get_signature_runner(self, signature_key="serving_default"):
        return self.runners[signature_key]


@pytest.fixture
def fake_litert(monkeypatch, tmp_path):
    """The "litert" runtime on FakeInterpreter; a model file f.tflite in tmp_path; returns a setter of signatures."""
    monkeypatch.setattr(R, "_litert_interpreter", lambda choice="auto": (FakeInterpreter, "fake-litert 0.1"))
    monkeypatch.setattr(FakeInterpreter, "made", [])
    (tmp_path / "f.tflite").write_bytes(b"TFL3")

    def signatures(sigs: dict):
        monkeypatch.setattr(FakeInterpreter, "SIGNATURES", sigs)
    return signatures


def _litert_plan(**point):
    return {"runtime": "litert", "threads": 1, "config": FAST, "points": [dict({"name": "m", "model": "f.tflite"}, **point)]}


def test_feed_named_by_tensor_name_meets_its_signature_input(fake_litert, tmp_path):
    """The host names the image by the tensor name (Interpreter.get_input_details), the signature input is
    "args_0": the runner must feed that array to args_0 and generate nothing (issue 15: it added a random
    args_0 and ran the signature with two arrays)."""
    fake_litert({"serving_default": {"args_0": ("serving_default_args_0:0", [1, 3, 4, 4])}})
    x = np.arange(48, dtype=np.float32).reshape(1, 3, 4, 4)
    np.savez(tmp_path / "img.npz", **{"serving_default_args_0:0": x})
    res = R.run_plan(_litert_plan(inputs_npz=["img.npz"], outputs_npz="out.npz"), base_dir=str(tmp_path))
    (row,) = res["points"]
    assert row["error_code"] == 0, row["error"]
    with np.load(tmp_path / "out.npz") as z:
        np.testing.assert_array_equal(z["out0"][0], 2 * x)  # the image itself reached the model
    calls = FakeInterpreter.made[0].runners["serving_default"].calls
    assert calls and all(list(kw) == ["args_0"] for kw in calls)


def test_two_input_signature_named_by_tensor_and_signature_names(fake_litert, tmp_path):
    sig = {"a": ("sig_a:0", [1, 2]), "b": ("sig_b:0", [1, 2])}
    fake_litert({"serving_default": sig})
    b = np.full((1, 2), 5, np.float32)
    np.savez(tmp_path / "b.npz", **{"sig_b:0": b})  # a is generated, b comes from the file
    np.savez(tmp_path / "stray.npz", **{"sig_b:0": b, "image": b})
    plan = _litert_plan(inputs_npz="b.npz", outputs_npz="out.npz")
    plan["points"].append({"name": "stray", "model": "f.tflite", "inputs_npz": "stray.npz"})
    res = R.run_plan(plan, base_dir=str(tmp_path))
    ok, stray = res["points"]
    assert ok["error_code"] == 0, ok["error"]
    calls = FakeInterpreter.made[0].runners["serving_default"].calls
    np.testing.assert_array_equal(calls[0]["b"], b)
    assert stray["error_code"] == R.ErrorCode.INPUT_ERROR and "\n" not in stray["error"]
    assert "feed 'image' matches no input of f.tflite" in stray["error"] and "'b' (tensor 'sig_b:0')" in stray["error"]


def test_session_run_and_measure_feeds_use_the_same_rule(fake_litert, tmp_path):
    fake_litert({"serving_default": {"args_0": ("serving_default_args_0", [1, 3, 4, 4])}})
    sess = R.open_session("litert", str(tmp_path / "f.tflite"), 1)
    assert sess.input_specs[0]["name"] == "args_0" and sess.input_specs[0]["tensor"] == "serving_default_args_0"
    x = np.ones((1, 3, 4, 4), np.float32)
    for key in ("args_0", "serving_default_args_0", "image"):  # name, tensor name, the one input in order
        np.testing.assert_array_equal(sess.run({key: x})[0], 2 * x)
    m = R.measure_feeds(sess, [{"serving_default_args_0": x}, {"image": x}], R.MeasureConfig(**FAST))
    assert m.error_code == 0 and m.runs >= 3
    m = R.measure_feeds(sess, [{"args_0": x, "extra": x}], R.MeasureConfig(**FAST))
    assert m.error_code == R.ErrorCode.INPUT_ERROR and "feed 'extra' matches no input" in m.error
    with pytest.raises(ValueError, match=r"no signature of f\.tflite takes the feeds args_0 \[1, 3, 2, 2\]"):
        sess.run({"args_0": np.ones((1, 3, 2, 2), np.float32)})


def test_signature_picked_by_shape_after_matching(fake_litert, tmp_path):
    """One signature per token count, same input names, different tensor names: the feeds' shapes pick it."""
    fake_litert({f"t{n}": {"args_0": (f"t{n}_args_0:0", [1, n, 4]), "args_1": (f"t{n}_args_1:0", [1, n])}
                 for n in (3, 5)})
    sess = R.open_session("litert", str(tmp_path / "f.tflite"), 1)
    runners = FakeInterpreter.made[0].runners
    sess.run({"tokens": np.ones((1, 5, 4), np.float32), "scores": np.ones((1, 5), np.float32)})  # plan order
    sess.run({"t3_args_1:0": np.ones((1, 3), np.float32), "args_0": np.ones((1, 3, 4), np.float32)})
    assert [len(runners[k].calls) for k in ("t3", "t5")] == [1, 1]


def test_match_feeds_rule():
    specs = [{"name": "a", "tensor": "serving_default_a:0"}, {"name": "b", "tensor": "serving_default_b:0"}]
    x, y = np.zeros(1), np.ones(1)
    assert R.match_feeds({"b": y, "a": x}, specs) == {"a": x, "b": y}  # returned in the model's input order
    assert R.match_feeds({"serving_default_b:0": y}, specs) == {"b": y}  # the caller fills "a"
    assert R.match_feeds({"tokens": x, "scores": y}, specs) == {"a": x, "b": y}  # none named, all given: in order
    assert R.match_feeds({"x": y}, [{"name": "x"}]) == {"x": y}  # ONNX Runtime: names only
    assert R.match_feeds({"anything": y}, []) == {"anything": y}  # a runtime listing no inputs
    with pytest.raises(ValueError, match="feed 'image' matches no input of m.tflite") as e:
        R.match_feeds({"a": x, "image": y}, specs, "m.tflite")
    assert "\n" not in str(e.value) and "or give all 2 inputs in order" in str(e.value)
    with pytest.raises(ValueError, match="feed 'image' matches no input"):
        R.match_feeds({"image": y}, specs)  # one of two inputs, unnamed: which one cannot be told
    with pytest.raises(ValueError, match="two feeds match input 'a'"):
        R.match_feeds({"a": x, "serving_default_a:0": y}, specs)
