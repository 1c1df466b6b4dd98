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
    "selector_variants": (["--quick", "--threads", "1", "--rounds", "1", "--runtimes", "onnxruntime"],
                          ["selector_variants.json", "selector_variants.md", "selector_variants.png"]),
    "onnx2tf_route": (["--quick", "--images", "4"], ["onnx2tf.json", "onnx2tf.md"]),  # only with onnx2tf
    "remote_devices": (["--quick", "--rounds", "1", "--kills", "1", "--limits", "min", "--calib-limit", "4"],
                       ["remote_devices.json", "remote_devices.md", "remote_devices.png"]),
    "bench_gate": (["--reps", "1", "--truth-pairs", "2", "--work", "{tmp}/work"], ["bench_gate.json", "bench_gate.md", "bench_gate.png"]),
    "pareto": (["--quick", "--points", "2", "--test-limit", "40", "--calib-limit", "24", "--tokens-step", "8",
                "--pomt-k-step", "2", "--eager-threads", "1"],
               ["pareto.json", "pareto.md", "pareto.png", "pareto_ablation.png", "pareto_table_onnxruntime.png"]),
    "footprint": (["--quick"], ["footprint.json", "footprint.md", "footprint.png"]),
    "accuracy_budget": (["--quick", "--budgets", "70", "--calib-limit", "32"],
                        ["accuracy_budget.json", "accuracy_budget.md", "accuracy_budget.png"]),
    "accuracy_drop": (["--quick"], ["accuracy_drop.json", "accuracy_drop.md", "accuracy_drop.png"]),
    "selection_rule": (["--quick"], ["selection_rule.json", "selection_rule.md", "selection_rule.png"]),
    "token_score": (["--quick"], ["token_score.json", "token_score.md", "token_score.png"]),
    "search_knobs": (["--quick"], ["search_knobs.json", "search_knobs.md", "search_knobs.png"]),
    "package_token": (["--quick"], ["package_token.json", "package_token.md", "package_token.png"]),
    "threshold_criteria": (["--quick"], ["threshold_criteria.json", "threshold_criteria.md", "threshold_criteria.png"]),
    "precision": (["--quick", "--skip-vit-small", "--skip-tflite"], ["precision.json", "precision.md", "precision.png"]),
    "precision_ops": (["--quick"], ["precision_ops.json", "precision_ops.md"]),
    "table_error": (["--quick"], ["table_error.json", "table_error.md", "table_error.png"]),
    "full_integer": (["--quick"], ["full_integer.json", "full_integer.md", "full_integer.png"]),
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


def _training(out: Path) -> None:
    t = json.loads((out / "training.json").read_text())
    assert t["model"] == REF and t["epochs"] == 1 and len(t["log"]) == 1 and t["log"][0]["loss"] > 0
    assert 0 <= t["test_top1"] <= 1 and 0 <= t["calib_top1"] <= 1 and "--epochs 1 --threads 1" in t["command"]
    assert REF in (out / "MODEL_CARD.md").read_text()


def _budget_fidelity(out: Path) -> None:
    r = json.loads((out / "budget_fidelity.json").read_text())["results"]
    assert [m["model"] for m in r] == [REF] and r[0]["unpruned_ms"] > 0 and len(r[0]["runs"]) == 1
    run = r[0]["runs"][0]
    assert 0 < run["budget_ms"] and (("measured_ms" in run) == ("ratio" in run))
    if "ratio" in run:
        assert run["measured_ms"] > 0 and run["ratio"] == pytest.approx(run["measured_ms"] / run["budget_ms"])
        assert (run["accuracy"] is None or 0 <= run["accuracy"] <= 1) and len(run["mean_kept"]) == 6


def _overhead(out: Path) -> None:
    r = json.loads((out / "overhead.json").read_text())["results"]
    assert [m["model"] for m in r] == [REF]
    assert set(r[0]["variants"]) == {"keep_all", "selectors_keep_all", "capacity_keep_all", "capacity_selectors"}
    for v in r[0]["variants"].values():
        assert v["a_median_ms"] > 0 and v["b_median_ms"] > 0 and v["rounds"] == 1
        assert v["overhead_pct"] == pytest.approx(100 * (v["ratio_median"] - 1))
    assert "Overhead with nothing pruned" in (out / "overhead.md").read_text()


def _speed(out: Path) -> None:
    r = json.loads((out / "speed.json").read_text())["results"]
    assert len(r["calibration_stage1_s"]) == len(r["plain_fwd_bwd_s"]) == 1 and r["images"] > 0
    assert r["profile_points"] > 0 and min(v for k, v in r.items() if k.endswith("_s") and not isinstance(v, list)) >= 0
    assert "search: 100 budgets" in (out / "speed.md").read_text()


def _modes(out: Path) -> None:
    r = json.loads((out / "modes.json").read_text())["results"]
    assert [m["model"] for m in r] == [REF] and r[0]["unpruned_ms"]["onnx"] > 0
    jobs = r[0]["jobs"]
    assert isinstance(jobs["threshold/tflite"], str) and "NonZero" in jobs["threshold/tflite"]
    for key in ("threshold/onnx", "capacity/onnx", "capacity/tflite"):
        assert len(jobs[key]) == 1 and jobs[key][0]["budget_ms"] > 0, key
    assert list(r[0]["accuracy_sweep"].values())[0][0]["budget_ms"] > 0


def _selector_variants(out: Path) -> None:
    r = json.loads((out / "selector_variants.json").read_text())["results"]
    assert r["model"] == REF and len(r["capacities"]) == 6 and r["runtimes"]
    for rows in r["runtimes"].values():
        for v in rows.values():
            assert v["a_median_ms"] > 0 and v["b_median_ms"] > 0 and v["rounds"] == 1


def _onnx2tf(out: Path) -> None:
    d = json.loads((out / "onnx2tf.json").read_text())
    assert d["variants"] and d["converter"]["onnx2tf"]
    for v in d["variants"]:
        assert v["parity_vs_onnx"]["max_abs_diff"] <= v["parity_vs_onnx"]["atol"], v["variant"]


def _remote_devices(out: Path) -> None:
    d = json.loads((out / "remote_devices.json").read_text())
    o, r = d["ssh_vs_local"], d["resume"]
    assert o["model"] == REF and o["points"] > 0 and len(o["wall_local_s"]) == len(o["wall_ssh_s"]) == 1
    assert r["points"] > 0 and len(r["rows_lost_per_kill"]) == r["kills"] and r["rows_lost_total"] == sum(r["rows_lost_per_kill"])
    assert d["targets"]["rows_lost"] == 0


def _bench_gate(out: Path) -> None:
    d = json.loads((out / "bench_gate.json").read_text())
    assert d["budget_ms"] > 0 and d["unpruned_ms"]["median"] > 0 and d["variants"]
    assert d["slowed"]["verdict"] in {"pass", "fail", "inconclusive", "unstable"} and d["slowed"]["ratio"] > 0
    assert set(d["summary"]) == set(d["runs"]) and d["runs"]
    for name, runs in d["runs"].items():
        assert d["summary"][name]["n"] == len(runs) >= 1, name
        for run in runs:
            assert run["exit_code"] in (0, 1, 3) and 0 < run["ci"][0] <= run["ci"][1] and run["pairs"] >= 2, name


# script -> what its results must contain (beyond existing and parsing)
CONTENT = {"train_reference": _training, "budget_fidelity": _budget_fidelity, "overhead": _overhead, "speed": _speed,
           "modes": _modes, "selector_variants": _selector_variants, "onnx2tf_route": _onnx2tf,
           "remote_devices": _remote_devices, "bench_gate": _bench_gate}


# Minutes each even in their tiny configuration (exports, TFLite conversions, A/B repetitions): kept out
# of the default run (`pytest -q -m "not slow"`, what CI runs within its 20 minutes); `pytest -q` runs them.
SLOW = {"budget_fidelity", "modes", "bench_gate", "onnx2tf_route", "accuracy_budget", "footprint", "precision",
        "precision_ops", "full_integer"}
# Scripts that measure in LiteRT: they need the tflite extra (skipped without it).
NEEDS_TFLITE = {"selector_variants", "modes", "full_integer"}


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
    if script in CONTENT:
        CONTENT[script](out)
    if script == "accuracy_budget":
        c = results[0]["configs"][0]
        assert c["config"] == "ort-threshold" and [r["fraction"] for r in c["at_budget"]] == [70]
        row = c["at_budget"][0]
        assert {"vitedge", "fisher", "pomt", "topk", "flops_viterbi"} <= set(row)
        assert row["vitedge"] is None or 0 <= row["vitedge"]["test_accuracy"] <= 1
        assert {r["family"] for r in c["baselines"]} == {"pomt", "topk", "flops_viterbi"}
        assert "max_drop_run" in c and "| budget |" in (out / "accuracy_budget.md").read_text()
    if script == "accuracy_drop":
        m = results[0]["models"][0]
        assert [(r["max_drop"], r["rule"]) for r in m["rows"]] == [(1, "own"), (1, "pooled"), (5, "own"), (5, "pooled")]
        for r in m["rows"]:  # each pick fits its own rule's bound; the pooled bound is never below the own one
            assert r["pooled_bound"] >= r["own_bound"] and (r["own_bound"] if r["rule"] == "own" else r["pooled_bound"]) <= r["max_drop"] + 1e-9 \
                or set(r["candidates"]) == {0}
            assert 0 < r["predicted_relative"] <= 1 + 1e-9 and -100 <= r["test_drop"] <= 100
    if script == "selection_rule":
        m = results[0]["models"][0]
        assert [r["fraction"] for r in m["rows"]] == [50, 70, 90]
        for r in m["rows"]:  # every pick fits its budget; both rankings answered every budget the baselines did
            picks = [r[k] for k in ("vitedge kl", "vitedge top1", "pomt", "constant") if r[k]]
            assert all(p["predicted_relative"] <= r["fraction"] / 100 + 1e-9 and 0 <= p["test_top1"] <= 1 for p in picks)
            assert (r["pomt"] is None) or (r["vitedge kl"] and r["vitedge top1"])
            if r["vitedge kl"] and r["vitedge top1"]:  # each ranking's pick is its own best on calibration
                assert r["vitedge kl"]["calib_kl"] <= r["vitedge top1"]["calib_kl"] or r["vitedge top1"]["family"] == "refined"
        assert set(m["mean_test_top1"]) == {"vitedge kl", "vitedge top1", "pomt", "constant"}
    if script == "search_knobs":
        m = results[0]["models"][0]
        assert [(x["images"], x["grid"], x["refine"]) for x in m["settings"]] == [(32, 4, 1), (16, 4, 0)]
        for x in m["settings"]:  # every pick fits its budget; the mean is over the answered budgets
            answered = [p for p in x["picks"] if p["pick"]]
            assert answered and all(p["pick"]["predicted_relative"] <= p["fraction"] / 100 + 1e-9 for p in answered)
            tops = [p["pick"]["test_top1"] for p in answered]
            assert x["mean_test_top1"] == pytest.approx(sum(tops) / len(tops)) and x["schedules"] > 0
    if script == "token_score":
        m = results[0]["models"][0]
        scores = ("cls-attention", "significance", "cumulative-significance")
        assert set(m["search"]) == set(scores) and set(m["single_cut_gain_points"]) == set(scores[1:])
        assert [(c["score"], c["site"], c["K"]) for c in m["single_cuts"]] == [(s, 1, k) for s in scores for k in (20, 45)]
        for s in m["search"].values():  # every pick fits its budget; the ceiling is at least as fast as the picks
            picks = [p for p in s["picks"] if p["pick"]]
            assert picks and all(p["pick"]["predicted_relative"] <= p["fraction"] / 100 + 1e-9 for p in picks)
            if s["fastest_pick_within_1_point"] is not None:
                assert s["ceiling_fastest_within_1_point"] <= s["fastest_pick_within_1_point"] + 1e-9
    if script == "package_token":
        m = results[0]["models"][0]
        variants = ("pruned tokens dropped", "package token")
        assert set(m["search"]) == set(variants) and set(m["single_cut_gain_points"]) == {"package token"}
        assert [(c["variant"], c["site"], c["K"]) for c in m["single_cuts"]] == [(v, 1, k) for v in variants for k in (20, 45)]
        for s in m["search"].values():  # every pick fits its budget (the package token counted in its prediction)
            picks = [p for p in s["picks"] if p["pick"]]
            assert picks and all(p["pick"]["predicted_relative"] <= p["fraction"] / 100 + 1e-9 for p in picks)
    if script == "threshold_criteria":
        for m in results[0]["models"]:
            assert [(r["site"], r["target_kept"]) for r in m["rows"]] == [(0, 20), (0, 45), (1, 20), (1, 45)]
            for r in m["rows"]:  # top-K keeps exactly K; every criterion was set to the target mean on calibration
                assert r["top-K"]["calib_mean_kept"] == r["top-K"]["test_mean_kept"] == r["target_kept"]
                for c in ("threshold", "normalised threshold", "attention mass"):
                    assert abs(r[c]["calib_mean_kept"] - r["target_kept"]) <= 1.0 and 0 <= r[c]["test_top1"] <= 1
    if script == "precision":
        rows = results[0]["runs"][0]["rows"]
        assert {"unpruned fp32", "unpruned int8 dynamic", "pruned fp32", "pruned int8 dynamic", "pruned int8 static"} <= set(rows)
        assert rows["pruned fp32"]["agreement_with_pruned_fp32"] == 1.0 and rows["unpruned fp32"]["ratio_to_unpruned_fp32"] == 1.0
        assert all(0 <= r["test_top1"] <= 1 and r["median_ms"] > 0 for r in rows.values())
        assert [t["precision"] for t in results[0]["runs"][0]["table_prediction"]] == ["fp32", "int8"]
    if script == "full_integer":
        rows = results[0]["runs"][0]["rows"]
        assert {"pruned int8 static", "pruned int8 dynamic", "pruned fp32"} <= set(rows)
        assert rows["pruned int8 static"]["median_ms"] > 0 and 0 <= rows["pruned int8 static"]["agreement_with_pruned_fp32"] <= 1
    if script == "table_error":
        run = results[0]["runs"][0]
        assert [(r["schedule"], r["precision"]) for r in run["rows"]] == [
            ("late", "fp32"), ("late", "int8"), ("early", "fp32"), ("early", "int8")]
        assert all(r["measured_ms"] > 0 and r["predicted_ms"] > 0 and r["raw_predicted_ms"] > 0 for r in run["rows"])
        assert set(run["fits"]) == {"fp32", "int8"} and all(len(f["tokens"]) == 2 for f in run["fits"].values())
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
