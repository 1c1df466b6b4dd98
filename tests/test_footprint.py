"""Load time, first inference, memory and file size per model (the device protocol's footprint), in the
runner, the local and ssh devices, latency tables and `vitedge bench --max-memory-regression`; budgets at a
quantile of the per-image latency on a separate image folder (`vitedge export --budget-quantile
--measure-data`).  Memory is asserted through models whose weights differ by tens of MiB, never through
timings: times are only checked to be reported (positive)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from test_bench import matmul_model
from test_ssh_device import sshd  # noqa: F401 - the loopback OpenSSH server fixture
from vitedge import footprint as F
from vitedge.cli.main import main
from vitedge.devices import MeasureConfig, get_device
from vitedge.devices import runner as R
from vitedge.quantile import check_quantile, latency_at

FAST = MeasureConfig(warmup=1, min_runs=3, min_time_s=0.0)
LINUX_PROC = Path("/proc/self/status").is_file()


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("footprint")
    return {"small": matmul_model(root / "small.onnx", 1, size=16, hw=16),    # 50 KiB of weights
            "big": matmul_model(root / "big.onnx", 1, size=2048, hw=16)}      # 22 MiB of weights


def feeds(n=2, hw=16):
    rng = np.random.default_rng(1)
    return [{"image": rng.standard_normal((1, 3, hw, hw)).astype(np.float32)} for _ in range(n)]


# ------------------------------------------------------------------------------------------ runner
@pytest.mark.skipif(not LINUX_PROC, reason="VmHWM needs Linux /proc")
def test_memory_status_and_peak_reset():
    before = R.memory_status()
    assert before["source"] == "VmHWM" and before["peak_rss_mib"] >= before["rss_mib"] > 0
    block = np.ones(64 * 2 ** 20 // 8)                  # 64 MiB, touched
    assert R.memory_status()["peak_rss_mib"] >= before["rss_mib"] + 60
    del block
    if not R.reset_peak_memory():
        pytest.skip("/proc/self/clear_refs is not writable here")
    after = R.memory_status()
    # the 64 MiB peak is forgotten: the peak is back near the current RSS (not before's: other threads of a long test
    # run may hold more by now)
    assert after["peak_rss_mib"] < after["rss_mib"] + 60


def test_measure_file_reports_the_footprint(models):
    """In process: every field reported (the memory figures of a long-lived process are not compared: memory freed
    by earlier models stays resident and is reused; the fresh-process test below compares them)."""
    for name in ("small", "big"):
        path = str(models[name])
        m = R.measure_file(lambda: R.open_session("onnxruntime", path, 1), path, feeds(), FAST, name)
        fp = m["footprint"]
        assert m["error_code"] == 0 and m["runs"] == 3
        assert fp["file_bytes"] == Path(path).stat().st_size
        assert fp["load_ms"] > 0 and fp["first_inference_ms"] > 0
        if LINUX_PROC:
            assert fp["memory_source"] == "VmHWM" and fp["peak_rss_mib"] >= fp["rss_before_mib"]


def test_run_plan_times_one_first_inference_per_model_file(tmp_path):
    calls = []

    class Fake:
        input_specs, version = [{"name": "x", "shape": [1], "dtype": "float32"}], "fake-1"

        def run(self, f):
            calls.append(1)
            return []
    for f in ("a.onnx", "b.onnx"):
        (tmp_path / f).write_bytes(b"12345")
    cfg = dict(warmup=2, min_runs=3, max_runs=3, min_time_s=0.0, reference_every=0)
    plan = {"config": cfg, "points": [{"name": n, "model": m, "inputs": {"x": {"shape": [1], "dtype": "float32"}}}
                                      for n, m in (("p1", "a.onnx"), ("p2", "a.onnx"), ("p3", "b.onnx"))]}
    res = R.run_plan(plan, base_dir=str(tmp_path), session_factory=lambda rt, path, th: Fake())
    # 4 measurements (p1 twice: reference at start and end) x 5 runs, plus one first inference per file
    assert len(calls) == 4 * 5 + 2
    assert set(res["models"]) == {"a.onnx", "b.onnx"}
    fp = res["models"]["a.onnx"]
    assert fp["file_bytes"] == 5 and fp["load_ms"] >= 0 and fp["first_inference_ms"] >= 0


def test_benchmark_model_memory_lines_become_the_footprint(tmp_path):
    text = ("count=10 first=900 curr=800 min=790 max=950 avg=820 std=20\n"
            "Inference timings in us: Init: 5685, First inference: 18535, Warmup (avg): 14462.3, Inference (avg): 14575.2\n"
            "Memory footprint delta from the start of the tool (MB): init=3.5 overall=7.25\n"
            "Overall peak memory footprint (MB) via periodic monitoring: 11.75\n")
    stats = R.parse_benchmark_model(text)
    (tmp_path / "m.tflite").write_bytes(b"x" * 10)
    fp = R.tool_footprint(str(tmp_path / "m.tflite"), dict(stats, name="benchmark_model"))
    assert fp == {"file_bytes": 10, "load_ms": 5.685, "first_inference_ms": 18.535, "rss_before_mib": None,
                  "peak_rss_mib": 11.75, "model_rss_mib": 7.25, "memory_source": "benchmark_model", "peak_isolated": True}


def test_local_device_footprint_comes_from_a_fresh_runner_process(models):
    dev = get_device("local", threads=1, config=FAST)
    m = dev.measure_model(models["small"], feeds())
    fp = m["footprint"]
    assert fp["memory_scope"] == "a fresh runner process on this machine" and fp["load_ms"] > 0
    assert dev.measure_model(models["small"], feeds())["footprint"] is fp          # once per file
    assert json.dumps(dev.describe())                                               # no cache in the device's fields
    if LINUX_PROC and fp["peak_isolated"]:
        big = dev.measure_model(models["big"], feeds())["footprint"]
        assert big["model_rss_mib"] - fp["model_rss_mib"] >= 16                       # 22 MiB more weights
        assert fp["peak_rss_mib"] < 1000                                              # not this process (torch)


def test_ssh_device_reports_the_runner_process_footprint(sshd, models, tmp_path):
    """Over a real ssh link (loopback sshd): the runner's own process, a fresh one per plan, measured the model."""
    dev = get_device(sshd.url, threads=1, config=FAST, **sshd.settings(sshd.known_hosts(tmp_path / "known_hosts")))
    fp = dev.measure_model(models["big"], feeds())["footprint"]
    assert fp["memory_scope"] == "the runner process on the device" and fp["load_ms"] > 0 and fp["first_inference_ms"] > 0
    assert fp["file_bytes"] == models["big"].stat().st_size
    if LINUX_PROC and fp["peak_isolated"]:
        assert fp["model_rss_mib"] >= 16 and fp["peak_rss_mib"] > fp["model_rss_mib"]   # 22 MiB of weights


# ------------------------------------------------------------------------------------------ summaries
def test_combine_and_table_footprint():
    a = {"file_bytes": 10, "load_ms": 1.0, "first_inference_ms": 3.0, "peak_rss_mib": 50.0, "model_rss_mib": 2.0,
         "rss_before_mib": 48.0, "memory_source": "VmHWM"}
    b = dict(a, load_ms=3.0, peak_rss_mib=70.0, model_rss_mib=None)
    c = F.combine([a, b, None])
    assert c["measurements"] == 2 and c["load_ms"] == 2.0 and c["peak_rss_mib"] == 70.0 and c["model_rss_mib"] == 2.0
    assert F.combine([None]) is None and "not reported" in F.describe(None)
    result = {"models": {"att.onnx": a, "mlp.onnx": b},
              "points": [{"model": "att.onnx", "tags": {"part": "attention", "tokens": 3}},
                         {"model": "mlp.onnx", "tags": {"part": "mlp", "tokens": 3}}]}
    t = F.table_footprint(result)
    assert t["peak_rss_mib"] == 70.0 and t["parts"]["attention"]["load_ms"] == 1.0 and t["memory_source"] == "VmHWM"
    assert "peak RSS 70.0 MiB" in F.describe_table(t)


def test_memory_check_rule():
    fail = F.memory_check({"model_rss_mib": 30.0}, {"model_rss_mib": 10.0}, 0.1, against="the baseline")
    ok = F.memory_check({"model_rss_mib": 10.5}, {"model_rss_mib": 10.0}, 0.1, against="the baseline")
    slack = F.memory_check({"model_rss_mib": 1.5}, {"model_rss_mib": 1.0}, 0.1, against="the baseline")  # +0.5 MiB: noise
    none = F.memory_check({"model_rss_mib": 1.0}, {}, 0.1, against="the baseline")
    assert (fail["status"], ok["status"], slack["status"], none["status"]) == ("fail", "pass", "pass", "skipped")
    assert "memory regression" in fail["message"] and "the baseline" in none["message"]


# ------------------------------------------------------------------------------------------ vitedge bench
BENCH = ["--threads", "1", "--warmup", "1", "--runs", "2", "--min-time", "0", "--rounds", "2", "--images", "2", "--quiet",
         "--max-cv", "100", "--drift-tolerance", "100", "--data", None]


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    from PIL import Image

    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(root / f"im{i}.png")
    return root


@pytest.mark.skipif(not LINUX_PROC, reason="per-model memory needs Linux /proc")
def test_bench_max_memory_regression_ab_and_baseline(models, image_folder, tmp_path):
    args = [a if a is not None else str(image_folder) for a in BENCH]
    run = lambda *a: CliRunner().invoke(main, ["bench", *a, *args, "--json"], catch_exceptions=False)  # noqa: E731
    r = run(str(models["big"]), "--against", str(models["small"]), "--max-memory-regression", "10%", "--max-regression", "99%")
    res = json.loads(r.stdout)
    mem = next(c for c in res["checks"] if c["name"] == "memory")
    if mem["status"] == "skipped":
        pytest.skip(f"no per-model memory here: {mem['message']}")
    assert mem["status"] == "fail" and r.exit_code == 1 and res["new"]["footprint"]["file_bytes"] > 20 * 2 ** 20
    r = run(str(models["small"]), "--against", str(models["big"]), "--max-memory-regression", "10%", "--max-regression", "99%")
    assert next(c for c in json.loads(r.stdout)["checks"] if c["name"] == "memory")["status"] == "pass"
    base = tmp_path / "base.json"
    r = CliRunner().invoke(main, ["bench", str(models["small"]), *args, "--save-baseline", str(base)], catch_exceptions=False)
    assert json.loads(base.read_text())["footprint"]["model_rss_mib"] is not None, r.output
    r = run(str(models["big"]), "--baseline", str(base), "--max-memory-regression", "10%", "--max-regression", "99%",
            "--force")
    assert next(c for c in json.loads(r.stdout)["checks"] if c["name"] == "memory")["status"] == "fail"
    text = CliRunner().invoke(main, ["bench", str(models["small"]), *args], catch_exceptions=False).output
    assert "load " in text and "first inference" in text and "peak RSS" in text


def test_bench_max_memory_regression_needs_a_comparison(models):
    r = CliRunner().invoke(main, ["bench", str(models["small"]), "--max-memory-regression", "10%"])
    assert r.exit_code == 2 and "--max-memory-regression needs something to compare with" in r.stderr
    r = CliRunner().invoke(main, ["bench", str(models["small"]), "--against", str(models["small"]),
                                  "--max-memory-regression", "150"])
    assert r.exit_code == 2 and "--max-memory-regression" in r.stderr.strip().splitlines()[-1]


# ------------------------------------------------------------------------------------------ quantile budgets
def test_latency_at_quantiles():
    m = {"median_ms": 2.0, "p90_ms": 9.0, "samples_ms": [1.0, 2.0, 3.0, 4.0, 10.0]}
    assert latency_at(m, 0.5) == 2.0 and latency_at(m, 0.75) == 4.0 and latency_at(m, 0.9) == pytest.approx(7.6)
    tool = {"median_ms": 2.0, "p90_ms": 9.0, "samples_ms": []}
    assert latency_at(tool, 0.9) == 9.0
    with pytest.raises(ValueError, match="per-run samples"):
        latency_at(tool, 0.95)
    for bad in (0, 1, 1.5, "x", float("nan")):
        with pytest.raises(ValueError, match="--budget-quantile must be in"):
            check_quantile(bad)


def test_export_budget_quantile_on_separate_images(tmp_path, monkeypatch, image_folder):
    """Unpruned median 1.0 ms < budget 1.5 ms < its p90: at Q = 0.5 the keep-all path would ship it; at Q = 0.9 the
    job searches and ships a model whose p90 is within budget, timed on the --measure-data images."""
    from vitedge.context import Context, Options
    from vitedge.pipeline import run_export

    quick = MeasureConfig(warmup=1, min_runs=3, min_time_s=0.0)
    ctx = Context(Options(threads=1, calib_limit=16, tokens_step=16, cache_dir=str(tmp_path / "cache"), progress=False, profile_config=quick,
                          model_config=quick, search_knobs={"grid": 4}, budget_quantile=0.9,
                          measure_data=str(image_folder)), log=lambda m: None)
    seen = []

    def measure(path, feeds, name):
        seen.append(len(feeds))
        samples = [1.0] * 8 + [3.0, 3.0] if name in ("unpruned", "keep_all") else [0.5] * 9 + [1.2]
        return {"median_ms": float(np.median(samples)), "p90_ms": float(np.percentile(samples, 90)), "mad_ms": 0.0,
                "runs": len(samples), "samples_ms": samples, "footprint": {"load_ms": 1.0, "peak_rss_mib": 5.0}}
    monkeypatch.setattr(ctx.device, "measure_model", measure)
    rep = run_export(ctx, 1.5, tmp_path / "out", log=lambda m: None)
    assert rep["objective"] != "keep-all" and rep["budget_met"] and rep["budget_quantile"] == 0.9
    assert rep["measured_at_quantile_ms"] == pytest.approx(np.percentile([0.5] * 9 + [1.2], 90))
    assert rep["images"]["measure_data"] == ctx.measure_images.name and set(seen) == {3}   # the 3 --measure-data images
    assert rep["footprint"]["model"]["peak_rss_mib"] == 5.0
    saved = json.loads((tmp_path / "out" / "report.json").read_text())
    assert saved["budget_quantile"] == 0.9 and saved["images"]["measure_data"] == rep["images"]["measure_data"]


def test_cli_export_refuses_a_bad_quantile(tmp_path):
    r = CliRunner().invoke(main, ["export", "--budget-ms", "1", "--budget-quantile", "1.5", "-o", str(tmp_path / "o")])
    assert r.exit_code == 2 and "--budget-quantile must be in (0, 1)" in r.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "o").exists()


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
