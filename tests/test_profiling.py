"""Profiling (vitedge.profiling) on the local onnxruntime device with a fast protocol.

Only correctness is checked (shapes, completeness, consistency), never speed.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from conftest import make_tiny_vit
from vitedge.devices import DeviceError, MeasureConfig, get_device
from vitedge.exporters.graphs import FIXED_PARTS, PARTS
from vitedge.models.adapter import PrunableViT
from vitedge.profiling import ProfileError, build_plan, model_shape, profile
from vitedge.tables.latency import IN_GRAPH, IN_GRAPH_REPEATS, LatencyTable, LatencyTableError

FAST = MeasureConfig(warmup=1, min_runs=3, min_time_s=0.0, reference_every=8)


@pytest.fixture(scope="module")
def tiny():
    return PrunableViT(make_tiny_vit())  # dim 32, depth 2, 32x32 input, patch 8 -> N = 17


@pytest.fixture(scope="module")
def device():
    return get_device("local", threads=1, config=FAST)


@pytest.fixture(scope="module")
def table(tiny, device, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("parts")
    t = profile(tiny, device, model_name="tiny-vit", progress=False, workdir=workdir)
    t.workdir = workdir
    return t


def test_table_has_every_part_at_every_n(table, tiny):
    N, p = tiny.num_tokens, tiny.num_prefix
    assert N == 17 and table.num_tokens == N
    assert set(table.parts) == set(PARTS)
    measured = list(range(p + 1, N + 1))  # n = p + 1 (one patch token) .. N; below that the table holds n = p + 1
    for part in PARTS:
        entry = table.parts[part]
        for key in ("median_ms", "p90_ms"):
            assert len(entry[key]) == N, (part, key)
        assert entry["measured_tokens"] == measured, part
        assert sorted(entry["samples_ms"], key=int) == [str(n) for n in measured], part
        med = np.asarray(entry["median_ms"], float)
        assert np.all(np.isfinite(med)) and np.all(med > 0)
        assert np.all(np.asarray(entry["p90_ms"], float) >= med - 1e-12)
        assert np.all(med[:p] == med[p])  # constant below the first measured n
        for n in measured:
            samples = entry["samples_ms"][str(n)]
            assert len(samples) >= FAST.min_runs and all(s > 0 for s in samples)
            assert med[n - 1] == pytest.approx(float(np.median(samples)))  # raw samples back the median
    assert table.meta["measured_tokens"] == list(range(p + 1, N + 1))  # onnxruntime: every n with a patch token
    assert table.meta["format"] == "onnx"


def test_fixed_parts(table):
    assert set(table.fixed) == set(FIXED_PARTS)
    for name in FIXED_PARTS:
        f = table.fixed[name]
        assert math.isfinite(f["median_ms"]) and f["median_ms"] > 0
        assert len(f["samples_ms"]) >= FAST.min_runs
        assert f["median_ms"] == pytest.approx(float(np.median(f["samples_ms"])))
    assert table.overhead_ms == table.fixed["run_overhead"]["median_ms"]


def test_device_and_protocol_recorded(table, device):
    d = table.device
    assert d["name"] == "local" and d["runtime"] == "onnxruntime" and d["threads"] == 1
    assert d["runtime_version"] == device.runtime_version() and d["environment"]["threads"] == 1
    table.check_device("local", "onnxruntime", 1)
    with pytest.raises(LatencyTableError):
        table.check_device("local", "onnxruntime", 2)
    assert table.protocol["warmup"] == 1 and table.protocol["min_runs"] == 3
    assert table.protocol["reference_every"] == 8
    assert table.meta["points"] == 4 * 16 + 3 + 2 * IN_GRAPH_REPEATS and table.meta["reference"] == "attention@17"  # + in-graph at 2 n
    assert len(table.drift["reference_medians_ms"]) >= 2  # first, periodic and last re-measurements


def test_model_shape_recorded(table, tiny):
    shape = model_shape(tiny)
    assert table.model["name"] == "tiny-vit"
    for key in ("dim", "num_heads", "mlp_ratio", "depth", "num_tokens", "num_prefix", "input_size", "arch_hash"):
        assert table.model[key] == shape[key], key
    assert (shape["dim"], shape["num_heads"], shape["depth"], shape["num_tokens"], shape["num_prefix"]) == (32, 2, 2, 17, 1)
    assert shape["input_size"] == [3, 32, 32] and shape["mlp_ratio"] == 4.0
    table.check_model(shape)
    other = model_shape(PrunableViT(make_tiny_vit("deit_tiny_distilled_patch16_224")))
    with pytest.raises(LatencyTableError):
        table.check_model(other)


def test_table_is_usable(table, tmp_path):
    """The measured table feeds the predictors and survives a save/load round trip."""
    full = float(table.predict_ms(np.full(2, 16)))
    assert math.isfinite(full) and full > 0
    cost, base = table.candidate_costs(np.array([[[16], [4]], [[16], [0]]]))
    assert cost.shape == (2, 2) and np.all(np.isfinite(cost)) and base > 0
    path = tmp_path / "table.json"
    table.save(path)
    back = LatencyTable.load(path)
    assert back.parts == table.parts and back.fixed == table.fixed and back.model == table.model


def test_workdir_holds_the_profiled_parts(table, tiny):
    files = sorted(p.name for p in Path(table.workdir).iterdir())
    dynamic = [f"{name}.onnx" for name in (*PARTS, *FIXED_PARTS, IN_GRAPH) if name != "capacity_selector"]
    per_n = [f"capacity_selector_n{n}.onnx" for n in range(tiny.num_prefix + 1, tiny.num_tokens + 1)]
    assert files == sorted(dynamic + per_n)


def test_model_shape_arch_hash_ignores_weights():
    a, b = PrunableViT(make_tiny_vit(seed=1)), PrunableViT(make_tiny_vit(seed=2))
    assert model_shape(a) == model_shape(b)
    c = PrunableViT(make_tiny_vit(qk_norm=True))
    assert model_shape(c)["arch_hash"] != model_shape(a)["arch_hash"]


# ------------------------------------------------------------------------------ plan

def _fake_parts(N: int = 17):
    files = {(name, None): Path(f"/parts/{name}.onnx") for name in (*PARTS, *FIXED_PARTS) if name != "capacity_selector"}
    files.update({("capacity_selector", n): Path(f"/parts/capacity_selector_n{n}.onnx") for n in range(1, N + 1)})
    return files


@pytest.mark.parametrize("name, prefix", [("vit_tiny_patch16_224", 1), ("deit_tiny_distilled_patch16_224", 2)])
def test_build_plan_covers_every_part_and_n(name, prefix):
    pm = PrunableViT(make_tiny_vit(name))
    N, C, p = pm.num_tokens, pm.dim, pm.num_prefix
    assert p == prefix
    plan = build_plan(pm, _fake_parts(N), list(range(1, N + 1)))
    assert plan["reference"] == f"attention@{N}"
    points = {pt["name"]: pt for pt in plan["points"]}
    assert len(points) == len(plan["points"])  # unique names
    assert plan["reference"] in points
    for part in PARTS:
        ns = sorted(pt["tags"]["tokens"] for pt in plan["points"] if pt["tags"]["part"] == part)
        assert ns == list(range(p + 1, N + 1)), part  # every part from n = p + 1 (one patch token)
    assert points[f"capacity_selector@{N}"]["model"] == f"/parts/capacity_selector_n{N}.onnx"  # one file per n
    for n in (p + 1, N):
        sel = points[f"selector@{n}"]
        assert sel["model"] == "/parts/selector.onnx"
        assert sel["inputs"] == {"tokens": {"shape": [1, n, C], "dtype": "float32"},
                                 "scores": {"shape": [1, n - p], "dtype": "float32"}}
    assert points["attention@3"]["inputs"] == {"tokens": {"shape": [1, 3, C], "dtype": "float32"}}
    assert points["embed"]["inputs"] == {"image": {"shape": [1, 3, 32, 32], "dtype": "float32"}}
    for fixed in ("head", "run_overhead"):
        assert points[fixed]["inputs"]["tokens"]["shape"] == [1, N, C]
        assert points[fixed]["tags"] == {"part": fixed}
    assert len(plan["points"]) == 4 * (N - p) + 3


def test_build_plan_token_subset(tiny):
    plan = build_plan(tiny, _fake_parts(), [1, 9, 17])
    ns = [pt["tags"]["tokens"] for pt in plan["points"] if pt["tags"].get("tokens") is not None]
    assert sorted(ns) == sorted([9, 17] * 4)  # n = 1 (no patch token) is never profiled


def test_profile_reports_failed_parts(tiny, monkeypatch):
    class Failing:
        name, runtime, threads = "fake", "onnxruntime", 1

        def run_plan(self, plan, on_point=None):
            rows = [{"name": pt["name"], "tags": pt["tags"], "error_code": 0, "error": None, "median_ms": 1.0,
                     "p90_ms": 1.0, "samples_ms": [1.0]} for pt in plan["points"]]
            rows[4].update(error_code=1, error="RuntimeError: bad shape", median_ms=None)
            return {"points": rows, "environment": {}, "config": {}, "drift": {}, "reference": plan["reference"]}

    with pytest.raises(ProfileError) as err:
        profile(tiny, Failing(), progress=False)
    msg = str(err.value)
    assert "1 of 73 parts failed on fake" in msg and "bad shape" in msg


def test_get_device_errors():
    with pytest.raises(DeviceError, match="unknown device"):
        get_device("toaster")
    with pytest.raises(DeviceError, match="unknown runtime"):
        get_device("local", runtime="tensorrt-llm")


# ------------------------------------------------------------------------------ token grid

def test_token_grid():
    from types import SimpleNamespace

    from vitedge.profiling import token_grid

    small = SimpleNamespace(num_tokens=17, num_prefix=1)
    assert token_grid(small, "onnxruntime") == list(range(1, 18))       # one dynamic graph: every n
    assert token_grid(small, "litert") == list(range(1, 18))            # N / 32 rounds to step 1
    big = SimpleNamespace(num_tokens=197, num_prefix=2)
    assert token_grid(big, "onnxruntime") == list(range(1, 198))
    grid = token_grid(big, "litert")                                    # static shapes: about 33 points
    assert grid == sorted(set(grid)) and {1, 3, 197} <= set(grid) and 30 <= len(grid) <= 40
    assert token_grid(big, "onnxruntime", 50) == [1, 3, 51, 101, 151, 197]  # explicit step; 1, p + 1, N always


class _FakeDevice:
    """Answers every point without measuring: median = n^2 / 10 ms for n-token parts, 1 ms for fixed parts."""

    name, runtime, threads, config = "fake", "onnxruntime", 1, None

    def run_plan(self, plan, on_point=None):
        rows = []
        for i, pt in enumerate(plan["points"]):
            n = pt["tags"].get("tokens")
            ms = 1.0 if n is None else n * n / 10
            rows.append({"name": pt["name"], "tags": pt["tags"], "index": i, "error_code": 0, "error": None,
                         "median_ms": ms, "p90_ms": ms * 1.5, "samples_ms": [ms]})
        return {"points": rows, "environment": {"threads": 1}, "config": {}, "reference": plan["reference"],
                "drift": {"reference_medians_ms": [28.9, 28.9], "tolerance": 0.1}}


def test_profile_on_a_token_grid_interpolates(tiny, tmp_path):
    t = profile(tiny, _FakeDevice(), progress=False, tokens_step=4, workdir=tmp_path)
    grid = [1, 2, 5, 9, 13, 17]                     # range(1, 18, 4) plus p + 1
    measured = [2, 5, 9, 13, 17]                    # n = 1 has no patch token: never profiled
    assert t.meta["measured_tokens"] == measured and t.meta["points"] == 4 * len(measured) + 3 + 2 * IN_GRAPH_REPEATS
    assert sorted(p.name for p in tmp_path.glob("capacity_selector_n*.onnx")) == \
        sorted(f"capacity_selector_n{n}.onnx" for n in measured)
    ns = np.arange(1, 18)
    for part in PARTS:
        entry = t.parts[part]
        assert entry["measured_tokens"] == measured
        assert sorted(entry["samples_ms"], key=int) == [str(n) for n in measured]
        want = np.interp(ns, measured, [n * n / 10 for n in measured])   # linear between measured n, flat below
        np.testing.assert_allclose(entry["median_ms"], want)
        np.testing.assert_allclose(entry["p90_ms"], want * 1.5)
        assert entry["median_ms"][2] == pytest.approx(0.4 + (2.5 - 0.4) / 3)  # n = 3, between 2 and 5
    assert all(t.fixed[f]["median_ms"] == 1.0 for f in FIXED_PARTS)


def test_profile_refuses_an_unsupported_runtime(tiny):
    class Tool(_FakeDevice):
        runtime = "benchmark_model"

    with pytest.raises(ProfileError, match="benchmark_model"):
        profile(tiny, Tool(), progress=False)
