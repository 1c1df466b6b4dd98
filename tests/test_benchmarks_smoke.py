"""Every benchmark script runs its tiny configuration and writes results that exist and parse.

Each script runs in a subprocess (argument list, no shell) with ``--out`` a temporary folder and a
temporary ``VITEDGE_CACHE``; the configurations are listed in benchmarks/README.md. The benchmarks
themselves (minutes to an hour) run outside the test suite.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import require_tflite_extra

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
REF = "vitedge-digits-vit"
PNG = b"\x89PNG\r\n\x1a\n"

# script -> (arguments after the script, files expected in --out)
CASES = {
    "train_reference": (["--epochs", "1", "--threads", "1"], ["model.safetensors", "training.json", "MODEL_CARD.md"]),
    "budget_fidelity": (["--quick", "--models", REF, "--budgets", "1", "--max-r", "1"],
                        ["budget_fidelity.json", "budget_fidelity.md", "budget_fidelity.png"]),
    "overhead": (["--quick", "--models", REF, "--rounds", "1"], ["overhead.json", "overhead.md", "overhead.png"]),
    "speed": (["--repeats", "1"], ["speed.json", "speed.md"]),
    "modes": (["--quick", "--models", REF, "--fractions", "0.9", "--sweep", "0.9", "--rounds", "1"],
              ["modes.json", "modes.md", "modes.png", f"litert_table_{REF}.png"]),
    "selector_variants": (["--quick", "--threads", "1", "--rounds", "1"],
                          ["selector_variants.json", "selector_variants.md", "selector_variants.png"]),
    "onnx2tf_route": (["--quick", "--images", "4"], ["onnx2tf.json", "onnx2tf.md"]),  # only with onnx2tf
    "remote_devices": (["--quick", "--rounds", "1", "--kills", "1", "--limits", "min", "--calib-limit", "4"],
                       ["remote_devices.json", "remote_devices.md", "remote_devices.png"]),
    "bench_gate": (["--reps", "1", "--truth-pairs", "2", "--work", "{tmp}/work"], ["bench_gate.json", "bench_gate.md", "bench_gate.png"]),
    "pareto": (["--quick", "--points", "2", "--test-limit", "40", "--calib-limit", "24", "--tokens-step", "8",
                "--pomt-k-step", "2", "--eager-threads", "1"],
               ["pareto.json", "pareto.md", "pareto.png", "pareto_ablation.png", "pareto_table_onnxruntime.png"]),
    "accuracy_budget": (["--quick", "--budgets", "70", "--calib-limit", "32"],
                        ["accuracy_budget.json", "accuracy_budget.md", "accuracy_budget.png"]),
}


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("bench-cache")


def check_output(path: Path) -> None:
    assert path.is_file() and path.stat().st_size > 0, f"{path.name} missing or empty"
    data = path.read_bytes()
    if path.suffix == ".json":
        json.loads(data)
    elif path.suffix == ".md":
        assert data.decode("utf-8").lstrip().startswith("#"), f"{path.name} is not a Markdown report"
    elif path.suffix == ".png":
        assert data.startswith(PNG), f"{path.name} is not a PNG"
    elif path.suffix == ".safetensors":
        from safetensors.numpy import load

        assert load(data), f"{path.name} holds no tensors"


# Minutes each even in their tiny configuration (exports, TFLite conversions, A/B repetitions): kept out
# of the default run (`pytest -q -m "not slow"`, what CI runs within its 20 minutes); `pytest -q` runs them.
SLOW = {"budget_fidelity", "modes", "bench_gate", "onnx2tf_route", "accuracy_budget"}
# Scripts that measure in LiteRT: they need the tflite extra (skipped without it).
NEEDS_TFLITE = {"selector_variants", "modes"}


@pytest.mark.parametrize("script", [pytest.param(s, marks=pytest.mark.slow) if s in SLOW else s for s in CASES])
def test_benchmark_script_smoke(script, tmp_path, cache):
    args, expected = CASES[script]
    if script in NEEDS_TFLITE:
        require_tflite_extra()
    if script == "onnx2tf_route" and not (os.environ.get("VITEDGE_ONNX2TF") or shutil.which("onnx2tf")):
        pytest.skip("onnx2tf is not installed (vitedge[onnx2tf], own venv: set VITEDGE_ONNX2TF)")
    out = tmp_path / "out"
    cmd = [sys.executable, str(BENCH / f"{script}.py"), *[a.format(tmp=tmp_path) for a in args], "--out", str(out)]
    env = dict(os.environ, VITEDGE_CACHE=str(cache), MPLBACKEND="Agg", PYTHONUNBUFFERED="1")
    t0 = time.time()
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1800)
    took = time.time() - t0
    print(f"{script}: {took:.1f} s")
    if script == "remote_devices" and proc.returncode != 0 and "cannot run the SSH parts" in proc.stderr:
        pytest.skip("no OpenSSH server on this machine (the remote-device tests skip likewise)")
    assert proc.returncode == 0, f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    for name in expected:
        check_output(out / name)
    results = [json.loads((out / n).read_text()) for n in expected if n.endswith(".json") and n != "training.json"]
    for r in results:
        assert "environment" in r, "every result JSON records its environment"
    if script == "accuracy_budget":
        c = results[0]["configs"][0]
        assert c["config"] == "ort-threshold" and [r["fraction"] for r in c["at_budget"]] == [70]
        row = c["at_budget"][0]
        assert {"vitedge", "fisher", "pomt", "topk", "flops_viterbi"} <= set(row)
        assert row["vitedge"] is None or 0 <= row["vitedge"]["test_accuracy"] <= 1
        assert {r["family"] for r in c["baselines"]} == {"pomt", "topk", "flops_viterbi"}
        assert "max_drop_run" in c and "| budget |" in (out / "accuracy_budget.md").read_text()
    if script == "pareto":
        r = results[0]
        ort = r["reference"]["runtimes"]["onnxruntime"]
        assert {"topk", "random", "rctp_flops", "vitedge_threshold", "vitedge_capacity", "fisher_threshold", "fisher_capacity",
                "pomt"} <= set(ort["methods"])
        assert set(ort["ablation"]) == {"fisher_block", "fisher_raw", "cls_attention"}
        assert r["reference"]["torch_eager"]["methods"]["tome"]
        for pts in ort["methods"].values():
            for p in pts:
                assert p["measured_ms"] > 0 and p["p90_ms"] >= p["measured_ms"] and 0 <= p["accuracy"] <= 1
                assert len(p["mean_kept"]) == 6
        assert r["reference"]["random_path_check_max_abs_logit_diff"] < 1e-4
