"""Reference tables from papers (SPViT Table 2, ZCU102): the numbers exactly as published, with
their source; linear interpolation between rows; coverage enforced (no extrapolation beyond rate
0.5); the planner's interface; and `vitedge search --latency-table zcu102-spvit-deit-s`."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from vitedge.calibration.store import build_calibration
from vitedge.cli.main import main
from vitedge.search import BudgetUnreachableError
from vitedge.search.reference import ReferencePlanner
from vitedge.tables.reference import (ReferenceTableError, available_references, is_reference_name,
                                      load_reference)

# SPViT (Kong et al., ECCV 2022) Table 2: latency of one DeiT block on the Xilinx ZCU102 FPGA board.
RATES = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5]
DEIT_T = [0.689, 0.630, 0.587, 0.509, 0.468, 0.424]
DEIT_S = [2.107, 1.891, 1.710, 1.503, 1.315, 1.121]
PAPER = Path(__file__).resolve().parents[2] / "shared" / "papers" / "spvit-kong2022-latency-aware-soft-token-pruning.md"


def test_numbers_and_source_exactly_as_published():
    assert available_references() == ["zcu102-spvit-deit-s", "zcu102-spvit-deit-t"]
    for name, ms, dim in (("zcu102-spvit-deit-s", DEIT_S, 384), ("zcu102-spvit-deit-t", DEIT_T, 192)):
        t = load_reference(name)
        assert t.rates.tolist() == RATES and t.block_ms.tolist() == ms
        assert t.model["dim"] == dim and t.num_tokens == 197 and t.model["depth"] == 12
        assert t.source["arxiv"] == "2112.13890" and t.source["table"].startswith("Table 2: Latency of one DeiT block")
        assert t.device["name"] == "zcu102"


def test_numbers_match_the_papers_text():
    if not PAPER.is_file():
        pytest.skip(f"{PAPER} not available")
    text = PAPER.read_text()
    rows = {m.group(1): [float(x) for x in m.group(2).split()]
            for m in re.finditer(r"^(DeiT-[TS]) Latency \(ms\)\s+([\d.\s]+?)$", text, re.M)}
    assert rows == {"DeiT-T": DEIT_T, "DeiT-S": DEIT_S}
    assert re.search(r"^Pruning Rate\s+0\.0\s+0\.1\s+0\.2\s+0\.3\s+0\.4\s+0\.5$", text, re.M)


def test_interpolation_and_coverage():
    t = load_reference("zcu102-spvit-deit-s")
    assert t.block_latency(197) == pytest.approx(2.107)
    n = 197 * (1 - 0.05)  # halfway between the rows at 0.0 and 0.1
    assert t.block_latency(n) == pytest.approx((2.107 + 1.891) / 2)
    assert t.block_latency(99) == pytest.approx(np.interp(1 - 99 / 197, RATES, DEIT_S))  # rate 0.4975
    with pytest.raises(ReferenceTableError, match="covers pruning rates up to 0.5.*no extrapolation"):
        t.block_latency(98)  # rate 0.5025
    assert t.block_latency(98, clamp=True) == pytest.approx(1.121)
    assert is_reference_name("zcu102-spvit-deit-s") and not is_reference_name("table.json")


def _calibration(seed=0, L=12, D=6, P=196, M=41):
    rng = np.random.default_rng(seed)
    scores = rng.dirichlet(np.ones(P + 1), size=(L, D))[..., 1:].astype(np.float32)
    fisher = (rng.random((L, D, P)) ** 2).astype(np.float32)
    meta = {"model": "deit_small_patch16_224", "model_hash": "m" * 16, "image_set_hash": "i" * 16, "label_source": "model"}
    return build_calibration(scores, fisher, rng.integers(0, 5, D), dim=384, num_prefix=1, meta=meta, num_candidates=M)


def test_planner_interface_costs_and_prediction():
    t, cal = load_reference("zcu102-spvit-deit-s"), _calibration()
    cost, base = t.candidate_costs(cal.kept)
    assert cost.shape == cal.kept.shape[:2] and base == 2.107 and np.all(cost[-1] == 0)
    assert cost[0, 0] == pytest.approx(2.107)  # keeping all 196 patches: block 2 runs at rate 0
    kept_all = np.full(12, 196)
    assert t.predict_ms(kept_all) == pytest.approx(12 * 2.107)
    half = np.full(12, 98)  # 99 tokens per block: rate 0.4975
    assert t.predict_ms(half) == pytest.approx(2.107 + 11 * float(np.interp(1 - 99 / 197, RATES, DEIT_S)))
    with pytest.raises(ReferenceTableError):
        t.predict_ms(np.full(12, 60))


def test_search_respects_the_coverage():
    t, cal = load_reference("zcu102-spvit-deit-s"), _calibration()
    planner = ReferencePlanner(cal, t)
    assert planner.full == pytest.approx(25.284)
    covered = t.covered(cal.kept)
    assert not covered.all() and covered[:, 0].all()  # heavy pruning is out of the table
    for budget in (24.0, 20.0, planner.min_budget + 0.01):
        s = planner.solve(budget)
        assert s.predicted <= budget and all(covered[l, m] for l, m in enumerate(s.candidates))
        kept = np.asarray([cal.kept[l, m] for l, m in enumerate(s.candidates)])
        assert float(t.predict_ms(kept).mean()) == pytest.approx(s.predicted)  # inside the table: no error
        assert s.meta["latency_table"]["reference"] == t.name
        assert s.candidates == sorted(s.candidates)
    with pytest.raises(BudgetUnreachableError) as e:
        planner.solve(planner.min_budget * 0.9)
    msg = str(e.value)
    assert "covers (pruning rates up to 0.5" in msg and "no extrapolation" in msg and "\n" not in msg
    assert e.value.min_budget == pytest.approx(planner.min_budget)
    lines = planner.explain(planner.solve(20.0))
    assert "interpolated linearly" in lines[0] and len(lines) == 12 + 3


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("refcache"))


def _search(cache, out, *args):
    return CliRunner().invoke(main, ["search", "--model", "deit_small_patch16_224", "--calib-limit", "1", "--quiet",
                                     "--latency-table", "zcu102-spvit-deit-s", "--cache-dir", cache, "-o", str(out), *args],
                              catch_exceptions=False)


def test_cli_search_on_the_zcu102_table(cache, tmp_path):
    r = _search(cache, tmp_path / "s.json", "--budget-ms", "20")
    assert r.exit_code == 0, r.output
    assert "interpolated linearly" in r.stderr and "interpolated linearly" in r.stdout  # said, not hidden
    s = json.loads((tmp_path / "s.json").read_text())
    assert s["predicted"] <= 20 and s["meta"]["device"] == "zcu102"
    assert s["meta"]["latency_table"]["coverage"] == [0.0, 0.5]
    r = _search(cache, tmp_path / "s2.json", "--budget-ms", "5")
    assert r.exit_code == 2 and not (tmp_path / "s2.json").exists()
    err = r.stderr.strip().splitlines()[-1]
    assert err.startswith("error: budget 5 ms is below the smallest") and "zcu102-spvit-deit-s covers" in err
    r = _search(cache, tmp_path / "s3.json", "--budget-ms", "16", "--mode", "capacity")  # exact K per block (FPGA)
    assert r.exit_code == 0, r.output
    s = json.loads((tmp_path / "s3.json").read_text())
    assert s["mode"] == "capacity" and s["predicted"] <= 16 and "K=" in r.stdout


def test_cli_reference_table_needs_its_model(tmp_path, cache):
    r = CliRunner().invoke(main, ["search", "--model", "deit_tiny_patch16_224", "--quiet", "--budget-ms", "1", "--latency-table",
                                  "zcu102-spvit-deit-s", "--cache-dir", cache, "-o", str(tmp_path / "s.json")])
    assert r.exit_code == 2 and "pass --model deit_small_patch16_224" in r.stderr.strip().splitlines()[-1]


def test_reference_tables_are_for_search_only(cache):
    from vitedge.context import Context, Options
    from vitedge.tables.latency import LatencyTableError

    ctx = Context(Options(model="deit_small_patch16_224", cache_dir=cache, progress=False), log=lambda m: None)
    with pytest.raises(LatencyTableError, match="use it with `vitedge search`"):
        ctx.latency_table("zcu102-spvit-deit-s")


def test_capacity_mode_uses_exact_rates_inside_the_table():
    t, cal = load_reference("zcu102-spvit-deit-s"), _calibration()
    planner = ReferencePlanner(cal, t, mode="capacity", min_patch_tokens=1)
    assert planner.capacities.min() == 98 and planner.capacities.max() == 196  # 99..197 tokens: rates 0..0.4975
    assert planner.min_budget == pytest.approx(2.107 + 11 * float(np.interp(1 - 99 / 197, RATES, DEIT_S)), abs=0.01)
    for budget in (24.0, 20.0, 16.0):
        s = planner.solve(budget)
        assert s.mode == "capacity" and s.predicted <= budget
        assert float(t.predict_ms(np.array(s.predicted_kept, int))) == pytest.approx(s.predicted)  # K_l exactly
    with pytest.raises(BudgetUnreachableError, match="covers"):
        planner.solve(14.0)
