"""The latency table's in-graph correction (LatencyTable.in_graph_fit): parts timed alone vs inside one graph."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from conftest import FIXED_MS, OVERHEAD, make_table
from vitedge.tables.latency import IN_GRAPH, IN_GRAPH_REPEATS, LatencyTable, LatencyTableError

DEPTH, N = 3, 17
HEAD = FIXED_MS["head"] - OVERHEAD


def att(n):
    return 0.3 + 0.01 * n + 0.0005 * n * n   # conftest's part formulas, overhead removed


def mlp(n):
    return 0.1 + 0.02 * n


def with_reference(beta: float, gamma: float, tokens=(6, N)) -> LatencyTable:
    """A table whose blocks reference runs each block at beta * (att + mlp) + gamma (ms)."""
    t = make_table(N=N, depth=DEPTH)
    med = [OVERHEAD + HEAD + DEPTH * (beta * (att(n) + mlp(n)) + gamma) for n in tokens]
    t.in_graph = {"tokens": list(tokens), "median_ms": med, "p90_ms": med, "samples_ms": [[m] for m in med]}
    return t


def test_fit_is_the_line_through_the_reference():
    fit = with_reference(1.4, 0.25).in_graph_fit()
    assert fit["fit"] == "line" and fit["beta"] == pytest.approx(1.4) and fit["gamma"] == pytest.approx(0.25)
    assert fit["tokens"] == [6, N]


def test_prediction_charges_parts_as_they_run_in_the_graph():
    t = with_reference(1.4, 0.25)
    kept = np.array([10, 10, 4])                 # blocks 1 and 3 have a selector (conftest: sel(n) = 0.02 + 0.001 n)
    n_in, n_out = [17, 11, 11], [11, 11, 5]
    blocks = sum(1.4 * (att(a) + mlp(b)) + 0.25 for a, b in zip(n_in, n_out))
    sels = 1.4 * ((0.02 + 0.001 * 17) + (0.02 + 0.001 * 11))
    fixed = OVERHEAD + (FIXED_MS["embed"] - OVERHEAD) + HEAD
    assert float(t.predict_ms(kept)) == pytest.approx(fixed + blocks + sels)
    raw = dataclasses.replace(t, in_graph={})    # without the reference: the parts as timed alone
    assert raw.in_graph_fit()["fit"] == "none"
    assert float(raw.predict_ms(kept)) == pytest.approx(float(make_table(N=N, depth=DEPTH).predict_ms(kept)))
    assert float(t.predict_ms(kept)) > float(raw.predict_ms(kept))
    # the unpruned prediction reproduces the reference at N exactly (embed added; the head is in both)
    unpruned = float(t.predict_ms(np.full(DEPTH, N - 1)))
    assert unpruned == pytest.approx(t.in_graph["median_ms"][1] + FIXED_MS["embed"] - OVERHEAD)


def test_a_negative_intercept_falls_back_to_the_ratio():
    t = with_reference(1.2, -0.2)
    fit = t.in_graph_fit()
    x = np.array([att(n) + mlp(n) for n in (6, N)])
    assert fit["fit"] == "ratio" and fit["gamma"] == 0.0
    assert fit["beta"] == pytest.approx((1.2 * x.sum() - 0.4) / x.sum())


def test_search_costs_use_the_correction():
    t = with_reference(2.0, 0.0)   # a line through the origin
    kept = np.array([[[16], [8]], [[16], [6]], [[16], [2]]])
    cost, base = t.candidate_costs(kept, mode="threshold")
    raw_cost, raw_base = dataclasses.replace(t, in_graph={}).candidate_costs(kept, mode="threshold")
    np.testing.assert_allclose(cost, 2 * raw_cost)
    assert base - raw_base == pytest.approx(att(N))   # block 1's attention, doubled
    assert base + cost[:, 0].sum() == pytest.approx(float(t.predict_ms(np.full(DEPTH, 16))))


def test_one_point_or_a_broken_reference_scales_through_the_origin():
    one = with_reference(1.5, 0.0, tokens=(N,)).in_graph_fit()
    assert one["fit"] == "ratio" and one["beta"] == pytest.approx(1.5)
    t = make_table(N=N, depth=DEPTH)
    med = [OVERHEAD, OVERHEAD]   # nothing left for the blocks: a broken measurement, not a correction
    t.in_graph = {"tokens": [6, N], "median_ms": med, "p90_ms": med, "samples_ms": [[m] for m in med]}
    assert t.in_graph_fit()["beta"] == 1.0 and t.in_graph_fit()["gamma"] == 0.0


def test_round_trip_and_malformed(tmp_path):
    t = with_reference(1.3, 0.1)
    t.save(tmp_path / "t.json")
    back = LatencyTable.load(tmp_path / "t.json")
    assert back.in_graph == t.in_graph and back.in_graph_fit() == t.in_graph_fit()
    t.in_graph["median_ms"] = t.in_graph["median_ms"][:1]
    t.save(tmp_path / "bad.json")
    with pytest.raises(LatencyTableError, match="in-graph reference is malformed"):
        LatencyTable.load(tmp_path / "bad.json")


def test_profile_measures_the_reference(tmp_path):
    """A real (tiny) profile on this machine's ONNX Runtime: the blocks reference at two n, finite, used."""
    from conftest import make_tiny_vit
    from vitedge.devices import MeasureConfig, get_device
    from vitedge.models.adapter import PrunableViT
    from vitedge.profiling import profile

    model = PrunableViT(make_tiny_vit())
    dev = get_device("local", threads=1, config=MeasureConfig(warmup=1, min_runs=3, min_time_s=0.0))
    t = profile(model, dev, progress=False, workdir=tmp_path)
    assert t.in_graph["tokens"] == [6, N] and (tmp_path / f"{IN_GRAPH}.onnx").is_file()
    assert all(len(s) >= 3 * IN_GRAPH_REPEATS for s in t.in_graph["samples_ms"])  # min_runs 3, repeated
    assert all(np.isfinite(t.in_graph["median_ms"])) and t.in_graph_fit()["beta"] > 0


@pytest.mark.parametrize("beta, gamma", [(0.2, 0.8), (2.5, -0.5)])
def test_an_implausible_slope_falls_back_to_the_ratio(beta, gamma):
    """A slope outside IN_GRAPH_SLOPE (noise between the two reference points on a loaded machine) is not believed:
    0.2 would make every pruned schedule cost about as much as the unpruned one."""
    from vitedge.tables.latency import IN_GRAPH_SLOPE

    assert not IN_GRAPH_SLOPE[0] <= beta <= IN_GRAPH_SLOPE[1]
    t = with_reference(beta, gamma)
    fit = t.in_graph_fit()
    x = np.array([att(n) + mlp(n) for n in (6, N)])
    assert fit["fit"] == "ratio" and fit["gamma"] == 0.0
    assert fit["beta"] == pytest.approx((beta * x.sum() + 2 * gamma) / x.sum())
    assert with_reference(1.4, 0.8).in_graph_fit()["fit"] == "line"  # a plausible one is


def test_an_implausible_reference_is_ignored():
    """A reference whose ratio to the parts is outside IN_GRAPH_SLOPE as well (a stall while the N-token point was
    timed: here 6x) is a failed measurement: no correction, the parts as timed alone."""
    t = with_reference(1.0, 0.0)
    t.in_graph = {**t.in_graph, "median_ms": [t.in_graph["median_ms"][0], 6 * t.in_graph["median_ms"][1]]}
    fit = t.in_graph_fit()
    assert fit["fit"] == "ignored" and fit["beta"] == 1.0 and fit["gamma"] == 0.0
    kept = np.array([10, 10, 4])
    raw = dataclasses.replace(t, in_graph={})
    assert float(t.predict_ms(kept)) == pytest.approx(float(raw.predict_ms(kept)))
