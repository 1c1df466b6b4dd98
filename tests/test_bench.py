"""The latency gate (`vitedge bench`): statistics on synthetic samples, the decision rule, the CLI on
tiny ONNX graphs (input "image"), exit codes 0/1/2/3, JUnit XML, and every bad input (one line on
stderr, exit 2, no output file). No timing assertions: a decision that rests on timings is made on
the work clock (the real local device, runner and ONNX Runtime session, timed by a clock that each
run advances by the model's MatMul count) or on a fake device with synthetic samples (exit 3, exact
statistics). Real timings are only printed and sanity-checked (positive, p90 >= median); how well the
gate separates models on a real, noisy machine is benchmarks/bench_gate.py's job."""
from __future__ import annotations

import importlib.util
import json
import shutil
import time
from pathlib import Path
from xml.etree import ElementTree as ET

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from conftest import require_tflite_extra
from vitedge import gate as G
from vitedge.devices.base import file_sha256
from vitedge.cli.main import main

QUICK = ["--threads", "1", "--warmup", "1", "--runs", "3", "--min-time", "0", "--rounds", "6", "--images", "4", "--quiet"]
NOSTAB = ["--max-cv", "100", "--drift-tolerance", "100"]  # plumbing tests: real timings must not make them exit 3


# ------------------------------------------------------------------------------------------ tiny models
def matmul_model(path: Path, repeats: int, *, size: int = 384, hw: int = 32) -> Path:
    """image (1, 3, hw, hw) -> Flatten -> MatMul(3*hw*hw, size) -> [MatMul(size, size) -> Tanh] x repeats."""
    rng = np.random.default_rng(0)
    w0 = numpy_helper.from_array((rng.standard_normal((3 * hw * hw, size)) * 0.01).astype(np.float32), "w0")
    w = numpy_helper.from_array((rng.standard_normal((size, size)) * 0.05).astype(np.float32), "w")
    nodes = [helper.make_node("Flatten", ["image"], ["f"], axis=1), helper.make_node("MatMul", ["f", "w0"], ["h0"])]
    for i in range(repeats):
        nodes += [helper.make_node("MatMul", [f"h{i}", "w"], [f"m{i}"]), helper.make_node("Tanh", [f"m{i}"], [f"h{i + 1}"])]
    nodes.append(helper.make_node("Identity", [f"h{repeats}"], ["logits"]))
    graph = helper.make_graph(nodes, "toy", [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, hw, hw])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, size])], [w0, w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench_models")
    fast = matmul_model(root / "fast.onnx", 1)
    copy = root / "fast_copy.onnx"
    shutil.copy(fast, copy)
    return {"fast": fast, "copy": copy, "slow": matmul_model(root / "slow.onnx", 20),
            "small": matmul_model(root / "small.onnx", 1, hw=16)}


def invoke(*args):
    return CliRunner().invoke(main, ["bench", *[str(a) for a in args]], catch_exceptions=False)


def assert_one_line_error(r, *fragments, code: int = 2):
    assert r.exit_code == code, (r.exit_code, r.output, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    for f in fragments:
        assert f in lines[0], lines[0]
    assert r.stdout == ""


# ------------------------------------------------------------------------------------------ fake device
class FakeDevice:
    """Returns synthetic samples: ``sampler(model file name, call index) -> list of ms``."""

    def __init__(self, name, runtime, threads, sampler):
        self.name, self.runtime, self.threads, self.sampler, self.calls = name, runtime, threads or 1, sampler, 0

    def runtime_version(self):
        return "0.0-fake"

    def measure_model(self, path, feeds, *, name="model"):
        assert feeds and "image" in feeds[0]
        self.calls += 1
        return {"samples_ms": list(self.sampler(Path(path).name, self.calls)),
                "environment": {"cpu_model": "fake cpu", "hostname": "fake", "runtime": self.runtime}}


@pytest.fixture
def fake(monkeypatch):
    def install(sampler):
        def factory(name, *, runtime=None, threads=0, config=None, **settings):
            assert config.min_runs >= 1
            return FakeDevice(name, runtime or "onnxruntime", threads, sampler)
        monkeypatch.setattr("vitedge.gate.core.get_device", factory)
    return install


# ------------------------------------------------------------------------------------------ work clock
MS_PER_MATMUL = 0.05
IMAGE_COST = (1.00, 1.02, 1.04, 1.06)  # cycled run by run: image-dependent latency, the same mix every round


class WorkClock:
    """Stands in for the ``time`` module in the on-device runner: ``perf_counter_ns`` reads a clock
    that only a model run moves forward; every other attribute is the real ``time``'s."""

    def __init__(self):
        self.ns, self.runs = 0, 0

    def perf_counter_ns(self) -> int:
        return self.ns

    def advance(self, ms: float) -> None:
        self.ns += round(ms * IMAGE_COST[self.runs % len(IMAGE_COST)] * 1e6)
        self.runs += 1

    def __getattr__(self, name):
        return getattr(time, name)


@pytest.fixture
def work_clock(monkeypatch):
    """The real ONNX Runtime factory, wrapped: each run takes MS_PER_MATMUL x the model's MatMul count
    on the runner's clock (fast.onnx 2 MatMuls: 0.1 ms, slow.onnx 21: 1.05 ms), whatever the machine does."""
    from vitedge.devices import runner

    clock, real = WorkClock(), runner._RUNTIMES["onnxruntime"]

    def factory(model_path, threads, **options):
        run_fn, *rest = real(model_path, threads, **options)
        ms = MS_PER_MATMUL * sum(n.op_type == "MatMul" for n in onnx.load(model_path).graph.node)

        def run(feeds):
            out = run_fn(feeds)
            clock.advance(ms)
            return out
        return (run, *rest)

    monkeypatch.setitem(runner._RUNTIMES, "onnxruntime", factory)
    monkeypatch.setattr(runner, "time", clock)
    return clock


def test_work_clock_times_the_real_local_device(models, work_clock):
    from vitedge.devices import MeasureConfig, get_device

    dev = get_device("local", runtime="onnxruntime", threads=1, config=MeasureConfig(warmup=1, min_runs=8, max_runs=8,
                                                                                     min_time_s=0.0))
    feeds = [{"image": np.zeros((1, 3, 32, 32), np.float32)}]
    fast, slow = (dev.measure_model(models[k], feeds)["samples_ms"] for k in ("fast", "slow"))
    assert len(fast) == len(slow) == 8 and work_clock.runs == 20  # per model: first inference, warm-up, 8 timed
    assert sorted(set(np.round(fast, 9))) == pytest.approx([2 * MS_PER_MATMUL * c for c in IMAGE_COST])
    assert np.median(slow) / np.median(fast) == pytest.approx(21 / 2)


# ------------------------------------------------------------------------------------------ statistics
def test_bootstrap_ci_of_paired_ratios_covers_true_ratio():
    """Synthetic A/B: new = 1.07 x base, both with multiplicative noise and a common drift."""
    covered, widths = 0, []
    for seed in range(100):
        rng = np.random.default_rng(seed)
        drift = np.linspace(1.0, 1.4, 30)  # the machine slows down 40 % during the run: cancels in the ratios
        base = drift * rng.lognormal(0, 0.03, 30)
        new = 1.07 * drift * rng.lognormal(0, 0.03, 30)
        est, lo, hi = G.bootstrap_median(new / base, confidence=0.95, n_boot=2000, seed=0)
        covered += lo <= 1.07 <= hi
        widths.append(hi - lo)
        assert lo <= est <= hi
    assert covered >= 88  # nominal 95 %
    assert np.median(widths) < 0.06


def test_cluster_bootstrap_ratio_of_medians_covers_true_ratio():
    covered = 0
    for seed in range(60):
        rng = np.random.default_rng(seed)
        base = [rng.lognormal(0, 0.05, 25) * rng.lognormal(0, 0.02) for _ in range(10)]
        new = [1.2 * rng.lognormal(0, 0.05, 25) * rng.lognormal(0, 0.02) for _ in range(10)]
        est, lo, hi = G.bootstrap_ratio_of_medians(new, base, n_boot=1000, seed=0)
        covered += lo <= 1.2 <= hi
    assert covered >= 52


def test_bootstrap_quantile_and_summary():
    rounds = [list(np.arange(1.0, 11.0)) for _ in range(5)]
    est, lo, hi = G.bootstrap_quantile(rounds, 0.9, n_boot=500)
    assert est == pytest.approx(np.percentile(np.arange(1.0, 11.0), 90)) and lo <= est <= hi
    s = G.summary(rounds)
    assert s["median_ms"] == 5.5 and s["runs"] == 50 and s["rounds"] == 5 and s["round_medians_ms"] == [5.5] * 5
    assert s["cv"] == pytest.approx(G.robust_cv(np.tile(np.arange(1.0, 11.0), 5)))
    assert G.robust_cv([2.0, 2.0, 2.0]) == 0.0


def test_pair_ratios_use_the_chosen_statistic():
    new, base = [[2.0, 4.0, 100.0]], [[1.0, 2.0, 3.0]]
    assert G.pair_ratios(new, base, 0.5)[0] == 2.0 and G.pair_ratios(new, base, 0.0)[0] == 2.0


@pytest.mark.parametrize("lo, hi, status", [(1.10, 1.20, "fail"),       # clear regression: CI above 1.05
                                            (0.97, 1.03, "pass"),       # clear pass: CI below 1.05
                                            (1.01, 1.08, "inconclusive"),  # contains the threshold
                                            (1.05, 1.05, "pass")])      # upper bound == threshold passes
def test_decision_rule_regression(lo, hi, status):
    assert G.decide(lo, hi, 1.05) == status


@pytest.mark.parametrize("lo, hi, status", [(0.6, 0.7, "pass"), (1.0, 1.1, "fail"), (0.95, 1.02, "inconclusive")])
def test_decision_rule_speedup(lo, hi, status):
    assert G.decide(lo, hi, 1.0, expect_faster=True) == status


@pytest.mark.parametrize("text, value", [("5%", 0.05), ("0.05", 0.05), (" 2.5 % ".strip(), 0.025), ("0", 0.0)])
def test_parse_fraction(text, value):
    assert G.parse_fraction(text) == pytest.approx(value)


@pytest.mark.parametrize("text, fragment", [("5", "ambiguous"), ("abc", "percentage"), ("-1%", "[0 %"), ("100%", "[0 %")])
def test_parse_fraction_rejects(text, fragment):
    with pytest.raises(G.BenchError, match=fragment.replace("[", r"\[")):
        G.parse_fraction(text)


# ------------------------------------------------------------------------------------------ inputs
def test_input_spec_and_feeds(models, tmp_path):
    from PIL import Image

    spec = G.read_input_spec(models["small"])
    assert spec == {"name": "image", "shape": [1, 3, 16, 16], "dtype": "float32", "layout": "NCHW"}
    f = G.load_feeds(spec, G.BenchSettings(images=5))
    assert len(f.feeds) == 5 and f.feeds[0]["image"].shape == (1, 3, 16, 16) and f.source == "digits:calib@16x16"
    for i in range(3):
        Image.new("RGB", (10 + i, 12), (255, 0, 0)).save(tmp_path / f"{i}.png")
    f = G.load_feeds(spec, G.BenchSettings(data=str(tmp_path)))
    x = f.feeds[0]["image"]
    assert len(f.feeds) == 3 and x.shape == (1, 3, 16, 16) and x.dtype == np.float32
    assert np.allclose(x[0, 0], 1.0) and np.allclose(x[0, 1], -1.0)  # (1 - 0.5) / 0.5, (0 - 0.5) / 0.5
    assert G.runtime_for("m.tflite", None) == "litert" and G.runtime_for("m.onnx", None) == "onnxruntime"
    assert G.runtime_for("m.bin", "command") == "command"


# ------------------------------------------------------------------------------------------ CLI, local device
def test_single_bench_prints_statistics_and_json(models, tmp_path):
    """Real timings through the whole path; nothing here depends on how fast the machine is."""
    r = invoke(models["fast"], *QUICK, *NOSTAB, "-o", tmp_path / "res.json")
    assert r.exit_code == 0, r.output
    for word in ("median", "p90", "MAD", "CV", "runs", "env", "verdict  PASS"):
        assert word in r.stdout
    full = json.loads((tmp_path / "res.json").read_text())
    assert full["mode"] == "single" and len(full["new"]["samples_ms"]) == 6
    r = invoke(models["fast"], *QUICK, *NOSTAB, "--json")
    res = json.loads(r.stdout)
    st = res["new"]["stats"]
    assert res["exit_code"] == 0 and st["runs"] >= 18 and st["p90_ms"] >= st["median_ms"] > 0
    assert {"mad_ms", "cv", "round_medians_ms"} <= set(st) and res["environment"]["cpu_count"] >= 1
    assert res["device"]["threads"] == 1 and res["images"]["source"] == "digits:calib"


def test_baseline_round_trip_and_regression(models, tmp_path, work_clock):
    base = tmp_path / "base.json"
    r = invoke(models["fast"], *QUICK, *NOSTAB, "--save-baseline", base)
    assert r.exit_code == 0, r.output
    b = json.loads(base.read_text())
    assert b["format"] == "vitedge-bench-baseline" and b["version"] == 1
    assert b["model"]["sha256"] == file_sha256(models["fast"]) and b["model"]["input"]["shape"] == [1, 3, 32, 32]
    assert b["device"]["name"] == "local" and b["device"]["threads"] == 1 and b["device"]["runtime_version"]
    assert len(b["samples_ms"]) == 6 and b["environment"]["python"]
    r = invoke(models["copy"], *QUICK, *NOSTAB, "--baseline", base, "--max-regression", "90%")
    assert r.exit_code == 0, r.output
    assert "regression PASS" in r.stdout.replace("  ", " ").replace("  ", " ")
    r = invoke(models["slow"], *QUICK, *NOSTAB, "--baseline", base, "--max-regression", "0.05", "--json")
    assert r.exit_code == 1, r.output
    res = json.loads(r.stdout)
    reg = next(c for c in res["checks"] if c["name"] == "regression")
    assert reg["status"] == "fail" and reg["values"]["ci"][0] > 1.05 and res["verdict"] == "fail"
    assert reg["values"]["ratio"] == pytest.approx(21 / 2) and reg["values"]["ci"] == pytest.approx([21 / 2] * 2)


def test_baseline_refused_across_device_threads_and_input(models, tmp_path, work_clock):
    base = tmp_path / "base.json"
    assert invoke(models["fast"], *QUICK, *NOSTAB, "--save-baseline", base).exit_code == 0
    r = invoke(models["fast"], *[a if a != "1" else "2" for a in QUICK[:2]], *QUICK[2:], *NOSTAB, "--baseline", base)
    assert_one_line_error(r, "measured elsewhere", "threads 1 vs 2", "--force")
    b = json.loads(base.read_text())
    b["device"]["name"] = "rpi4"
    other = tmp_path / "other.json"
    other.write_text(json.dumps(b))
    r = invoke(models["fast"], *QUICK, *NOSTAB, "--baseline", other, "--junit", tmp_path / "j.xml")
    assert_one_line_error(r, "measured elsewhere", "'rpi4' vs 'local'")
    assert not (tmp_path / "j.xml").exists()
    r = invoke(models["fast"], *QUICK, *NOSTAB, "--baseline", other, "--force", "--max-regression", "90%")
    assert r.exit_code == 0 and "--force: comparing across name" in r.stdout
    r = invoke(models["small"], *QUICK, *NOSTAB, "--baseline", base, "--force")
    assert_one_line_error(r, "input shape", "[1, 3, 16, 16]")


def test_ab_self_passes_and_twenty_matmuls_are_caught(models, tmp_path, work_clock):
    r = invoke(models["fast"], "--against", models["copy"], *QUICK, "--max-regression", "50%")
    assert r.exit_code == 0, r.output
    assert "ratio" in r.stdout and "regression PASS" in " ".join(r.stdout.split())
    junit = tmp_path / "gate.xml"
    r = invoke(models["slow"], "--against", models["fast"], *QUICK, *NOSTAB, "--budget-ms", "1e-6", "--junit", junit,
               "--json")
    assert r.exit_code == 1, r.output
    res = json.loads(r.stdout)
    comp = next(c for c in res["checks"] if c["name"] == "regression")
    assert comp["values"]["pairs"] == 6 and comp["values"]["ci"][0] > 1.05 and len(comp["values"]["pair_ratios"]) == 6
    assert comp["values"]["pair_ratios"] == pytest.approx([21 / 2] * 6)
    suite = ET.parse(junit).getroot()
    assert suite.tag == "testsuite" and suite.get("tests") == "3" and suite.get("failures") == "2"
    cases = {tc.get("name"): tc for tc in suite.iter("testcase")}
    assert set(cases) == {"budget", "regression", "stability"}
    assert cases["regression"].find("failure").get("message").startswith("regression: new is slower")
    assert "over budget" in cases["budget"].find("failure").get("message")
    assert cases["stability"].find("failure") is None
    # the other way round, a speed-up shown with confidence
    r = invoke(models["fast"], "--against", models["slow"], *QUICK, "--expect-faster")
    assert r.exit_code == 0, r.output
    assert "speedup" in r.stdout and "faster with 95% confidence" in r.stdout
    assert "ratio 0.095 (95% CI [0.095, 0.095])" in r.stdout  # 2 / 21 MatMuls


# ------------------------------------------------------------------------------------------ decisions, fake device
def test_unstable_measurement_exits_3_with_advice(models, tmp_path, fake):
    rng = np.random.default_rng(0)
    fake(lambda name, k: rng.lognormal(0, 0.3) * rng.lognormal(0, 0.05, 30))   # round medians scatter ~30 %
    base = tmp_path / "b.json"
    r = invoke(models["fast"], *QUICK, "--junit", tmp_path / "j.xml", "--save-baseline", base)
    assert r.exit_code == 3, r.output
    assert "UNSTABLE" in r.stdout and "taskset" in r.stdout and "NOT written" in r.stdout and not base.exists()
    case = next(tc for tc in ET.parse(tmp_path / "j.xml").getroot().iter("testcase") if tc.get("name") == "stability")
    assert case.find("failure").get("type") == "unstable" and "CV" in case.find("failure").get("message")


def test_image_dependent_latency_is_not_instability(models, fake):
    """A threshold-pruned model's latency varies with the image: wide samples, steady rounds."""
    fake(lambda name, k: list(np.linspace(0.5, 2.0, 32)))
    r = invoke(models["fast"], *QUICK, "--json")
    res = json.loads(r.stdout)
    assert r.exit_code == 0 and res["new"]["stats"]["cv"] > 0.3 and res["new"]["stats"]["round_cv"] == 0.0


def test_drift_exits_3(models, fake):
    fake(lambda name, k: [1.0] * 10 if k <= 5 else [1.5] * 10)  # the machine slows down 50 % half-way
    r = invoke(models["fast"], *QUICK, "--json")
    assert r.exit_code == 3
    stab = next(c for c in json.loads(r.stdout)["checks"] if c["name"] == "stability")
    assert stab["status"] == "unstable" and stab["values"]["drift"]["detected"]


def test_ab_cancels_drift_and_inconclusive_exits_3(models, fake):
    # drift common to both models cancels in the pair ratios: exact 0.8 ratio, pass with --expect-faster
    fake(lambda name, k: [(1.0 + 0.05 * k) * (0.8 if name == "fast.onnx" else 1.0)] * 5)
    r = invoke(models["fast"], "--against", models["copy"], *QUICK, "--expect-faster", "--json")
    res = json.loads(r.stdout)
    assert r.exit_code == 0 and res["checks"][0]["values"]["ratio"] == pytest.approx(0.8, rel=0.02)
    # ratios alternate 1.0 / 1.1 around the 5 % threshold: inconclusive even after extending to --max-rounds
    fake(lambda name, k: [1.0 + 0.1 * (name == "fast.onnx") * (((k - 1) // 2) % 2)] * 5)  # k: call 1, 2, ...
    r = invoke(models["fast"], "--against", models["copy"], *QUICK, "--max-rounds", "16", "--json")
    res = json.loads(r.stdout)
    comp = res["checks"][0]
    assert r.exit_code == 3 and res["verdict"] == "inconclusive" and comp["status"] == "inconclusive"
    assert comp["values"]["pairs"] == 16 and "--rounds" in comp["message"]


def test_budget_uses_the_quantile(models, fake):
    fake(lambda name, k: list(np.arange(1.0, 11.0)))          # median 5.5, p90 9.1
    args = [models["fast"], *QUICK, *NOSTAB, "--budget-ms", "7"]
    assert invoke(*args).exit_code == 0
    r = invoke(*args, "--quantile", "0.9")
    assert r.exit_code == 1 and "p90 9.1000 ms > budget 7 ms" in r.stdout


def test_instability_fails_a_budget_only_on_a_close_call(models, fake):
    rng = np.random.default_rng(1)
    fake(lambda name, k: 5.0 * rng.lognormal(0, 0.3) * rng.lognormal(0, 0.05, 40))   # unstable rounds, ~5 ms
    r = invoke(models["fast"], *QUICK, "--budget-ms", "50", "--json")    # far below: a clear pass
    res = json.loads(r.stdout)
    checks = {c["name"]: c["status"] for c in res["checks"]}
    assert r.exit_code == 0 and checks == {"budget": "pass", "stability": "skipped"}
    assert invoke(models["fast"], *QUICK, "--budget-ms", "0.5").exit_code == 1   # far above: a clear fail
    r = invoke(models["fast"], *QUICK, "--budget-ms", "5", "--json")     # inside the CI: unstable
    budget = json.loads(r.stdout)["checks"][0]
    assert r.exit_code == 3 and budget["status"] == "unstable" and budget["values"]["close_call"]


# ------------------------------------------------------------------------------------------ bad input
def _no_outputs(tmp_path, before):
    assert sorted(p.name for p in tmp_path.iterdir()) == before


OUTS = ["--junit", "j.xml", "-o", "r.json", "--save-baseline", "s.json"]


@pytest.mark.parametrize("case", ["missing_model", "corrupt_model", "corrupt_tflite", "unknown_extension", "zero_runs",
                                  "missing_baseline", "corrupt_baseline", "not_a_baseline", "bad_regression",
                                  "both_modes", "faster_without_base", "missing_data", "bad_device", "missing_against",
                                  "bad_option_type", "missing_output_folder", "zero_rounds", "bad_quantile"])
def test_bad_input(models, tmp_path, monkeypatch, case):
    if case == "corrupt_tflite" and importlib.util.find_spec("tflite_runtime") is None:
        require_tflite_extra("ai_edge_litert")  # without an interpreter the error names the extra (next test)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "corrupt.onnx").write_bytes(b"\x08\x07garbage" * 40)
    (tmp_path / "corrupt.tflite").write_bytes(b"TFL3 not really" * 10)
    (tmp_path / "corrupt.json").write_text("{not json")
    (tmp_path / "other.json").write_text(json.dumps({"format": "something-else"}))
    before = sorted(p.name for p in tmp_path.iterdir())
    m = models["fast"]
    args, fragments = {
        "missing_model": ([tmp_path / "nope.onnx"], ["does not exist"]),
        "corrupt_model": ([tmp_path / "corrupt.onnx"], ["cannot load model", "not a valid ONNX file"]),
        "corrupt_tflite": ([tmp_path / "corrupt.tflite"], ["cannot load model"]),
        "unknown_extension": ([tmp_path / "corrupt.json"], ["--runtime"]),
        "zero_runs": ([m, "--runs", "0"], ["--runs must be >= 1"]),
        "zero_rounds": ([m, "--rounds", "0"], ["--rounds must be >= 2"]),
        "missing_baseline": ([m, "--baseline", tmp_path / "none.json"], ["baseline file", "does not exist"]),
        "corrupt_baseline": ([m, "--baseline", tmp_path / "corrupt.json"], ["corrupt"]),
        "not_a_baseline": ([m, "--baseline", tmp_path / "other.json"], ["not a vitedge bench baseline"]),
        "bad_regression": ([m, "--against", models["copy"], "--max-regression", "5"], ["ambiguous", "5%"]),
        "both_modes": ([m, "--against", models["copy"], "--baseline", tmp_path / "corrupt.json"], ["not both"]),
        "faster_without_base": ([m, "--expect-faster"], ["--against"]),
        "missing_data": ([m, "--data", tmp_path / "no_images"], ["does not exist"]),
        "bad_device": ([m, "--device", "toaster"], ["unknown device", "toaster"]),
        "missing_against": ([m, "--against", tmp_path / "nope.onnx"], ["nope.onnx", "does not exist"]),
        "bad_option_type": ([m, "--runs", "many"], ["--runs"]),
        "missing_output_folder": ([m, "--junit", tmp_path / "no" / "dir" / "j.xml"], ["folder"]),
        "bad_quantile": ([m, "--budget-ms", "1", "--quantile", "90"], ["--quantile"]),
    }[case]
    r = invoke(args[0], *QUICK[2:], *OUTS, *args[1:])  # the case's options last: they win
    assert_one_line_error(r, *fragments)
    _no_outputs(tmp_path, before)


def test_tflite_without_interpreter_names_the_extra(tmp_path, monkeypatch):
    import sys

    for mod in ("ai_edge_litert", "ai_edge_litert.interpreter", "tflite_runtime", "tflite_runtime.interpreter"):
        monkeypatch.setitem(sys.modules, mod, None)  # import -> ImportError, installed or not
    (tmp_path / "m.tflite").write_bytes(b"TFL3 not really" * 10)
    assert_one_line_error(invoke(tmp_path / "m.tflite", *QUICK[2:]), "needs ai-edge-litert", "pip install 'vitedge[tflite]'")


def test_missing_runtime_is_bad_input(models, monkeypatch):
    from vitedge.devices import RuntimeMissingError

    def factory(*a, **k):
        raise RuntimeMissingError("onnxruntime is not installed: run `python -m pip install onnxruntime`")
    monkeypatch.setattr("vitedge.gate.core.get_device", factory)
    assert_one_line_error(invoke(models["fast"], *QUICK), "not installed", "pip install")


def test_bench_is_registered():
    r = CliRunner().invoke(main, ["--help"])
    assert "bench" in r.output
