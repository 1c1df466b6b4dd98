"""The measured objective: batched quality of pruned models (vitedge.quality) and the schedule search
over it (vitedge.search.measured), on tiny timm ViTs with real calibrations and a synthetic table."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import NUM_PATCHES, make_config, make_table
from vitedge.calibration import calibrate
from vitedge.data.digits import ImageSet
from vitedge.evaluate import evaluate_pruned
from vitedge.models.adapter import PrunableViT
from vitedge.quality import QualityEvaluator
from vitedge.search import BudgetUnreachableError
from vitedge.search.measured import MeasuredSearch, SearchKnobs
from vitedge.search.planner import Planner

D = 24


def image_set(D: int = D, labels: bool = True, seed: int = 7) -> ImageSet:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(D, 3, 32, 32, generator=g).numpy()
    y = np.arange(D) % 5 if labels else None
    return ImageSet(x, y, "random")


def thresholds_from_scores(model: PrunableViT, images: ImageSet, quantiles) -> list:
    """θ_l at a quantile of block l's unpruned CLS scores (so each selector keeps a sensible share)."""
    with torch.no_grad():
        out = model.forward_with_info(torch.from_numpy(images.images), want_scores=True)
    return [None if q is None else float(np.quantile(s.numpy(), q)) for s, q in zip(out.scores, quantiles)]


@pytest.mark.parametrize("key, score, package", [
    ("plain", "cls-attention", False), ("distilled", "cls-attention", False), ("avg_pool", "cls-attention", False),
    ("registers", "cls-attention", False), ("layerscale", "cls-attention", False),
    ("plain", "cumulative-significance", False), ("avg_pool", "cumulative-significance", False),
    ("registers", "cumulative-significance", False),
    ("plain", "cls-attention", True), ("distilled", "significance", True), ("avg_pool", "significance", True),
    ("registers", "cumulative-significance", True)])
@pytest.mark.parametrize("depth", [3])
def test_batched_quality_equals_batch1_forward(key, score, package, depth):
    """Threshold and capacity mode: kept counts and predictions of the batched, masked evaluation
    equal the deployed batch-1 forward (tokens really removed) image by image; also with a score averaged over
    the blocks since the previous selector (selectors after a block without one, after one with one), and with
    the package token (merged, sized, its attention bias under padding)."""
    vit, _ = make_config(key, depth=depth)
    model = PrunableViT(vit)
    model.token_score = score
    model.package_token = package
    ims = image_set()
    ev = QualityEvaluator(model, ims, batch_size=10)  # uneven chunks on purpose
    ref = evaluate_pruned(model, ims).top1
    assert np.array_equal(ev.reference_top1, ref)
    for quantiles in ([0.5, None, 0.6], [None, 0.3, 0.8], [0.2, 0.2, None]):
        thr = thresholds_from_scores(model, ims, quantiles)
        q = ev.evaluate("threshold", thr)
        e = evaluate_pruned(model, ims, thr, reference_top1=ref)
        assert np.array_equal(q.kept, e.kept) and np.array_equal(q.top1, e.top1)
        assert q.agreement == e.agreement and q.accuracy == e.accuracy
        assert q.kept[:, 0].tolist() != [NUM_PATCHES] * depth  # something was pruned
    for caps in ([10, None, 6], [None, 12, 12], [15, 4, 2], [16, 16, 16]):
        q = ev.evaluate("capacity", caps)
        e = evaluate_pruned(model, ims, capacities=caps, reference_top1=ref)
        assert np.array_equal(q.kept, e.kept) and np.array_equal(q.top1, e.top1)
    assert model.thresholds == [None] * depth and model.capacities == [None] * depth  # configuration untouched


@pytest.mark.parametrize("key", ["plain", "avg_pool"])
def test_single_cuts_share_images_across_values_and_modes(key):
    """Single cuts at one block over many thresholds, then capacities (an image whose count another cut gave
    reuses that cut's result, in either mode): each equals the deployed forward and a fresh evaluator."""
    vit, _ = make_config(key, depth=3)
    model = PrunableViT(vit)
    ims = image_set()
    ev = QualityEvaluator(model, ims, batch_size=10)
    ref = evaluate_pruned(model, ims).top1
    schedules = [("threshold", [None, t, None]) for t in thresholds_from_scores(model, ims, [None, 0.5, None])[1:2]]
    schedules += [("threshold", [None, float(t), None]) for t in np.linspace(0.0, 0.1, 6)]
    schedules += [("capacity", [None, k, k]) for k in (1, 3, 8, 12, 15)]
    for mode, values in schedules:
        q = ev.evaluate(mode, values)
        args = {"capacities": values} if mode == "capacity" else {"thresholds": values}
        e = evaluate_pruned(model, ims, reference_top1=ref, **args)
        assert np.array_equal(q.kept, e.kept) and np.array_equal(q.top1, e.top1), (mode, values)
        fresh = QualityEvaluator(model, ims, batch_size=10).evaluate(mode, values)
        assert q.kl == pytest.approx(fresh.kl, rel=1e-5, abs=1e-7) and np.array_equal(q.top1, fresh.top1)
    assert len(ev._tails) < len(ims) * len(schedules)  # something was shared


def test_prefix_cache_is_bounded_and_does_not_change_results():
    vit, _ = make_config("plain", depth=3)
    model = PrunableViT(vit)
    ims = image_set()
    big, tiny = QualityEvaluator(model, ims), QualityEvaluator(model, ims, cache_mb=0.05)
    for caps in ([12, 8, 4], [12, 8, 2], [12, 6, 2], [10, 6, 2]):  # shared prefixes
        a, b = big.evaluate("capacity", caps), tiny.evaluate("capacity", caps)
        assert np.array_equal(a.top1, b.top1) and np.array_equal(a.kept, b.kept) and a.kl == pytest.approx(b.kl)
    assert 0 < tiny._state_bytes <= 0.05 * 2**20 < big._state_bytes
    assert tiny._state_bytes == sum(n for _, n in tiny._states.values())


def test_quality_metrics_and_cache():
    vit, _ = make_config("plain", depth=3)
    model = PrunableViT(vit)
    ims = image_set(labels=False)
    ev = QualityEvaluator(model, ims)
    keep = ev.evaluate("capacity", [None, None, None])
    assert keep.agreement == 1.0 and keep.kl == 0.0 and keep.accuracy is None and ev.drop_points(keep) == 0.0
    q = ev.evaluate("capacity", [2, 1, 1])
    assert q.kl > 0 and ev.drop_points(q) == pytest.approx(100 * (1 - q.agreement))
    n = ev.evaluations
    assert ev.evaluate("capacity", (2, 1, 1)) is q and ev.evaluations == n  # cached by value
    with pytest.raises(ValueError, match="expected 3 values"):
        ev.evaluate("capacity", [2, 1])
    with pytest.raises(ValueError, match="unknown mode"):
        ev.evaluate("topk", [2, 1, 1])


@pytest.fixture(scope="module")
def setup():
    """A tiny 3-block ViT, its real calibration (labelled images), and a synthetic latency table."""
    vit, _ = make_config("plain", depth=3, seed=3)
    model = PrunableViT(vit)
    ims = image_set(D=32, seed=11)
    cal = calibrate(model, ims, model_hash="m" * 16, image_set_hash="i" * 16, num_candidates=21, progress=False)
    table = make_table(N=NUM_PATCHES + 1, depth=3)
    sel = table.parts["selector"]
    table.parts["capacity_selector"] = {k: [2 * x for x in v] if k != "samples_ms" else v for k, v in sel.items()}
    return model, ims, cal, table


def single_cut_and_constant(search: MeasuredSearch, mode: str) -> list[tuple]:
    """The families the guarantee is about, enumerated here independently of the search's own code."""
    L, out = search.depth, []
    for l in range(L):
        for m in search.grid(mode):
            idx = [0] * L
            idx[l] = int(m)
            if mode == "capacity":
                idx[l:] = [int(m)] * (L - l)
            out.append(tuple(idx))
    if mode == "threshold":
        out += [(int(m),) * L for m in search.grid(mode)]
    else:
        caps, P = search.planners[mode].capacities, int(search.planners[mode].capacities[0])
        for r in range(1, P // L + 2):
            out.append(tuple(int(np.argmin(np.abs(caps - max(P - r * (l + 1), int(caps[-1]))))) for l in range(L)))
    return out


def deployed_kl(model: PrunableViT, ims: ImageSet, mode: str, values) -> float:
    """Mean KL(unpruned || pruned) of the softmax outputs, each image run alone as deployed (tokens removed)."""
    x = torch.from_numpy(ims.images)
    kw = {"capacities": values} if mode == "capacity" else {"thresholds": values}
    with torch.no_grad():
        ref = torch.log_softmax(model.vit(x), -1)
        with model.pruning(**kw):
            logp = torch.cat([torch.log_softmax(model.forward_with_info(x[i:i + 1]).logits, -1) for i in range(len(ims))])
    return float((ref.exp() * (ref - logp)).sum(-1).mean())


@pytest.mark.parametrize("rank", ["kl", "top1"])
@pytest.mark.parametrize("mode", ["threshold", "capacity", "auto"])
def test_chosen_schedule_never_worse_than_single_cut_or_constant_rate(setup, mode, rank):
    """The guarantee: on the calibration images, for every budget, the returned schedule is at least as
    good, by the quality that ranks (KL divergence from the unpruned outputs, or top-1 accuracy), as the
    best single-cut or constant-rate schedule whose predicted latency fits, each measured with the deployed
    batch-1 forward. ``auto``: both modes' planners, against both modes' families."""
    model, ims, cal, table = setup
    modes = ["threshold", "capacity"] if mode == "auto" else [mode]
    planners = [Planner(cal, "latency", table, mode=m, min_patch_tokens=model.min_patch_tokens) for m in modes]
    ev = QualityEvaluator(model, ims)
    search = MeasuredSearch(planners, ev, SearchKnobs(grid=8, sweep=6, refine=1), rank=rank)
    assert search.modes == tuple(modes)
    baseline = []
    ref = evaluate_pruned(model, ims).top1
    for m, planner in zip(modes, planners):
        for idx in single_cut_and_constant(search, m):
            values = search.values(idx, m)
            e = (evaluate_pruned(model, ims, capacities=values, reference_top1=ref) if m == "capacity"
                 else evaluate_pruned(model, ims, values, reference_top1=ref))
            sel = planner.schedule(idx, np.inf, 0.0).selectors
            pred = float(table.predict_ms(e.kept, np.array(sel), mode=m).mean())
            baseline.append((pred, e.accuracy if rank == "top1" else -deployed_kl(model, ims, m, values), m))
    preds = sorted(p for p, _, _ in baseline)
    budgets = np.linspace(preds[0], search.full, 7)
    chosen_modes = set()
    for b in budgets:
        chosen = search.best(float(b))
        best_base = max(a for p, a, _ in baseline if p <= b + 1e-12)
        assert chosen.predicted_ms <= b
        if rank == "top1":
            assert chosen.quality.accuracy >= best_base, (b, chosen, best_base)
        else:  # the batched KL equals the batch-1 one up to float summation order
            assert -chosen.quality.kl >= best_base - 1e-5, (b, chosen, best_base)
        chosen_modes.add(chosen.mode)
        s = search.schedule(chosen, float(b))
        assert s.mode == chosen.mode and list(s.candidates) == list(chosen.indices)
        values = s.capacities if s.mode == "capacity" else s.thresholds  # the schedule prunes as measured
        e = (evaluate_pruned(model, ims, capacities=values, reference_top1=ref) if s.mode == "capacity"
             else evaluate_pruned(model, ims, values, reference_top1=ref))
        assert e.accuracy == chosen.quality.accuracy and np.array_equal(e.kept, chosen.quality.kept)
    assert chosen_modes <= set(modes)
    s = search.solve(float(budgets[3]))
    assert s.meta["objective"] == "measured" and s.predicted <= budgets[3] and s.mode in modes
    with pytest.raises(BudgetUnreachableError, match="smallest reachable"):
        search.best(0.5 * preds[0])


def test_auto_mode_measures_both_modes_once(setup):
    """Both modes' families are evaluated on one evaluator; a candidate is cached per (mode, indices), so
    the same indices in the two modes are two schedules; one planner per mode."""
    model, ims, cal, table = setup
    planners = [Planner(cal, "latency", table, mode=m) for m in ("capacity", "threshold")]
    search = MeasuredSearch(planners, QualityEvaluator(model, ims), SearchKnobs(grid=4, sweep=2, refine=0))
    search.ensure_families()
    by_mode = {m: [c for c in search.candidates if c.mode == m] for m in search.modes}
    assert search.mode == "capacity" and all(len(v) > 3 for v in by_mode.values())
    assert {c.family for c in by_mode["threshold"]} >= {"single-cut", "constant-rate"}
    n = len(search.candidates)
    c = by_mode["threshold"][-1]
    assert search.evaluate("again", c.indices, "threshold") is c and len(search.candidates) == n
    rows = __import__("json").loads(__import__("json").dumps([c.to_dict() for c in search.candidates]))  # plain JSON
    assert {r["mode"] for r in rows} == {"capacity", "threshold"} and all(type(i) is int for r in rows for i in r["candidates"])
    with pytest.raises(ValueError, match="one planner per pruning mode"):
        MeasuredSearch([planners[0], planners[0]], QualityEvaluator(model, ims))


def test_ranking_by_kl_or_top1(setup):
    """``rank="kl"`` returns the fitting candidate of least KL, ``"top1"`` the one of best accuracy (KL breaks
    ties); both searches share nothing but the evaluations, and an unknown ranking is refused."""
    model, ims, cal, table = setup
    ev = QualityEvaluator(model, ims)
    planners = [Planner(cal, "latency", table, mode=m) for m in ("threshold", "capacity")]
    by = {r: MeasuredSearch(planners, ev, SearchKnobs(grid=6, sweep=3, refine=0), rank=r) for r in ("kl", "top1")}
    budget = float(np.median([c.predicted_ms for c in (by["kl"].ensure_families() or by["kl"].candidates)]))
    for rank, search in by.items():
        chosen = search.best(budget)
        fit = [c for c in search.candidates if c.predicted_ms <= budget]
        if rank == "kl":
            assert chosen.quality.kl == min(c.quality.kl for c in fit)
        else:
            assert chosen.quality.accuracy == max(c.quality.accuracy for c in fit)
            assert chosen.quality.kl == min(c.quality.kl for c in fit if c.quality.accuracy == chosen.quality.accuracy)
        assert search.solve(budget).meta["calibration_quality"]["kl"] == chosen.quality.kl
    with pytest.raises(ValueError, match="unknown ranking 'acc'"):
        MeasuredSearch(planners, ev, rank="acc")


def test_fastest_within_drop(setup):
    model, ims, cal, table = setup
    planner = Planner(cal, "latency", table, mode="capacity")
    search = MeasuredSearch(planner, QualityEvaluator(model, ims), SearchKnobs(grid=8, sweep=4, refine=1))
    zero = search.fastest_within(0.0)
    assert zero.drop_bound <= 1e-9 or set(zero.indices) == {0}
    loose = search.fastest_within(50.0)
    assert loose.drop_bound <= 50.0 and loose.drop <= loose.drop_bound and loose.predicted_ms <= zero.predicted_ms
    assert loose.predicted_ms < search.full  # 50 points allow pruning on this model
    for c in search.candidates:  # nothing evaluated is faster and within the drop
        if c.drop_bound <= 50.0:
            assert c.predicted_ms >= loose.predicted_ms
    with pytest.raises(ValueError, match="max-accuracy-drop"):
        search.fastest_within(-1)


def test_max_accuracy_drop_pools_the_drop_over_kl(setup):
    """A candidate that the calibration noise flattered (a small measured drop among higher-KL neighbours
    with larger drops) fails --max-accuracy-drop on the pooled (isotonic in KL) drop, though its own bound fits."""
    from vitedge.quality import Quality
    from vitedge.search.measured import Candidate

    model, ims, cal, table = setup
    search = MeasuredSearch(Planner(cal, "latency", table, mode="capacity"), QualityEvaluator(model, ims),
                            SearchKnobs(grid=4, sweep=2, refine=0))
    L = search.depth

    def cand(i, kl, drop, ms):
        q = Quality(agreement=1.0, kl=kl, accuracy=0.9, kept=np.zeros((L, 1), np.int64), top1=np.zeros(1, np.int64))
        return Candidate("capacity", "test", (i,) * L, q, ms, drop, drop + 1.0)  # margin: 1 point

    cands = [cand(0, 0.0, 0.0, 10.0), cand(1, 0.1, 1.0, 8.0), cand(2, 0.2, 0.0, 5.0), cand(3, 0.3, 3.0, 4.0),
             cand(4, 0.4, 4.0, 3.0)]
    search._cands = {("capacity", c.indices): c for c in cands}
    search._families_done = True
    bounds = search.drop_bounds()
    assert [round(bounds[id(c)], 6) for c in cands] == [1.0, 2.0, 1.5, 4.0, 5.0]  # max(own, isotonic 0, .5, .5, 3, 4 + 1)
    assert all(bounds[id(c)] >= c.drop_bound for c in cands)
    assert search.fastest_within(1.2) is cands[0]   # the flattered one (own bound 1.0) is refused
    assert search.fastest_within(1.5) is cands[2]
    assert search.fastest_within(10) is cands[4]


def test_drop_bound_is_a_paired_upper_bound():
    """drop = mean of per-image [unpruned right] - [pruned right]; bound = mean + 1.2816 x its standard error."""
    from vitedge.quality import Quality

    vit, _ = make_config("plain", depth=3)
    ev = QualityEvaluator(PrunableViT(vit), image_set(D=8))
    ref, lab = ev.reference_top1, ev.labels
    top1 = np.where(np.arange(8) < 4, lab, (lab + 1) % 5)  # right on the first 4 images only
    q = Quality(agreement=float((top1 == ref).mean()), kl=0.0, accuracy=float((top1 == lab).mean()), kept=None, top1=top1)
    d = (ref == lab).astype(float) - (top1 == lab)
    assert ev.drop_points(q) == pytest.approx(100 * d.mean())
    assert ev.drop_bound(q) == pytest.approx(100 * (d.mean() + 1.2816 * d.std(ddof=1) / np.sqrt(8)))
    ev.labels = None  # unlabelled: the share of changed predictions
    q = Quality(agreement=0.5, kl=0.0, accuracy=None, kept=None, top1=np.where(np.arange(8) < 4, ref, ref + 1))
    assert ev.drop_points(q) == pytest.approx(50.0) and ev.drop_bound(q) > 50.0


def test_knobs_are_checked():
    with pytest.raises(ValueError, match="grid"):
        SearchKnobs(grid=0)
    with pytest.raises(ValueError, match="refine"):
        SearchKnobs(refine=-1)


def test_measured_search_imports_no_torch():
    code = "import sys, vitedge.search.measured; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# -- the command line, on the shipped reference model (trained weights, so pruning changes predictions) --
@pytest.fixture(scope="module")
def cli(tmp_path_factory):
    from click.testing import CliRunner

    from vitedge.cli.main import main

    root = tmp_path_factory.mktemp("measured_cli")
    quick = ["--quiet", "--threads", "1", "--warmup", "1", "--runs", "5", "--min-time", "0", "--calib-limit", "48",
             "--cache-dir", str(root / "cache"), "--search-grid", "8"]

    def run(*args):
        return CliRunner().invoke(main, [*args, *quick], catch_exceptions=False)

    r = run("export", "--budget-ms", "10000", "-o", str(root / "u"))
    assert r.exit_code == 0, r.output
    rep = __import__("json").loads((root / "u" / "report.json").read_text())
    assert rep["objective"] == "keep-all" and rep["calibration_estimate"] is None  # fast path: no calibration
    r = run("search", "--budget-ms", "0.000001", "-o", str(root / "never.json"))
    assert r.exit_code == 2 and not (root / "never.json").exists()
    reach = float(r.stderr.strip().splitlines()[-1].rsplit("at least ", 1)[1])  # from the table, not a timing
    return run, root, reach


def test_cli_max_accuracy_drop_alone_and_with_budget(cli):
    import json

    run, root, reach = cli
    r = run("export", "--max-accuracy-drop", "2", "-o", str(root / "d"))
    assert r.exit_code == 0, r.output
    rep = json.loads((root / "d" / "report.json").read_text())
    est = rep["calibration_estimate"]
    assert rep["max_accuracy_drop"] == 2 and rep["budget_ms"] is None and rep["objective"] == "measured"
    assert est["drop_bound_points"] <= 2 and est["drop_points"] <= est["drop_bound_points"] and est["images"] == 48 and est["drop_measure"] == "accuracy (labelled)"
    assert rep["accuracy"]["available"] and "calibration_to_eval_gap_points" in rep["accuracy"]
    assert "accuracy drop <= 2 points" in r.stdout and "estimate" in r.stdout
    # both flags, impossible together: one line naming both numbers, exit 2, no output folder
    r = run("export", "--max-accuracy-drop", "0", "--budget-ms", f"{1.02 * reach:.4f}", "-o", str(root / "x"))
    assert r.exit_code == 2, r.output
    err = r.stderr.strip().splitlines()[-1]
    assert err.startswith("error: no schedule within") and "the fastest that does is predicted" in err and "the drop is" in err
    assert not (root / "x").exists()
    r = run("search", "--max-accuracy-drop", "2", "-o", str(root / "s.json"))
    assert r.exit_code == 0, r.output
    s = json.loads((root / "s.json").read_text())
    assert s["meta"]["objective"] == "measured" and s["meta"]["calibration_quality"]["drop_bound_points"] <= 2


def test_cli_objectives(cli):
    """Both objectives write schedules for the same budget; only the measured one carries its quality."""
    import json

    run, root, reach = cli
    out = {}
    for objective in ("measured", "fisher"):
        r = run("search", "--budget-ms", f"{2 * reach:.4f}", "--objective", objective, "-o", str(root / f"{objective}.json"))
        assert r.exit_code == 0, r.output
        out[objective] = json.loads((root / f"{objective}.json").read_text())
        assert out[objective]["predicted"] <= 2 * reach
    assert out["fisher"]["meta"].get("objective") is None and out["measured"]["meta"]["family"]
    assert "calibration_quality" in out["measured"]["meta"] and "calibration_quality" not in out["fisher"]["meta"]
    assert out["measured"]["meta"]["select_by"] == "kl"  # the default ranking
    r = run("search", "--budget-ms", f"{2 * reach:.4f}", "--select-by", "top1", "-o", str(root / "top1.json"))
    assert r.exit_code == 0, r.output
    assert json.loads((root / "top1.json").read_text())["meta"]["select_by"] == "top1"
    r = run("search", "--budget-ms", f"{2 * reach:.4f}", "--select-by", "loss", "-o", str(root / "bad.json"))
    assert r.exit_code == 2 and "kl" in r.output and not (root / "bad.json").exists()


def test_large_drop_warning_names_a_budget(setup):
    from vitedge.pipeline import large_drop_warning

    model, ims, cal, table = setup
    search = MeasuredSearch(Planner(cal, "latency", table, mode="capacity"), QualityEvaluator(model, ims),
                            SearchKnobs(grid=8, sweep=4, refine=1))
    assert large_drop_warning({"drop_points": 4.9}, search) is None and large_drop_warning(None, search) is None
    within = search.fastest_within(1.0)
    w = large_drop_warning({"drop_points": 12.5}, search, scale=2.0)
    assert w == (f"warning: estimated accuracy drop 12.5 points on the calibration images; a budget of about "
                 f"{2 * within.predicted_ms:.3g} ms keeps it within 1 point (or use --max-accuracy-drop 1)")


def test_budget_within_the_unpruned_noise_falls_back_to_the_search(tmp_path, monkeypatch):
    """A budget at or above the first unpruned measurement takes the keep-all fast path; when the keep-all
    export then measures over the budget, the job searches instead of shipping a model over budget."""
    from vitedge.context import MeasureConfig, Options, Context
    from vitedge.pipeline import run_export

    quick = MeasureConfig(warmup=1, min_runs=3, min_time_s=0.0)
    ctx = Context(Options(threads=1, calib_limit=32, cache_dir=str(tmp_path / "cache"), progress=False,
                          profile_config=quick, model_config=quick, search_knobs={"grid": 4}), log=lambda m: None)
    scripted = {"unpruned": 1.0, "keep_all": 2.0}  # then every pruned round: 0.5 ms
    monkeypatch.setattr(ctx.device, "measure_model", lambda path, feeds, name: {
        "median_ms": scripted.get(name, 0.5), "p90_ms": 1.0, "mad_ms": 0.0, "runs": 3})
    rep = run_export(ctx, 1.5, tmp_path / "out", log=lambda m: None)
    assert rep["objective"] == "measured" and rep["budget_met"] and rep["measured_ms"]["median"] == 0.5
    assert rep["notes"][0].startswith("budget 1.500 ms is near the unpruned latency") and rep["rounds"]


def test_cli_export_picks_the_mode(cli):
    """ONNX by default searches both pruning modes and exports the chosen one (capacity: no NonZero in the
    graph; threshold: NonZero); --mode threshold searches one mode only."""
    import json

    run, root, reach = cli
    for args, searched in (([], ["threshold", "capacity"]), (["--mode", "threshold"], ["threshold"])):
        out = root / f"mode{len(args)}"
        r = run("export", "--budget-ms", f"{1.5 * reach:.4f}", *args, "-o", str(out))
        assert r.exit_code in (0, 1), r.output  # 1: measured over budget after the closed loop (a busy machine)
        if r.exit_code == 1:
            continue
        rep = json.loads((out / "report.json").read_text())
        assert rep["modes_searched"] == searched and rep["mode"] in searched
        assert json.loads((out / "schedule.json").read_text())["mode"] == rep["mode"] == rep["schedule"]["mode"]
        assert ("NonZero" in rep["op_types"]) == (rep["mode"] == "threshold"), rep["op_types"]
    r = run("search", "--budget-ms", f"{1.5 * reach:.4f}", "--mode", "sideways", "-o", str(root / "bad.json"))
    assert r.exit_code == 2 and "auto" in r.output
