"""Issue 3: bad input around TFLite and capacity mode. Each case: exit code != 0, one `error:` line
naming the problem and its fix, and no output file (nor work started: no calibration cached).

1. TFLite without the extra (litert-torch / ai-edge-litert missing) -> exit 3, names vitedge[tflite].
2. Threshold mode where static shapes are needed (--format tflite, a LiteRT or benchmark_model
   runtime, a device preset whose runtime is one of them) -> exit 2, refused before the device is
   reached; names --mode capacity and the onnx2tf route.
3. Capacities outside min..P: the CLI takes none directly (the search picks K among measured token
   counts); the schedule file is their only carrier, refused when applied to a model.
4. A .tflite of another model given to `vitedge bench` (A/B with other inputs, a non-image input, a
   baseline of another model, .tflite against .onnx) -> exit 2.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from conftest import require_tflite_extra
from test_cli import assert_one_line_error, base, env, invoke  # noqa: F401  (env: the shared fixture)
from vitedge.cli.main import main
from vitedge.models.adapter import PrunableViT
from vitedge.models.reference import build_reference
from vitedge.schedule import Schedule


def _nothing_written(tmp_path: Path, env: dict, before: set | None = None):
    assert not (tmp_path / "o").exists() and not (tmp_path / "t.json").exists()
    assert not any(p.name.endswith(".partial.jsonl") for p in tmp_path.iterdir())
    cache = Path(env["cache"])
    now = {p.name for p in cache.iterdir()} if cache.exists() else set()
    assert now == (before or now)  # nothing new in the cache: refused before calibrating or profiling


def _cache_listing(env) -> set:
    cache = Path(env["cache"])
    return {p.name for p in cache.iterdir()} if cache.exists() else set()


# ------------------------------------------------------------------------------ 1. the tflite extra
@pytest.mark.parametrize("command", ["export", "profile"])
def test_tflite_without_litert_torch(env, tmp_path, monkeypatch, command):
    if command == "profile":  # a LiteRT profile checks its runtime (ai-edge-litert) before the converter
        require_tflite_extra("ai_edge_litert")
    monkeypatch.setitem(sys.modules, "litert_torch", None)  # find_spec / import -> not installed
    before = _cache_listing(env)
    extra = ["--budget-ms", "1", "-o", str(tmp_path / "o")] if command == "export" else ["-o", str(tmp_path / "t.json")]
    r = invoke(env, command, *base(env), "--no-cache", "--format", "tflite", *extra)
    assert_one_line_error(r, 3, "litert-torch", "pip install 'vitedge[tflite]'")
    _nothing_written(tmp_path, env, before)


def test_tflite_without_ai_edge_litert(env, tmp_path, monkeypatch):
    require_tflite_extra("litert_torch")  # export checks its converter (litert-torch) before the runtime
    from importlib import metadata

    real = metadata.version

    def fake_version(name):
        if name in ("ai-edge-litert", "tflite-runtime"):
            raise metadata.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr("vitedge.devices.base.metadata.version", fake_version)
    before = _cache_listing(env)
    r = invoke(env, "export", *base(env), "--no-cache", "--format", "tflite", "--budget-ms", "1", "-o", str(tmp_path / "o"))
    assert_one_line_error(r, 3, "ai-edge-litert", "pip install 'vitedge[tflite]'")
    _nothing_written(tmp_path, env, before)


# ------------------------------------------------------------------------------ 2. threshold mode, static shapes
STATIC = {
    "format": ["--format", "tflite"],
    "litert_runtime": ["--runtime", "litert"],
    "benchmark_model_runtime": ["--runtime", "benchmark_model"],
    "phone_preset": ["--device", "edge-phone"],          # adb + benchmark_model: never reached
    "litert_over_ssh": ["--device", "edge-pi"],          # ssh + litert: never reached
}


@pytest.mark.parametrize("case", list(STATIC))
@pytest.mark.parametrize("command", ["export", "search"])
def test_threshold_mode_needs_dynamic_shapes(env, tmp_path, case, command):
    devices = tmp_path / "devices.toml"
    devices.write_text('[edge-phone]\ntransport = "adb"\nruntime = "benchmark_model"\n\n'
                       '[edge-pi]\ntransport = "ssh"\nhost = "192.0.2.1"\nruntime = "litert"\n')
    before = _cache_listing(env)
    out = ["--budget-ms", "1", "-o", str(tmp_path / ("o" if command == "export" else "s.json"))]
    r = invoke(env, command, *base(env), "--devices-file", str(devices), *STATIC[case], "--mode", "threshold", *out)
    assert_one_line_error(r, 2, "threshold mode", "--mode capacity", "--tflite-converter onnx2tf")
    _nothing_written(tmp_path, env, before)
    assert not (tmp_path / "s.json").exists()


@pytest.mark.parametrize("args, fragment", [
    (["--format", "onnx", "--tflite-converter", "onnx2tf"], "--format tflite"),
    (["--format", "tflite", "--mode", "capacity", "--tflite-converter", "onnx2tf"], "litert-torch"),
])
def test_onnx2tf_route_outside_threshold_tflite(env, tmp_path, args, fragment):
    r = invoke(env, "export", *base(env), *args, "--budget-ms", "1", "-o", str(tmp_path / "o"))
    assert_one_line_error(r, 2, "--tflite-converter onnx2tf", fragment)
    assert not (tmp_path / "o").exists()


def test_onnx2tf_route_without_onnx2tf(env, tmp_path, monkeypatch):
    monkeypatch.delenv("VITEDGE_ONNX2TF", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))                  # no onnx2tf on PATH
    before = _cache_listing(env)
    r = invoke(env, "export", *base(env), "--no-cache", "--format", "tflite", "--tflite-converter", "onnx2tf",
               "--budget-ms", "1", "-o", str(tmp_path / "o"))
    assert_one_line_error(r, 3, "onnx2tf", "pip install 'vitedge[onnx2tf]'", "VITEDGE_ONNX2TF")
    _nothing_written(tmp_path, env, before)
    monkeypatch.setenv("VITEDGE_ONNX2TF", str(tmp_path / "no-such-onnx2tf"))
    r = invoke(env, "export", *base(env), "--no-cache", "--format", "tflite", "--tflite-converter", "onnx2tf",
               "--budget-ms", "1", "-o", str(tmp_path / "o"))
    assert_one_line_error(r, 3, "VITEDGE_ONNX2TF", "no-such-onnx2tf", "onnx2tf script")
    _nothing_written(tmp_path, env, before)


# ------------------------------------------------------------------------------ 3. capacities out of range
@pytest.fixture(scope="module")
def reference():
    torch.manual_seed(0)
    return PrunableViT(build_reference(weights=False))


def _schedule(tmp_path, capacities):
    L = len(capacities)
    d = {"format": "vitedge-schedule", "version": 2, "mode": "capacity", "candidates": [1] * L,
         "thresholds": [None] * L, "capacities": capacities, "budget": 1.0, "unit": "ms", "cost_model": "latency",
         "predicted": 1.0, "predicted_kept": [float(k or 64) for k in capacities], "fisher_loss": 0.0, "meta": {}}
    path = tmp_path / "schedule.json"
    path.write_text(json.dumps(d))
    return path


@pytest.mark.parametrize("bad", ["P+1", 1000, "min-1", -3])
def test_schedule_capacity_outside_the_token_count(reference, tmp_path, bad):
    P, low = reference.num_patches, reference.min_patch_tokens  # 64, 0 (token-pooling head: every patch may go)
    bad = {"P+1": P + 1, "min-1": low - 1}.get(bad, bad)
    caps = [None, 48, bad, None, None, None]
    schedule = Schedule.load(_schedule(tmp_path, caps))
    with pytest.raises(ValueError) as err:
        schedule.apply(reference)
    msg = str(err.value)
    assert "\n" not in msg and f"{low}..{P}" in msg and str(bad) in msg
    assert reference.capacities == [None] * reference.depth  # a refused schedule leaves the model as it was


def test_capacity_selector_refuses_more_than_present():
    from vitedge.models.pruning import capacity_gather_matrix

    with pytest.raises(ValueError) as err:
        capacity_gather_matrix(torch.rand(1, 16), 17)
    assert "0..16" in str(err.value) and "\n" not in str(err.value)


# ------------------------------------------------------------------------------ 4. bench: a .tflite of another model
@pytest.fixture(scope="module")
def tflite_models(tmp_path_factory):
    """Tiny LiteRT files: image (1, 3, 32, 32), image (1, 3, 16, 16), tokens (1, 5, 8); an .onnx taking 32x32."""
    pytest.importorskip("litert_torch")
    pytest.importorskip("ai_edge_litert")
    from test_bench import matmul_model
    from vitedge.exporters.tflite import export_tflite

    class Linear(torch.nn.Module):
        def __init__(self, hw):
            super().__init__()
            self.fc = torch.nn.Linear(3 * hw * hw, 10)

        def forward(self, x):
            return self.fc(x.flatten(1))

    root = tmp_path_factory.mktemp("bench_tflite")
    torch.manual_seed(0)
    export_tflite(Linear(32).eval(), (torch.zeros(1, 3, 32, 32),), root / "m32.tflite")
    export_tflite(Linear(16).eval(), (torch.zeros(1, 3, 16, 16),), root / "m16.tflite")
    export_tflite(torch.nn.Tanh().eval(), (torch.zeros(1, 5, 8),), root / "tokens.tflite")
    matmul_model(root / "m32.onnx", 1)
    return root


BENCH = ["--threads", "1", "--warmup", "1", "--runs", "3", "--min-time", "0", "--rounds", "3", "--images", "2",
         "--quiet", "--max-cv", "100", "--drift-tolerance", "100"]


def _bench_baseline(tflite_models, tmp_path):
    base = tmp_path / "base.json"
    r = CliRunner().invoke(main, ["bench", str(tflite_models / "m32.tflite"), *BENCH, "--save-baseline", str(base)])
    assert r.exit_code == 0, r.output
    return base


@pytest.mark.parametrize("case", ["ab_other_input", "ab_tflite_vs_onnx", "not_an_image", "baseline_of_other_model"])
def test_bench_tflite_of_another_model(tflite_models, tmp_path, monkeypatch, case):
    """(--data images are resized to the model's input by design: a folder cannot mismatch a model.)"""
    from test_bench import assert_one_line_error as bench_error

    monkeypatch.chdir(tmp_path)
    m = tflite_models
    baseline = ["--baseline", str(_bench_baseline(m, tmp_path)), "--force"] if case == "baseline_of_other_model" else []
    before = sorted(p.name for p in tmp_path.iterdir())
    model, args, fragments = {
        "ab_other_input": (m / "m16.tflite", ["--against", m / "m32.tflite"], ["[1, 3, 32, 32]", "[1, 3, 16, 16]", "same input"]),
        "ab_tflite_vs_onnx": (m / "m32.tflite", ["--against", m / "m32.onnx"], ["different runtimes", "same format"]),
        "not_an_image": (m / "tokens.tflite", [], ["[1, 5, 8]", "one image"]),
        "baseline_of_other_model": (m / "m16.tflite", baseline, ["input shape", "[1, 3, 16, 16]", "another model"]),
    }[case]
    outs = ["--junit", "j.xml", "-o", "r.json"] + ([] if baseline else ["--save-baseline", "s.json"])
    r = CliRunner().invoke(main, ["bench", str(model), *BENCH, *outs, *[str(a) for a in args]], catch_exceptions=False)
    bench_error(r, *fragments)
    assert sorted(p.name for p in tmp_path.iterdir()) == before
