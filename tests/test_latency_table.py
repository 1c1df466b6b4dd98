"""Latency tables (vitedge.tables.latency): lookups, whole-model prediction, search costs, file IO."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from conftest import FIXED_MS, OVERHEAD, make_table, part_formulas
from vitedge.tables.latency import FORMAT, VERSION, LatencyTable, LatencyTableError

N, P1 = 17, 1  # 16 patch tokens + CLS


def att(n):
    return 0.3 + 0.01 * n + 0.0005 * n * n   # overhead already removed


def sel(n):
    return 0.02 + 0.001 * n


def mlp(n):
    return 0.1 + 0.02 * n


CONST = OVERHEAD + 0.5 + 0.2  # one call + embed + head, each part without its own overhead


# ------------------------------------------------------------------------------ lookups

def test_part_ms_subtracts_overhead(synthetic_table):
    t = synthetic_table
    assert t.num_tokens == N and t.overhead_ms == OVERHEAD
    for n in (1, 5, 17):
        assert t.part_ms("attention", n) == pytest.approx(att(n))
        assert t.part_ms("selector", n) == pytest.approx(sel(n))
        assert t.part_ms("mlp", n) == pytest.approx(mlp(n))
    ns = np.array([[1, 2], [16, 17]])
    np.testing.assert_allclose(t.part_ms("mlp", ns), mlp(ns))
    assert t.part_ms("mlp", ns).shape == (2, 2)
    assert t.fixed_ms("embed") == pytest.approx(0.5) and t.fixed_ms("head") == pytest.approx(0.2)
    assert t.fixed_ms("run_overhead") == OVERHEAD  # as measured
    assert t.base_ms() == pytest.approx(CONST + att(N))


def test_part_ms_clamps_at_zero():
    t = make_table(selector=np.full(N, OVERHEAD / 2))  # faster than the empty call: noise
    assert np.all(t.part_ms("selector", np.arange(1, N + 1)) == 0.0)


@pytest.mark.parametrize("n", [0, 18, -3, [1, 18], [0, 5]])
def test_part_ms_out_of_range(synthetic_table, n):
    with pytest.raises(LatencyTableError) as err:
        synthetic_table.part_ms("attention", n)
    assert "outside the table" in str(err.value) and "1..17" in str(err.value)


# ------------------------------------------------------------------------------ predict_ms

def test_predict_ms_three_blocks_by_hand(synthetic_table):
    t = synthetic_table
    kept = np.array([10, 10, 4])  # patch tokens leaving blocks 1..3
    # default selectors: where a block keeps fewer tokens than it received (blocks 1 and 3)
    n_in, n_out = [17, 11, 11], [11, 11, 5]
    expected = CONST + sum(att(a) + mlp(b) for a, b in zip(n_in, n_out)) + sel(17) + sel(11)
    assert float(t.predict_ms(kept)) == pytest.approx(expected)
    # explicit selectors: block 2 also runs a selector that keeps everything
    expected_all = expected + sel(11)
    assert float(t.predict_ms(kept, np.array([True, True, True]))) == pytest.approx(expected_all)
    no_sel = CONST + sum(att(a) + mlp(b) for a, b in zip(n_in, n_out))
    assert float(t.predict_ms(kept, np.zeros(3, bool))) == pytest.approx(no_sel)


def test_predict_ms_unpruned_and_per_image(synthetic_table):
    t = synthetic_table
    full = float(t.predict_ms(np.full(3, 16)))
    assert full == pytest.approx(CONST + 3 * (att(17) + mlp(17)))  # no selector anywhere
    kept = np.array([[16, 8], [16, 8], [16, 2]])  # (L, D): image 0 unpruned, image 1 pruned
    out = t.predict_ms(kept)
    assert out.shape == (2,)
    # selectors are per block (any image pruned there): blocks 1 and 3 charge a selector for both images
    e0 = CONST + 3 * (att(17) + mlp(17)) + 2 * sel(17)
    e1 = CONST + att(17) + mlp(9) + att(9) + mlp(9) + att(9) + mlp(3) + sel(17) + sel(9)
    np.testing.assert_allclose(out, [e0, e1])
    assert out[1] < out[0]


# ------------------------------------------------------------------------------ candidate_costs

def test_candidate_costs_by_hand(synthetic_table):
    t = synthetic_table
    # (L=3, M=2, D=2): candidate 0 keeps all 16, candidate 1 prunes
    kept = np.array([[[16, 16], [8, 4]],
                     [[16, 16], [6, 6]],
                     [[16, 16], [2, 0]]])
    cost, base = t.candidate_costs(kept)
    assert cost.shape == (3, 2)
    assert base == pytest.approx(CONST + att(17)) and base == pytest.approx(t.base_ms())

    def blk(ns, last):
        return np.mean([mlp(n + P1) + (0.0 if last else att(n + P1)) for n in ns])

    expected = np.array([[blk([16, 16], False), blk([8, 4], False) + sel(17)],
                         [blk([16, 16], False), blk([6, 6], False) + sel(17)],
                         [blk([16, 16], True), blk([2, 0], True) + sel(17)]])  # last block: no next attention
    np.testing.assert_allclose(cost, expected)
    # keeping everything everywhere reproduces the unpruned prediction
    assert base + cost[:, 0].sum() == pytest.approx(float(t.predict_ms(np.full(3, 16))))


def test_candidate_costs_agree_with_predict_ms_for_flat_selector():
    t = make_table(selector=np.full(N, 0.07))  # a selector whose time does not depend on n
    rng = np.random.default_rng(0)
    kept = np.sort(rng.integers(0, 17, size=(3, 4, 1)), axis=1)[:, ::-1]  # one image, M = 4
    cost, base = t.candidate_costs(kept)
    for ms in ([0, 0, 0], [0, 1, 3], [2, 2, 3], [1, 3, 3]):
        k = np.array([kept[l, m, 0] for l, m in enumerate(ms)])
        selectors = np.array(ms) > 0
        total = base + sum(cost[l, m] for l, m in enumerate(ms))
        assert total == pytest.approx(float(t.predict_ms(k, selectors)))


# ------------------------------------------------------------------------------ checks

def _shape(**over):
    s = {"dim": 32, "num_heads": 2, "mlp_ratio": 4.0, "depth": 3, "num_tokens": 17, "num_prefix": 1,
         "input_size": (3, 32, 32)}
    s.update(over)
    return s


def test_check_model(synthetic_table):
    synthetic_table.check_model(_shape())  # tuple vs list input size is the same shape
    for key, value in (("dim", 64), ("depth", 4), ("num_tokens", 65), ("num_prefix", 2), ("num_heads", 3),
                       ("mlp_ratio", 2.0), ("input_size", (3, 64, 64))):
        with pytest.raises(LatencyTableError) as err:
            synthetic_table.check_model(_shape(**{key: value}), source="t.json")
        msg = str(err.value)
        assert key in msg and "t.json" in msg and "\n" not in msg


def test_check_device(synthetic_table):
    synthetic_table.check_device("local", "onnxruntime", 1)
    for args, key in ((("pi5", "onnxruntime", 1), "name"), (("local", "litert", 1), "runtime"),
                      (("local", "onnxruntime", 4), "threads")):
        with pytest.raises(LatencyTableError) as err:
            synthetic_table.check_device(*args)
        assert f"{key}=" in str(err.value) and "\n" not in str(err.value)


# ------------------------------------------------------------------------------ IO

def test_save_load_round_trip(tmp_path, synthetic_table):
    synthetic_table.protocol = {"warmup": 1}
    synthetic_table.meta = {"points": 54}
    path = tmp_path / "sub" / "table.json"
    synthetic_table.save(path)
    assert [p.name for p in path.parent.iterdir()] == ["table.json"]  # atomic, no temp left
    back = LatencyTable.load(path)
    assert back.to_dict() == json.loads(json.dumps(synthetic_table.to_dict()))
    assert back.to_dict()["format"] == FORMAT and back.to_dict()["version"] == VERSION
    ks = np.array([16, 8, 3])
    assert float(back.predict_ms(ks)) == pytest.approx(float(synthetic_table.predict_ms(ks)))


def _write(tmp_path, mutate):
    d = make_table().to_dict()
    mutate(d)
    path = tmp_path / "t.json"
    path.write_text(json.dumps(d))
    return path


def _set(keys, value):
    def mutate(d):
        for k in keys[:-1]:
            d = d[k]
        d[keys[-1]] = value
    return mutate


def _drop(keys):
    def mutate(d):
        for k in keys[:-1]:
            d = d[k]
        del d[keys[-1]]
    return mutate


@pytest.mark.parametrize("mutate, needle", [
    (_set(["format"], "something-else"), "not a vitedge latency table"),
    (_set(["version"], 2), "version 2"),
    (_drop(["version"]), "version None"),
    (_set(["parts", "mlp", "median_ms"], [1.0] * 16), "16 median_ms entries, expected 17"),
    (_set(["parts", "attention", "p90_ms"], [1.0] * 18), "18 p90_ms entries"),
    (_set(["parts", "selector", "median_ms"], [1.0] * 16 + [math.nan]), "failed measurements"),
    (_drop(["parts", "selector"]), "missing"),
    (_drop(["fixed", "run_overhead"]), "missing"),
    (_drop(["model", "num_tokens"]), "missing"),
])
def test_load_errors(tmp_path, mutate, needle):
    path = _write(tmp_path, mutate)
    with pytest.raises(LatencyTableError) as err:
        LatencyTable.load(path)
    msg = str(err.value)
    assert needle in msg and "\n" not in msg and str(path) in msg


def test_load_missing_and_not_json(tmp_path):
    with pytest.raises(LatencyTableError, match="does not exist"):
        LatencyTable.load(tmp_path / "missing.json")
    for content in (b"{not json", b"\xff\xfe\x00garbage"):
        path = tmp_path / "bad.json"
        path.write_bytes(content)
        with pytest.raises(LatencyTableError) as err:
            LatencyTable.load(path)
        assert "not valid JSON" in str(err.value) and "\n" not in str(err.value)
    path = tmp_path / "list.json"
    path.write_text("[1, 2, 3]")
    with pytest.raises(LatencyTableError, match="not a vitedge latency table"):
        LatencyTable.load(path)
    assert issubclass(LatencyTableError, ValueError)


def test_fixed_formulas_consistent():
    # guard for the synthetic table itself: medians are the formulas plus one overhead
    med = part_formulas(N)
    np.testing.assert_allclose(med["attention"] - OVERHEAD, att(np.arange(1, N + 1)))
    assert FIXED_MS["run_overhead"] == OVERHEAD
