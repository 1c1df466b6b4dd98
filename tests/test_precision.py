"""INT8 / FP16 exports (vitedge.precision, vitedge.quantized, vitedge.exporters.quantize): checks of the choice,
ONNX Runtime quantization of a tiny pruned export, its parity against the fp32 pruned model, quantized latency
tables and the CLI's refusals. Correctness only, never speed."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner

from conftest import IMG, make_table, make_tiny_vit
from vitedge.cli.main import main
from vitedge.data.digits import ImageSet
from vitedge.devices import MeasureConfig, get_device
from vitedge.errors import BadInput
from vitedge.exporters.graphs import export_pruned, export_unpruned
from vitedge.exporters.quantize import int8_ops, quantize_onnx, quantized_parity, score_path_matmuls
from vitedge.models.adapter import PrunableViT
from vitedge.precision import (MIN_TOP1_AGREEMENT, QuantizationParityError, check_precision, check_table_precision,
                               enforce_parity, precision_tag)
from vitedge.tables.latency import LatencyTableError

FAST = MeasureConfig(warmup=1, min_runs=3, min_time_s=0.0, reference_every=8)


@pytest.fixture(scope="module")
def tiny():
    return PrunableViT(make_tiny_vit())


@pytest.fixture(scope="module")
def calib():
    rng = np.random.default_rng(7)
    return ImageSet(rng.standard_normal((24, 3, IMG, IMG), dtype=np.float32), None, "random")


def _thresholds(model, images):
    """A threshold per block that keeps about half of the CLS scores of the first image (blocks 1..)."""
    with torch.no_grad():
        out = model.forward_with_info(torch.from_numpy(images.images[:1]), want_scores=True)
    return [float(np.median(s.numpy())) for s in out.scores]


@pytest.fixture(scope="module")
def pruned_fp32(tiny, calib, tmp_path_factory):
    path = tmp_path_factory.mktemp("q") / "pruned.onnx"
    thresholds = _thresholds(tiny, calib)
    with tiny.pruning(thresholds=thresholds):
        export_pruned(tiny, path)
    return path, thresholds


# -- the choice ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("precision,quant,fmt,runtime,needle", [
    ("fp16", "dynamic", "onnx", None, "not available for onnx"),
    ("bf16", "dynamic", None, None, "unknown precision"),
    ("int8", "sometimes", None, None, "unknown quantization"),
    ("fp16", "dynamic", None, "onnxruntime", "cannot run --precision fp16"),
])
def test_check_precision_refuses_what_cannot_run(precision, quant, fmt, runtime, needle):
    with pytest.raises(BadInput, match=needle) as e:
        check_precision(precision, quant, fmt=fmt, runtime=runtime)
    assert "\n" not in str(e.value) and e.value.exit_code == 2


@pytest.mark.parametrize("precision,quant,fmt,runtime", [
    ("fp32", "dynamic", "onnx", "onnxruntime"), ("int8", "dynamic", "onnx", "onnxruntime"),
    ("int8", "static", "onnx", "onnxruntime"), ("int8", "dynamic", "tflite", "litert"), ("fp16", "dynamic", "tflite", "litert"),
    ("int8", "static", "onnx", "command"), ("int8", "static", "tflite", "litert"),  # full-integer: the runner quantizes
])
def test_check_precision_accepts_what_runs(precision, quant, fmt, runtime):
    check_precision(precision, quant, fmt=fmt, runtime=runtime)


def test_precision_tags_are_distinct():
    tags = {precision_tag(p, q) for p in ("fp32", "fp16", "int8") for q in ("static", "dynamic")}
    assert tags == {"", "fp16", "int8s", "int8d"}


def test_a_table_of_another_precision_is_refused():
    table = make_table()
    check_table_precision(table.meta, "fp32")  # no record: fp32
    with pytest.raises(LatencyTableError, match="profiled at precision fp32, not int8"):
        check_table_precision(table.meta, "int8", "dynamic")
    table.meta.update(precision="int8", quantization="dynamic")
    check_table_precision(table.meta, "int8", "dynamic")
    with pytest.raises(LatencyTableError, match=r"int8 \(dynamic\), not int8 \(static\).*--quantization static"):
        check_table_precision(table.meta, "int8", "static")
    with pytest.raises(LatencyTableError, match="not fp32"):
        check_table_precision(table.meta, "fp32")


def test_parity_threshold_refuses_with_the_numbers():
    rep = {"precision": "int8", "images": 64, "top1_agreement": 0.8, "max_abs_logit_diff": 3.5, "kept_counts_differ": 0.5}
    with pytest.raises(QuantizationParityError, match=r"80\.0 % of 64.*at least 90 %.*3\.5.*50\.0 %") as e:
        enforce_parity(rep, path="model.onnx")
    assert e.value.exit_code == 5
    enforce_parity(dict(rep, top1_agreement=MIN_TOP1_AGREEMENT), path="model.onnx")


# -- ONNX Runtime quantization ---------------------------------------------------------------------------------
def test_score_path_matmuls_are_the_selector_blocks_qk(tiny, pruned_fp32, tmp_path):
    path, thresholds = pruned_fp32
    names = score_path_matmuls(onnx.load(str(path)))
    assert len(names) == sum(t is not None for t in thresholds) == 2
    export_unpruned(tiny, tmp_path / "u.onnx")
    assert score_path_matmuls(onnx.load(str(tmp_path / "u.onnx"))) == []


@pytest.mark.parametrize("method", ["static", "dynamic"])
def test_quantized_pruned_export_is_int8_sort_free_and_close(tiny, calib, pruned_fp32, tmp_path, method):
    path, thresholds = pruned_fp32
    feeds = [{"image": calib.images[i:i + 1]} for i in range(len(calib))]
    out = tmp_path / f"{method}.onnx"
    rec = quantize_onnx(path, out, feeds, method=method)
    assert rec["method"] == method and rec["calibration_images"] == (len(calib) if method == "static" else 0)
    assert len(rec["float_nodes"]) == 2  # the selectors' q.k MatMuls stay float
    assert not {"TopK", "Sort", "ArgSort"} & set(rec["op_types"])
    assert "NonZero" in rec["op_types"]  # the threshold selector survives quantization
    q = onnx.load(str(out))
    initializer_types = {i.data_type for i in q.graph.initializer}
    assert onnx.TensorProto.INT8 in initializer_types  # int8 weights
    ops = int8_ops(out)["int8"]
    assert ops and all(k.startswith(("Q", "Dynamic", "MatMulInteger", "Dequantize")) for k in ops)
    assert out.stat().st_size < path.stat().st_size
    with tiny.pruning(thresholds=thresholds):
        rep = quantized_parity(tiny, out, calib, limit=16)
    assert rep["images"] == 16 and 0 <= rep["kept_counts_differ"] <= 1
    assert rep["top1_agreement"] >= 0.75 and 0 < rep["max_abs_logit_diff"] < 1.0  # quantized: close, not exact


def test_static_quantization_without_images_is_refused(pruned_fp32, tmp_path):
    from vitedge.exporters.onnx import ExportError

    with pytest.raises(ExportError, match="needs calibration images"):
        quantize_onnx(pruned_fp32[0], tmp_path / "q.onnx", [], method="static")
    assert not list(tmp_path.iterdir())  # nothing written


def test_quantized_parity_counts_disagreement(tiny, calib, pruned_fp32, tmp_path):
    """A file from another model (other weights) must show low agreement and large logit differences."""
    path, thresholds = pruned_fp32
    other = PrunableViT(make_tiny_vit(seed=5))
    with other.pruning(thresholds=thresholds):
        export_pruned(other, tmp_path / "other.onnx")
    quantize_onnx(tmp_path / "other.onnx", tmp_path / "other_q.onnx", None, method="dynamic")
    with tiny.pruning(thresholds=thresholds):
        rep = quantized_parity(tiny, tmp_path / "other_q.onnx", calib, limit=24)
    assert rep["top1_agreement"] < MIN_TOP1_AGREEMENT and rep["max_abs_logit_diff"] > 0.1
    with pytest.raises(QuantizationParityError):
        enforce_parity(rep, path="other_q.onnx")


# -- latency tables of quantized parts -----------------------------------------------------------------------
def test_profile_at_int8_records_the_precision_and_times_int8_parts(tiny, tmp_path):
    from vitedge.profiling import profile

    dev = get_device("local", threads=1, config=FAST)
    table = profile(tiny, dev, progress=False, workdir=tmp_path, precision="int8", quantization="dynamic")
    assert table.meta["precision"] == "int8" and table.meta["quantization"] == "dynamic"
    att = onnx.load(str(tmp_path / "attention.onnx"))
    assert any(n.op_type == "DynamicQuantizeLinear" or n.op_type == "MatMulInteger" for n in att.graph.node)
    assert not list(tmp_path.glob("*.fp32.onnx"))  # the fp32 copies are gone
    N = tiny.num_tokens
    assert len(table.parts["attention"]["median_ms"]) == N and table.predict_ms([N - 1] * tiny.depth) > 0


# -- command line ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("args,needle", [
    (["export", "--budget-ms", "1", "--format", "onnx", "--precision", "fp16"], "not available for onnx"),
    (["search", "--budget-ms", "1", "--runtime", "onnxruntime", "--precision", "fp16"], "fp16"),
])
def test_cli_refuses_a_precision_the_target_cannot_run(args, needle, tmp_path):
    out = tmp_path / "out"
    r = CliRunner().invoke(main, [*args, "-o", str(out), "--cache-dir", str(tmp_path / "cache")])
    assert r.exit_code == 2, r.output
    lines = [x for x in r.output.splitlines() if x.startswith("error:")]
    assert len(lines) == 1 and needle in lines[0]
    assert not out.exists()


def test_api_checks_precision_keywords():
    import vitedge

    with pytest.raises(ValueError, match="precision= must be one of fp32, fp16, int8"):
        vitedge.profile(make_tiny_vit(), precision="int4")


# -- accuracy in the loop at int8 ------------------------------------------------------------------------------
def _int8_search():
    """(fp32 MeasuredSearch, its int8 QuantizedRerank, the int8 artifact) over a 3-block tiny model, 16 labelled images."""
    from types import SimpleNamespace

    from conftest import NUM_PATCHES
    from vitedge.calibration import calibrate
    from vitedge.context import Options
    from vitedge.pipeline import Artifact
    from vitedge.quality import QualityEvaluator
    from vitedge.quantized import with_precision
    from vitedge.quantized_search import QuantizedRerank, rerank_quantized
    from vitedge.search.measured import MeasuredSearch, SearchKnobs
    from vitedge.search.planner import Planner

    model = PrunableViT(make_tiny_vit(depth=3, seed=3))
    rng = np.random.default_rng(11)
    ims = ImageSet(rng.standard_normal((16, 3, IMG, IMG), dtype=np.float32), np.arange(16) % 5, "random")
    cal = calibrate(model, ims, model_hash="m" * 16, image_set_hash="i" * 16, num_candidates=11, progress=False)
    table = make_table(N=NUM_PATCHES + 1, depth=3)
    search = MeasuredSearch(Planner(cal, "latency", table, mode="threshold"), QualityEvaluator(model, ims),
                            SearchKnobs(grid=4, sweep=3, refine=0))
    ctx = SimpleNamespace(opts=Options(precision="int8", quantization="dynamic"), model=model, images=ims,
                          feeds=lambda n=32: [{"image": ims.images[i:i + 1]} for i in range(min(n, len(ims)))])
    artifact = with_precision(ctx, Artifact("onnx"))
    assert rerank_quantized(SimpleNamespace(opts=Options()), search, artifact) is search  # fp32: unchanged
    rr = rerank_quantized(ctx, search, artifact, log=lambda m: None)
    assert isinstance(rr, QuantizedRerank) and isinstance(rr, MeasuredSearch)
    search.ensure_families()
    return search, rr, artifact


def test_rerank_picks_the_best_quantized_candidate_among_fitting_ones():
    """QuantizedRerank keeps the fp32 search's candidates and, per budget, picks the fitting shortlist member whose
    int8 export scores best (here the scores are rigged so that the fp32 runner-up wins), and exports through the
    int8 route for real (its files are quantized ONNX)."""
    search, rr, artifact = _int8_search()
    budget = float(np.median([c.predicted_ms for c in search.candidates]))
    fp32_top = search.best(budget)
    fit = sorted(rr._fitting(budget), key=rr.key, reverse=True)
    assert len(fit) >= 2
    real = rr._quantized_score(fit[0])  # one real int8 export, run in ONNX Runtime
    assert 0.0 <= real <= 1.0 and (fit[0].mode, fit[0].indices) in rr.quantized_scores
    assert rr.quantized_top1[(fit[0].mode, fit[0].indices)].shape == (16,)
    rr.quantized_scores = {(c.mode, c.indices): (0.9 if c is fit[1] else 0.1) for c in fit}
    pick = rr.best(budget)
    assert pick is fit[1] and pick is not fp32_top and pick.predicted_ms <= budget
    assert artifact.reranks[-1]["pick"] == [fit[1].mode, [int(i) for i in fit[1].indices]]


def _rig(rr, cand, wrong: bool):
    """Give ``cand``'s quantized export rigged top-1: every image wrong, or the fp32 candidate's own predictions."""
    top1 = cand.quality.top1.copy()
    if wrong:
        top1 = (rr.evaluator.labels + 1) % 5
    rr.quantized_top1[(cand.mode, cand.indices)] = top1


def test_int8_quantized_bound_adds_the_drop_quantization_adds():
    """The bound of a quantized export is its fp32 bound plus the paired drop quantization adds (none when the int8
    file predicts as the fp32 candidate; large when it gets every image wrong); the unpruned model keeps its own."""
    search, rr, _ = _int8_search()
    pruned = [c for c in search.candidates if any(c.indices)][:2]
    _rig(rr, pruned[0], wrong=True)
    _rig(rr, pruned[1], wrong=False)
    drops = rr.evaluator.per_image_drop(rr.quantized_top1[(pruned[0].mode, pruned[0].indices)])
    added = 100 * float((drops - rr.evaluator.per_image_drop(pruned[0].quality.top1)).mean())
    assert added > 0 and rr.drop_bound_of(pruned[0]) == pytest.approx(search.drop_bound_of(pruned[0]) + added)
    assert rr.drop_bound_of(pruned[1]) == pytest.approx(search.drop_bound_of(pruned[1]))
    unpruned = search.evaluate("unpruned", [0] * search.depth)
    assert rr.drop_bound_of(unpruned) == search.drop_bound_of(unpruned)


def test_int8_max_accuracy_drop_holds_the_quantized_export(monkeypatch):
    """--max-accuracy-drop at int8: the fastest fp32 schedule within D whose int8 export drops more is refused; the
    candidates with less slack than the drop quantization added to it are passed over unexported; the first
    faster one with more slack whose int8 export keeps D ships; the unpruned model is the floor."""
    search, rr, artifact = _int8_search()
    D = 10.0
    fits = sorted((c for c in search.candidates if any(c.indices)), key=lambda c: (c.predicted_ms, -c.top1))
    assert len(fits) >= 3
    # fp32 bounds rigged (the tiny model's drops are all 0): slack 2, 1 and 8 points for the three fastest
    bounds = {id(c): 0.0 for c in search.candidates} | {id(fits[0]): 8.0, id(fits[1]): 9.0, id(fits[2]): 2.0}
    quantized = {id(fits[0]): 12.5, id(fits[2]): 2.0}  # quantization adds 4.5 points to fits[0], nothing to fits[2]
    exported = []

    def rigged(c, b=None):
        exported.append(c)
        return quantized.get(id(c), D + 5.0)

    monkeypatch.setattr(rr, "drop_bounds", lambda: bounds)
    monkeypatch.setattr(rr, "drop_bound_of", rigged)
    pick = rr.fastest_within(D)
    assert pick is fits[2] and exported == [fits[0], fits[2]]  # fits[1]: slack 1 < 4.5, passed over
    rec = artifact.reranks[-1]
    assert rec["pick"] == [pick.mode, [int(i) for i in pick.indices]] and rec["passed_over"] == 1
    assert [t["candidates"] for t in rec["tried"]] == [list(fits[0].indices), list(fits[2].indices)]
    quantized.clear()  # every export drops more: the unpruned floor
    assert not any(rr.fastest_within(D).indices)


def test_int8_budget_with_max_accuracy_drop_uses_the_quantized_bound():
    """With --budget-ms as well, the pick at the budget must keep D in its quantized export, else the one-line
    AccuracyBudgetError."""
    from vitedge.pipeline import AccuracyBudgetError, pick_for_accuracy

    search, rr, _ = _int8_search()
    budget = float(np.median([c.predicted_ms for c in search.candidates]))  # below the unpruned latency: pruned
    at = rr.best(budget)
    assert any(at.indices)
    _rig(rr, at, wrong=False)
    assert rr.drop_bound_of(at) >= search.drop_bound_of(at) - 1e-9
    assert pick_for_accuracy(rr, budget, 100.0).candidates == list(at.indices)
    _rig(rr, at, wrong=True)
    with pytest.raises(AccuracyBudgetError, match="keeps the accuracy drop within"):
        pick_for_accuracy(rr, budget, search.drop_bound_of(at) + 1.0)


def test_bench_precision_reads_the_file(tiny, calib, pruned_fp32, tmp_path):
    from vitedge.exporters.quantize import file_precision

    path, _ = pruned_fp32
    quantize_onnx(path, tmp_path / "q.onnx", None, method="dynamic")
    assert file_precision(path) == "fp32" and file_precision(tmp_path / "q.onnx") == "int8"
    r = CliRunner().invoke(main, ["bench", str(path), "--precision", "int8", "--rounds", "1"])
    assert r.exit_code == 2 and "is a fp32 model, not int8" in r.output and len(r.output.strip().splitlines()) == 1


def test_precision_artifact_exports_audits_and_checks_the_int8_file(tiny, calib, tmp_path):
    """The main job's route at int8: fp32 export kept beside the int8 file, the audit lists the int8 ops, parity has
    the fp32 file's exact check and the int8 numbers."""
    from vitedge.pipeline import Artifact
    from vitedge.quantized import PrecisionArtifact

    feeds = [{"image": calib.images[i:i + 1]} for i in range(len(calib))]
    art = PrecisionArtifact(Artifact("onnx"), "int8", "static", lambda: feeds, calib)
    assert art.suffix == ".onnx" and art.fmt == "onnx"
    thresholds = _thresholds(tiny, calib)
    path = tmp_path / "round0.onnx"
    with tiny.pruning(thresholds=thresholds):
        art.export(tiny, path)
        parity = art.parity(tiny, path, calib)
    assert (tmp_path / "round0.fp32.onnx").is_file() and path.is_file()
    audit = art.audit(path)
    assert audit["precision"]["precision"] == "int8" and audit["precision"]["quantization"] == "static"
    assert audit["precision"]["calibration_images"] == len(calib) and audit["precision"]["runtime_ops"]["int8"]
    assert "NonZero" in audit["op_types"] and "TopK" not in audit["op_types"]
    assert parity["fp32_export"]["max_abs_diff"] < 1e-4  # the fp32 file is exact
    assert parity["top1_agreement"] >= MIN_TOP1_AGREEMENT and parity["images"] == len(calib)
