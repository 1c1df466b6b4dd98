"""TFLite export (vitedge.exporters.tflite) through litert-torch, run in ai-edge-litert with XNNPACK.

Conversions are slow (seconds each): one capacity-mode model and one batch of parts are converted
once per module and shared; one threshold-mode conversion checks the refusal. Everything else
reuses those files or builds its input without converting.
"""
from __future__ import annotations

import os
import sys

import numpy as np
import pytest
import torch

pytest.importorskip("litert_torch")
pytest.importorskip("ai_edge_litert")

from conftest import CLASSES, NUM_PATCHES, make_tiny_vit  # noqa: E402
from vitedge.data.digits import ImageSet  # noqa: E402
from vitedge.devices import MeasureConfig, get_device  # noqa: E402
from vitedge.devices.runner import RuntimeMissingError, open_session  # noqa: E402
from vitedge.exporters import tflite as tfl  # noqa: E402
from vitedge.exporters.graphs import FIXED_PARTS, PrunedModelGraph, part_module  # noqa: E402
from vitedge.exporters.onnx import ExportError, OpAuditError  # noqa: E402
from vitedge.exporters.tflite import (FORBIDDEN_TFLITE, TFLITE_PARTS, TFLiteUnavailableError, audit_tflite,  # noqa: E402
                                      check_parity_tflite, export_parts_tflite, export_tflite, op_counts,
                                      xnnpack_delegation)
from vitedge.exporters.validation import ParityError  # noqa: E402
from vitedge.models.adapter import PrunableViT  # noqa: E402
from vitedge.models.pruning import capacity_select  # noqa: E402
from vitedge.exporters.graphs import in_graph_tokens  # noqa: E402
from vitedge.tables.latency import IN_GRAPH, LatencyTableError  # noqa: E402

CAPS = [None, 8]
# comparison, logical, cast and sort-like ops: the capacity graph must need none of them
NOT_FLOAT_ONLY = {"LESS", "LESS_EQUAL", "GREATER", "GREATER_EQUAL", "EQUAL", "NOT_EQUAL", "LOGICAL_AND", "LOGICAL_OR",
                  "LOGICAL_NOT", "SELECT", "SELECT_V2", "WHERE", "CAST", "CUMSUM", "TOPK_V2", "ARG_MAX", "ARG_MIN",
                  "GATHER_ND", "SCATTER_ND", "NON_MAX_SUPPRESSION_V4", "NON_MAX_SUPPRESSION_V5", "UNIQUE"}


@pytest.fixture(scope="module")
def images():
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(17))
    return ImageSet(images=x.numpy(), labels=None, name="random")


@pytest.fixture(scope="module")
def capacity_tflite(tmp_path_factory):
    """The tiny ViT (16 patches, 2 blocks) keeping 8 patch tokens after block 2, converted once."""
    pm = PrunableViT(make_tiny_vit())
    pm.set_capacities(CAPS)
    folder = tmp_path_factory.mktemp("tflite")
    path = folder / "capacity.tflite"
    ops = export_tflite(PrunedModelGraph(pm).eval(), (torch.zeros(1, 3, 32, 32),), path)
    return pm, path, ops


@pytest.fixture(scope="module")
def parts_tflite(tmp_path_factory):
    """The profiled parts at n = p + 1 and N (one multi-signature file per part), converted once."""
    pm = PrunableViT(make_tiny_vit())
    folder = tmp_path_factory.mktemp("tflite-parts")
    tokens = [pm.num_prefix + 1, pm.num_tokens]
    return pm, folder, tokens, export_parts_tflite(pm, folder, tokens)


# ------------------------------------------------------------------------------ whole model

def test_export_writes_one_float_only_file(capacity_tflite):
    _, path, ops = capacity_tflite
    assert os.listdir(path.parent) == ["capacity.tflite"]             # atomic: no temp file left
    assert ops == op_counts(path) == audit_tflite(path)
    assert all(v > 0 for v in ops.values()) and list(ops) == sorted(ops)
    bad = {k for k in ops if k in FORBIDDEN_TFLITE or k in NOT_FLOAT_ONLY or k.startswith(("CUSTOM", "FLEX"))}
    assert not bad, bad
    assert {"CEIL", "MINIMUM", "MAXIMUM", "BATCH_MATMUL"} <= set(ops)  # the float step and the one-hot gather


def test_every_node_is_delegated_to_xnnpack(capacity_tflite):
    d = xnnpack_delegation(capacity_tflite[1])
    assert d.nodes > 0 and d.delegated == d.nodes and d.partitions == 1
    assert d.not_delegated == {} and d.all_delegated
    assert d.to_dict()["all_delegated"] is True


def test_parity_with_pytorch(capacity_tflite, images):
    pm, path, _ = capacity_tflite
    res = check_parity_tflite(pm, path, images)
    assert res.runtime == "litert" and res.images == 4
    assert res.max_abs_diff < 1e-4 and res.kept_match == 1.0 and res.top1_agreement == 1.0
    assert set(res.to_dict()) == {"runtime", "images", "max_abs_diff", "top1_agreement", "kept_match", "boundary_flips"}


@pytest.mark.parametrize("score", ["significance", "cumulative-significance"])
def test_significance_scores_convert_float_only_and_match(images, tmp_path, score):
    """The ATS significance score (``token_score="significance"``), also averaged over the blocks before the selector
    (``cumulative-significance``), converts to float-only ops XNNPACK runs."""
    pm = PrunableViT(make_tiny_vit())
    pm.token_score = score
    pm.set_capacities(CAPS)
    path = tmp_path / f"{score}.tflite"
    ops = export_tflite(PrunedModelGraph(pm).eval(), (torch.zeros(1, 3, 32, 32),), path)
    bad = {k for k in ops if k in FORBIDDEN_TFLITE or k in NOT_FLOAT_ONLY or k.startswith(("CUSTOM", "FLEX"))}
    assert not bad, bad
    assert xnnpack_delegation(path).all_delegated
    res = check_parity_tflite(pm, path, images)
    assert res.max_abs_diff < 1e-4 and res.kept_match == 1.0 and res.top1_agreement == 1.0


def test_package_token_converts_float_only_and_matches(images, tmp_path):
    """The package token (sized, its attention bias a constant in capacity mode) converts to float-only ops that
    XNNPACK runs, and matches PyTorch; depth 3 so that blocks after the first selector carry the bias."""
    pm = PrunableViT(make_tiny_vit(depth=3))
    pm.package_token = True
    pm.set_capacities([8, None, 4])
    path = tmp_path / "package.tflite"
    ops = export_tflite(PrunedModelGraph(pm).eval(), (torch.zeros(1, 3, 32, 32),), path)
    bad = {k for k in ops if k in FORBIDDEN_TFLITE or k in NOT_FLOAT_ONLY or k.startswith(("CUSTOM", "FLEX"))}
    assert not bad and "LOG" not in ops, bad
    assert xnnpack_delegation(path).all_delegated
    res = check_parity_tflite(pm, path, images)
    assert res.max_abs_diff < 1e-4 and res.kept_match == 1.0 and res.top1_agreement == 1.0


def test_parity_detects_other_capacities(capacity_tflite, images):
    pm, path, _ = capacity_tflite
    try:
        pm.set_capacities([None, 4])                                   # torch now keeps 4, the file keeps 8
        with pytest.raises(ParityError) as err:
            check_parity_tflite(pm, path, images, limit=2)
        msg = str(err.value)
        assert "kept tokens equal on 0/2" in msg and "\n" not in msg
    finally:
        pm.set_capacities(CAPS)


def test_litert_runner_session_runs_the_model(capacity_tflite, images):
    pm, path, _ = capacity_tflite
    sess = open_session("litert", str(path), 1)
    assert [s["shape"] for s in sess.input_specs] == [[1, 3, 32, 32]]
    assert sess.input_specs[0]["dtype"] == "float32" and sess.version.startswith("ai-edge-litert")
    for i in range(2):
        x = images.images[i:i + 1]
        logits, kept = sess.run({"image": x})                          # fed by position: the name differs
        with torch.no_grad():
            ref = pm.forward_with_info(torch.from_numpy(x))
        assert logits.shape == (1, CLASSES)
        np.testing.assert_allclose(logits, ref.logits.numpy(), atol=1e-4)
        assert np.asarray(kept).astype(np.int64).tolist() == [NUM_PATCHES, 8]
    with pytest.raises(ValueError, match="no signature"):
        sess.run({"image": np.zeros((1, 3, 16, 16), np.float32)})


# ------------------------------------------------------------------------------ audit and file checks

@pytest.mark.parametrize("counts, named", [({"ADD": 3, "TOPK_V2": 1}, "TOPK_V2"),
                                           ({"CUSTOM:FlexTopKV2": 1, "MUL": 1}, "CUSTOM:FlexTopKV2"),
                                           ({"STABLEHLO_SORT": 2}, "STABLEHLO_SORT"),
                                           ({"FLEX_WHATEVER": 1}, "FLEX_WHATEVER")])
def test_audit_rejects_forbidden_ops(monkeypatch, tmp_path, counts, named):
    monkeypatch.setattr(tfl, "op_counts", lambda path: dict(counts))
    with pytest.raises(OpAuditError) as err:
        audit_tflite(tmp_path / "model.tflite")
    msg = str(err.value)
    assert named in msg and "model.tflite" in msg and "\n" not in msg
    assert isinstance(err.value, ExportError)


def test_audit_passes_allowed_ops(monkeypatch, tmp_path):
    monkeypatch.setattr(tfl, "op_counts", lambda path: {"ADD": 2, "CEIL": 1})
    assert audit_tflite(tmp_path / "model.tflite") == {"ADD": 2, "CEIL": 1}


@pytest.mark.parametrize("content", [b"", b"not a tflite file\n" * 20, bytes(range(256)) * 16, "head64"])
def test_op_counts_rejects_unreadable_files(capacity_tflite, tmp_path, content):
    if content == "head64":
        content = capacity_tflite[1].read_bytes()[:64]
    bad = tmp_path / "bad.tflite"
    bad.write_bytes(content)
    with pytest.raises(ExportError, match="bad.tflite is not a readable .tflite file") as err:
        op_counts(bad)
    assert "\n" not in str(err.value)


def test_op_counts_rejects_a_truncated_file(capacity_tflite, tmp_path):
    buf = capacity_tflite[1].read_bytes()
    bad = tmp_path / "truncated.tflite"
    bad.write_bytes(buf[: len(buf) // 2])                              # e.g. an interrupted copy
    with pytest.raises(ExportError, match="not a readable"):
        op_counts(bad)


def test_threshold_mode_is_refused(tmp_path):
    pm = PrunableViT(make_tiny_vit())
    pm.set_thresholds([None, 0.05])
    path = tmp_path / "threshold.tflite"
    with pytest.raises(ExportError) as err:
        export_tflite(PrunedModelGraph(pm).eval(), (torch.zeros(1, 3, 32, 32),), path)
    msg = str(err.value)
    assert "capacity" in msg and "NonZero" in msg and "\n" not in msg
    assert not isinstance(err.value, TFLiteUnavailableError)
    assert os.listdir(tmp_path) == []                                  # nothing left behind


# ------------------------------------------------------------------------------ parts

def test_parts_files_map_every_part_and_n(parts_tflite):
    pm, folder, tokens, files = parts_tflite
    in_graph = {(IN_GRAPH, n) for n in in_graph_tokens(pm, tokens)}  # the in-graph reference at two n
    assert set(files) == {(part, n) for part in TFLITE_PARTS for n in tokens} | {(f, None) for f in FIXED_PARTS} | in_graph
    assert "selector" not in {part for part, _ in files}               # NonZero does not convert
    for (part, _), path in files.items():
        assert path == folder / f"{part}.tflite"                       # one multi-signature file per part
    assert sorted(os.listdir(folder)) == sorted(f"{p}.tflite" for p in (*TFLITE_PARTS, *FIXED_PARTS, IN_GRAPH))
    from ai_edge_litert.interpreter import Interpreter

    for part in TFLITE_PARTS:
        audit_tflite(folder / f"{part}.tflite")
        sigs = Interpreter(model_path=str(folder / f"{part}.tflite")).get_signature_list()
        assert set(sigs) == {f"n{n}" for n in tokens}
    for part in FIXED_PARTS:
        assert len(Interpreter(model_path=str(folder / f"{part}.tflite")).get_signature_list()) == 1


def test_litert_runner_picks_the_signature_by_shape(parts_tflite):
    pm, _, tokens, files = parts_tflite
    C, p = pm.dim, pm.num_prefix
    g = torch.Generator().manual_seed(4)
    att = open_session("litert", str(files[("attention", tokens[0])]), 1)
    cap = open_session("litert", str(files[("capacity_selector", tokens[0])]), 1)
    mlp = open_session("litert", str(files[("mlp", tokens[0])]), 1)
    for n in tokens:
        tok = torch.randn(1, n, C, generator=g)
        scores = torch.rand(1, n - p, generator=g)
        with torch.no_grad():
            ref_out, ref_scores = part_module(pm, "attention")(tok)
            ref_mlp = part_module(pm, "mlp")(tok)
        out, sc = att.run({"tokens": tok.numpy()})
        assert out.shape == (1, n, C) and sc.shape == (1, n - p)
        np.testing.assert_allclose(out, ref_out.numpy(), atol=1e-5)
        np.testing.assert_allclose(sc, ref_scores.numpy(), atol=1e-6)
        (kept,) = cap.run({"tokens": tok.numpy(), "scores": scores.numpy()})
        np.testing.assert_allclose(kept, capacity_select(tok, scores, n - p, p).numpy(), atol=1e-6)  # every token, best first
        (m,) = mlp.run({"tokens": tok.numpy()})
        np.testing.assert_allclose(m, ref_mlp.numpy(), atol=1e-5)
    with pytest.raises(ValueError, match="no signature"):
        att.run({"tokens": np.zeros((1, 5, C), np.float32)})           # n = 5 was not converted


def test_profile_with_litert_on_the_converted_parts(parts_tflite, monkeypatch):
    """profile() on the local LiteRT device: grid [1, p + 1, N], no threshold selector in the table."""
    from vitedge.profiling import profile

    pm, _, tokens, files = parts_tflite
    asked = []

    def reuse(model, folder, toks):                                    # the parts are already converted
        asked.append(list(toks))
        return files

    monkeypatch.setattr(tfl, "export_parts_tflite", reuse)
    device = get_device("local", runtime="litert", threads=1,
                        config=MeasureConfig(warmup=1, min_runs=3, min_time_s=0.0, reference_every=8))
    table = profile(pm, device, progress=False, tokens_step=16)
    assert asked == [[1, *tokens]]
    assert set(table.parts) == set(TFLITE_PARTS) and table.meta["format"] == "tflite"
    assert table.measured_tokens == tokens  # only what was measured (n >= p + 1)
    for part in TFLITE_PARTS:
        assert table.parts[part]["measured_tokens"] == tokens
        assert len(table.parts[part]["median_ms"]) == pm.num_tokens
    with pytest.raises(LatencyTableError, match="no selector part"):
        table.candidate_costs(np.array([[[16], [8]], [[16], [4]]]))    # threshold mode: not on LiteRT
    cost, base = table.candidate_costs(np.array([[[16], [8]], [[16], [4]]]), mode="capacity")
    assert cost.shape == (2, 2) and np.isfinite(cost).all() and base > 0


# ------------------------------------------------------------------------------ missing packages

def test_missing_litert_torch_raises_unavailable(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "litert_torch", None)             # import litert_torch -> ImportError
    pm = PrunableViT(make_tiny_vit())
    pm.set_capacities(CAPS)
    with pytest.raises(TFLiteUnavailableError, match=r"vitedge\[tflite\]") as err:
        export_tflite(PrunedModelGraph(pm).eval(), (torch.zeros(1, 3, 32, 32),), tmp_path / "m.tflite")
    assert "litert-torch" in str(err.value) and isinstance(err.value, ExportError)
    with pytest.raises(TFLiteUnavailableError):
        export_parts_tflite(pm, tmp_path, [2, 17])
    assert os.listdir(tmp_path) == []


def test_missing_ai_edge_litert_raises_unavailable(monkeypatch, capacity_tflite):
    path = capacity_tflite[1]
    for mod in ("ai_edge_litert", "ai_edge_litert.schema_py_generated", "ai_edge_litert.interpreter", "tflite_runtime"):
        monkeypatch.setitem(sys.modules, mod, None)
    with pytest.raises(TFLiteUnavailableError, match="ai-edge-litert"):
        op_counts(path)
    with pytest.raises(TFLiteUnavailableError, match="ai-edge-litert"):
        xnnpack_delegation(path)
    with pytest.raises(RuntimeMissingError, match="ai-edge-litert"):
        open_session("litert", str(path), 1)
