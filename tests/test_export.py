"""ONNX export (vitedge.exporters): sort-free pruned graph, op audit, parity, parts, atomic writes."""
from __future__ import annotations

import os

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper

from conftest import CLASSES, NUM_PATCHES, make_tiny_vit
from vitedge.data.digits import ImageSet
from vitedge.exporters.graphs import (FIXED_PARTS, PARTS, export_parts, export_pruned, export_unpruned, min_tokens,
                                      part_inputs, part_module)
from vitedge.tables.latency import IN_GRAPH
from vitedge.exporters.onnx import ExportError, FORBIDDEN_OPS, OpAuditError, audit_ops, export_onnx
from vitedge.exporters.validation import ParityError, check_parity
from vitedge.models.adapter import PrunableViT
from vitedge.models.pruning import capacity_select


def _session(path):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def distilled():
    """A tiny distilled DeiT (2 prefix tokens, 3 blocks) and 6 seeded random images."""
    pm = PrunableViT(make_tiny_vit("deit_tiny_distilled_patch16_224", depth=3))
    g = torch.Generator().manual_seed(7)
    x = torch.randn(6, 3, 32, 32, generator=g)
    with torch.no_grad():
        s = pm.forward_with_info(x, want_scores=True).scores
    # thresholds at the pooled median: each pruned block keeps about half of its tokens
    theta0, theta2 = float(s[0].median()), float(s[2].median())
    return pm, x, [theta0, None, theta2]


@pytest.fixture(scope="module")
def pruned_export(distilled, tmp_path_factory):
    pm, x, thresholds = distilled
    pm.set_thresholds(thresholds)
    folder = tmp_path_factory.mktemp("pruned")
    path = folder / "pruned.onnx"
    proto = export_pruned(pm, path)
    return pm, x, path, proto


@pytest.fixture(scope="module")
def parts_export(distilled, tmp_path_factory):
    pm = distilled[0]
    folder = tmp_path_factory.mktemp("parts")
    return pm, folder, export_parts(pm, folder)


def test_export_pruned_is_valid_and_sort_free(pruned_export):
    pm, _, path, proto = pruned_export
    assert path.is_file()
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    ops = audit_ops(proto)
    assert ops["NonZero"] == 2 and ops["GreaterOrEqual"] == 2   # one selector per thresholded block
    assert "TopK" not in ops and not (set(ops) & FORBIDDEN_OPS)
    assert list(ops) == sorted(ops) and all(v > 0 for v in ops.values())
    sess = _session(path)
    assert [i.name for i in sess.get_inputs()] == ["image"]
    assert [o.name for o in sess.get_outputs()] == ["logits", "kept_tokens"]


def test_export_is_atomic(pruned_export):
    path = pruned_export[2]
    assert sorted(os.listdir(path.parent)) == ["pruned.onnx"]  # no temp file left


def test_pruned_export_parity(pruned_export):
    pm, x, path, _ = pruned_export
    images = ImageSet(images=x.numpy(), labels=None, name="random")
    report = check_parity(pm, path, images)
    assert report.images == 6
    assert report.max_abs_diff < 1e-4
    assert report.kept_match == 1.0 and report.top1_agreement == 1.0
    # kept tokens really vary: the graph prunes, it is not the unpruned model
    sess = _session(path)
    kept = np.array([sess.run(None, {"image": x[i:i + 1].numpy()})[1] for i in range(6)])
    assert kept.shape == (6, 3) and kept.dtype == np.int64
    assert (kept[:, 0] < NUM_PATCHES).all() and (kept[:, 1] == kept[:, 0]).all() and (kept[:, 2] <= kept[:, 1]).all()


@pytest.mark.parametrize("score", ["significance", "cumulative-significance"])
def test_threshold_export_with_significance_scores(tmp_path, score):
    """``token_score="significance"`` (ATS token scoring), also averaged over the blocks since the previous selector
    (``cumulative-significance``: block 2's selector averages blocks 1 and 2), exports sort-free and matches PyTorch,
    kept counts included."""
    pm = PrunableViT(make_tiny_vit("deit_tiny_distilled_patch16_224", depth=3))
    pm.token_score = score
    x = torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        s = pm.forward_with_info(x, want_scores=True).scores
    pm.set_thresholds([float(s[0].median()), None, float(s[2].median())])
    path = tmp_path / f"{score}.onnx"
    ops = audit_ops(export_pruned(pm, path))
    assert ops["NonZero"] == 2 and ops["Sqrt"] >= 2 and "TopK" not in ops and not (set(ops) & FORBIDDEN_OPS)
    report = check_parity(pm, path, ImageSet(images=x.numpy(), labels=None, name="random"))
    assert report.max_abs_diff < 1e-4 and report.kept_match == 1.0 and report.top1_agreement == 1.0
    kept = np.array([_session(path).run(None, {"image": x[i:i + 1].numpy()})[1] for i in range(6)])
    assert (kept[:, 0] < NUM_PATCHES).all() and len(set(kept[:, 0])) > 1   # image-dependent counts: it prunes


def test_check_parity_detects_disagreement(pruned_export, tmp_path):
    pm, x, path, _ = pruned_export
    images = ImageSet(images=x[:2].numpy(), labels=None, name="random")
    saved = pm.thresholds
    try:
        pm.set_thresholds([None] * pm.depth)  # torch now prunes nothing, the file still prunes
        with pytest.raises(ParityError) as err:
            check_parity(pm, path, images)
        assert "\n" not in str(err.value)
        report = check_parity(pm, path, images, raise_on_failure=False)
        assert report.kept_match == 0.0
    finally:
        pm.set_thresholds(saved)
    # a file with other outputs is refused
    bad = tmp_path / "unpruned.onnx"
    export_unpruned(pm, bad)
    with pytest.raises(ParityError, match="outputs"):
        check_parity(pm, bad, images)


def test_export_unpruned_matches_timm(distilled, tmp_path):
    pm, x, _ = distilled
    path = tmp_path / "unpruned.onnx"
    proto = export_unpruned(pm, path)
    ops = audit_ops(proto)
    assert "NonZero" not in ops
    sess = _session(path)
    assert [o.name for o in sess.get_outputs()] == ["logits"]
    with torch.no_grad():
        for i in range(3):
            ref = pm.vit(x[i:i + 1]).numpy()
            (got,) = sess.run(None, {"image": x[i:i + 1].numpy()})
            assert got.shape == (1, CLASSES)
            np.testing.assert_allclose(got, ref, atol=1e-4)


# ------------------------------------------------------------------------------ op audit

def _model(nodes, inputs, outputs, opset_imports=None):
    graph = helper.make_graph(nodes, "g", inputs, outputs)
    return helper.make_model(graph, opset_imports=opset_imports or [helper.make_opsetid("", 18)])


def _vec(name, n=None):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, [n])


def test_audit_rejects_topk():
    k = helper.make_tensor("k", TensorProto.INT64, [1], [2])
    nodes = [helper.make_node("Constant", [], ["kk"], value=k),
             helper.make_node("TopK", ["x", "kk"], ["v", "i"])]
    model = _model(nodes, [_vec("x", 4)], [_vec("v", 2), helper.make_tensor_value_info("i", TensorProto.INT64, [2])])
    onnx.checker.check_model(model)  # a valid graph, only the audit refuses it
    with pytest.raises(OpAuditError) as err:
        audit_ops(model)
    msg = str(err.value)
    assert "TopK" in msg and "\n" not in msg
    assert isinstance(err.value, ExportError)


def test_audit_rejects_custom_domain():
    node = helper.make_node("FancyGelu", ["x"], ["y"], domain="com.example")
    model = _model([node], [_vec("x", 4)], [_vec("y", 4)],
                   [helper.make_opsetid("", 18), helper.make_opsetid("com.example", 1)])
    with pytest.raises(OpAuditError, match="com.example::FancyGelu"):
        audit_ops(model)


def test_audit_looks_into_subgraphs():
    then_g = helper.make_graph([helper.make_node("Identity", ["x"], ["t"])], "then", [], [_vec("t", 4)])
    else_g = helper.make_graph([helper.make_node("Unique", ["x"], ["e"])], "else", [], [_vec("e")])
    cond = helper.make_tensor_value_info("c", TensorProto.BOOL, [])
    node = helper.make_node("If", ["c"], ["y"], then_branch=then_g, else_branch=else_g)
    model = _model([node], [cond, _vec("x", 4)], [_vec("y")])
    with pytest.raises(OpAuditError, match="Unique"):
        audit_ops(model)


def test_audit_counts_allowed_ops():
    nodes = [helper.make_node("Relu", ["x"], ["a"]), helper.make_node("Relu", ["a"], ["b"]),
             helper.make_node("Abs", ["b"], ["y"], domain="ai.onnx")]
    assert audit_ops(_model(nodes, [_vec("x", 4)], [_vec("y", 4)])) == {"Abs": 1, "Relu": 2}


def test_failed_export_leaves_nothing(tmp_path):
    class Broken(torch.nn.Module):
        def forward(self, x):
            raise RuntimeError("boom\nsecond line")

    path = tmp_path / "broken.onnx"
    with pytest.raises(ExportError) as err:
        export_onnx(Broken(), (torch.zeros(1, 4),), path, input_names=["x"], output_names=["y"])
    assert "\n" not in str(err.value) and "boom" in str(err.value)
    assert os.listdir(tmp_path) == []


def test_export_onnx_refuses_forbidden_ops_and_keeps_no_file(tmp_path):
    class Sorts(torch.nn.Module):
        def forward(self, x):
            return torch.topk(x, 2).values

    path = tmp_path / "topk.onnx"
    with pytest.raises(OpAuditError, match="TopK"):
        export_onnx(Sorts(), (torch.randn(1, 5),), path, input_names=["x"], output_names=["y"])
    assert os.listdir(tmp_path) == []


# ------------------------------------------------------------------------------ parts

def _part_files(pm):
    """The files export_parts writes by default: one dynamic-axis file per part (and the in-graph reference), one
    capacity file per n >= p + 1."""
    p, N = pm.num_prefix, pm.num_tokens
    files = {(part, None): f"{part}.onnx" for part in (*PARTS, *FIXED_PARTS, IN_GRAPH) if part != "capacity_selector"}
    files.update({("capacity_selector", n): f"capacity_selector_n{n}.onnx" for n in range(p + 1, N + 1)})
    return files


def test_export_parts_files(parts_export):
    pm, folder, parts = parts_export
    expected = _part_files(pm)
    assert set(parts) == set(expected)
    assert min(n for part, n in parts if n is not None) == pm.num_prefix + 1 == min_tokens(pm, "capacity_selector")
    assert sorted(os.listdir(folder)) == sorted(expected.values())  # no temp files
    for key, path in parts.items():
        assert path == folder / expected[key]
        onnx.checker.check_model(onnx.load(str(path)))
        part, n = key
        names = list(part_inputs(pm, part, n or pm.num_tokens))
        assert [i.name for i in _session(path).get_inputs()] == names
    assert list(part_inputs(pm, "selector", 5)) == ["tokens", "scores"]
    assert list(part_inputs(pm, "embed", 5)) == ["image"]


def test_export_parts_subset_of_tokens(distilled, tmp_path):
    pm = distilled[0]
    p, N = pm.num_prefix, pm.num_tokens
    parts = export_parts(pm, tmp_path, parts=("capacity_selector",), tokens=[1, p, p + 1, 9, N])
    # n below p + 1 (no patch token) is never exported; the fixed parts and the in-graph reference always are
    always = (*FIXED_PARTS, IN_GRAPH)
    assert set(parts) == {("capacity_selector", n) for n in (p + 1, 9, N)} | {(f, None) for f in always}
    assert sorted(os.listdir(tmp_path)) == sorted([f"capacity_selector_n{n}.onnx" for n in (p + 1, 9, N)]
                                                  + [f"{f}.onnx" for f in always])


def test_dynamic_part_files_take_any_n_capacity_files_one(parts_export):
    pm, _, parts = parts_export
    C, p = pm.dim, pm.num_prefix
    sess = _session(parts[("attention", None)])
    assert [i.shape for i in sess.get_inputs()] == [[1, "n", C]]  # one file for every n
    for n in (p + 1, 9, pm.num_tokens):
        cap = _session(parts[("capacity_selector", n)])
        assert [i.shape for i in cap.get_inputs()] == [[1, n, C], [1, n - p]]  # static shapes, one file per n


@pytest.mark.parametrize("n", [5, 13])
def test_attention_part_matches_torch_on_n_tokens(parts_export, n):
    pm, _, parts = parts_export
    g = torch.Generator().manual_seed(n)
    tok = torch.randn(1, n, pm.dim, generator=g)
    with torch.no_grad():
        ref_out, ref_scores = pm.vit.blocks[0].attention_part(tok)
    out, scores = _session(parts[("attention", None)]).run(None, {"tokens": tok.numpy()})
    assert out.shape == (1, n, pm.dim) and scores.shape == (1, n - pm.num_prefix)
    np.testing.assert_allclose(out, ref_out.numpy(), atol=1e-5)
    np.testing.assert_allclose(scores, ref_scores.numpy(), atol=1e-6)


@pytest.mark.parametrize("n", [3, 18])
def test_selector_mlp_head_parts_on_n_tokens(parts_export, n):
    pm, _, parts = parts_export
    p = pm.num_prefix
    g = torch.Generator().manual_seed(100 + n)
    tok = torch.randn(1, n, pm.dim, generator=g)
    scores = torch.rand(1, n - p, generator=g)
    (sel,) = _session(parts[("selector", None)]).run(None, {"tokens": tok.numpy(), "scores": scores.numpy()})
    np.testing.assert_array_equal(sel, tok.numpy())  # exported keeping every token (worst case)
    (cap,) = _session(parts[("capacity_selector", n)]).run(None, {"tokens": tok.numpy(), "scores": scores.numpy()})
    want = capacity_select(tok, scores, n - p, p).numpy()
    np.testing.assert_array_equal(cap, want)  # K = n - p: every token, best first
    (mlp,) = _session(parts[("mlp", None)]).run(None, {"tokens": tok.numpy()})
    (head,) = _session(parts[("head", None)]).run(None, {"tokens": tok.numpy()})
    (ovh,) = _session(parts[("run_overhead", None)]).run(None, {"tokens": tok.numpy()})
    with torch.no_grad():
        np.testing.assert_allclose(mlp, pm.vit.blocks[0].mlp_part(tok).numpy(), atol=1e-5)
        np.testing.assert_allclose(head, pm.head(tok).numpy(), atol=1e-5)
    assert ovh.shape == (1, 1, 1)


def test_capacity_selector_part_file_is_sort_free(parts_export):
    pm, _, parts = parts_export
    ops = audit_ops(onnx.load(str(parts[("capacity_selector", pm.num_tokens)])))
    assert "MatMul" in ops and not (set(ops) & {"NonZero", "TopK", "GreaterOrEqual", "Greater", "Less", "Equal", "CumSum"})


def test_embed_part_matches_torch(parts_export):
    pm, _, parts = parts_export
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    (out,) = _session(parts[("embed", None)]).run(None, {"image": x.numpy()})
    with torch.no_grad():
        np.testing.assert_allclose(out, pm.embed(x).numpy(), atol=1e-5)
    assert out.shape == (1, pm.num_tokens, pm.dim)


def test_selector_part_threshold_prunes(distilled, tmp_path):
    pm = distilled[0]
    path = tmp_path / "selector.onnx"
    args = tuple(torch.zeros(s) for s in part_inputs(pm, "selector", pm.num_tokens).values())
    export_onnx(part_module(pm, "selector", selector_threshold=0.5), args, path, input_names=["tokens", "scores"],
                output_names=["out"], dynamic_axes={"tokens": {1: "n"}, "scores": {1: "P"}, "out": {1: "k"}})
    tok = torch.randn(1, 6, pm.dim)
    scores = torch.tensor([[0.9, 0.1, 0.5, 0.2]])
    (sel,) = _session(path).run(None, {"tokens": tok.numpy(), "scores": scores.numpy()})
    np.testing.assert_array_equal(sel, tok[:, [0, 1, 2, 4]].numpy())  # prefix 0, 1 + patches with score >= 0.5
    with torch.no_grad():  # the default part module keeps every token
        assert torch.equal(part_module(pm, "selector")(tok, scores), tok)


def test_capacity_export_is_sort_free_and_matches(tmp_path):
    pm = PrunableViT(make_tiny_vit("deit_tiny_distilled_patch16_224"))
    pm.set_capacities([6, 2])
    path = tmp_path / "capacity.onnx"
    ops = audit_ops(export_pruned(pm, path))
    assert not ({"TopK", "NonZero"} & set(ops))  # static shapes: rank by counting + MatMul gather
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(11))
    report = check_parity(pm, path, ImageSet(images=x.numpy(), labels=None, name="random"))
    assert report.max_abs_diff < 1e-4 and report.kept_match == 1.0
    kept = _session(path).run(None, {"image": x[:1].numpy()})[1]
    assert kept.tolist() == [6, 2]
