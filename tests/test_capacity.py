"""Capacity mode: exactly K patch tokens per block with float-only ops (rank by counting + one-hot MatMul),
static shapes end to end -- the ops, the model, the ONNX export, the loss table, the latency table and the planner.

torch.topk / numpy sorts appear only here, as references.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import CLASSES, NUM_PATCHES, OVERHEAD, make_calibration, make_table, make_tiny_vit
from vitedge.calibration.capacity import capacity_loss_table
from vitedge.data.digits import ImageSet
from vitedge.exporters.graphs import export_pruned
from vitedge.exporters.onnx import audit_ops
from vitedge.exporters.validation import check_parity
from vitedge.models.adapter import PrunableViT
from vitedge.models.pruning import _step, capacity_gather_matrix, capacity_select, rank_by_counting
from vitedge.schedule import Schedule
from vitedge.search.planner import Planner
from vitedge.tables.latency import LatencyTable, LatencyTableError

P = NUM_PATCHES  # 16


def _ref_ranks(s: np.ndarray) -> np.ndarray:
    """Rank of each entry of every row (0 = best); ties: lower index first (a stable sort of -s)."""
    ranks = np.empty(s.shape, np.int64)
    for b in range(s.shape[0]):
        order = np.argsort(-s[b], kind="stable")
        ranks[b, order] = np.arange(s.shape[1])
    return ranks


def _tie_scores(rng, B, n, levels=4):
    """(B, n) float32 scores drawn from a few levels: many ties."""
    return (rng.integers(0, levels, (B, n)) / levels).astype(np.float32)


# ------------------------------------------------------------------------------ _step

def test_step_is_exact_for_every_kind_of_real():
    tiny = np.finfo(np.float32).smallest_subnormal                 # 1.4e-45
    special = [0.0, -0.0, tiny, -tiny, 2 * tiny, np.finfo(np.float32).tiny, -np.finfo(np.float32).tiny,
               1e-30, -1e-30, 1e-7, -1e-7, 0.25, -0.25, 0.5, -0.5, 0.5000001, -0.5000001, 0.75, -0.75,
               1.0, -1.0, np.nextafter(np.float32(1), np.float32(2)), 1.5, -1.5, 2.0, -2.0, 1e30, -1e30,
               np.finfo(np.float32).max, -np.finfo(np.float32).max, np.inf, -np.inf]
    rng = np.random.default_rng(0)
    randoms = rng.standard_normal(2000) * 10.0 ** rng.integers(-40, 38, 2000)
    d = np.concatenate([np.array(special, np.float64), randoms]).astype(np.float32)
    for dtype in (torch.float32, torch.float64):
        x = torch.from_numpy(d).to(dtype)
        got = _step(x)
        want = (x > 0).to(dtype)
        assert got.dtype == dtype
        assert torch.equal(got, want), x[got != want]
        assert set(got.abs().unique().tolist()) <= {0.0, 1.0}


def test_step_separates_neighbouring_floats():
    """s_i - s_j is never rounded to 0 for s_i != s_j (gradual underflow): one ulp apart still ranks."""
    for v in (np.float32(0.0), np.float32(1e-38), np.float32(0.3), np.float32(1.0), np.float32(3e5)):
        up = np.nextafter(v, np.float32(np.inf))
        s = torch.tensor([[v, up]])
        d = s[:, 1] - s[:, 0]
        assert _step(d).item() == 1.0 and _step(-d).item() == 0.0
        assert rank_by_counting(s).tolist() == [[1.0, 0.0]]


# ------------------------------------------------------------------------------ rank by counting

@pytest.mark.parametrize("n", [1, 2, 5, 16, 33])
def test_rank_by_counting_matches_a_stable_ranking(n):
    for seed in range(25):
        rng = np.random.default_rng(seed * 100 + n)
        B = int(rng.integers(2, 5))
        s = _tie_scores(rng, B, n) if seed % 2 == 0 else rng.random((B, n)).astype(np.float32)
        if seed % 5 == 0:
            s[:, : n // 2] = s[:, :1]                              # a long run of equal scores
        ranks = rank_by_counting(torch.from_numpy(s))
        assert ranks.shape == (B, n) and ranks.dtype == torch.float32
        np.testing.assert_array_equal(ranks.numpy(), _ref_ranks(s))
        for row in ranks.numpy():                                   # a permutation of 0..n-1
            assert sorted(row.tolist()) == list(range(n))


def test_rank_by_counting_all_equal_and_extremes():
    s = torch.full((3, 7), 0.125)
    assert rank_by_counting(s).tolist() == [list(map(float, range(7)))] * 3  # all tied: token order
    s = torch.tensor([[0.0, -0.0, 1e-45, -1e-45, 1.0, -1.0]])
    np.testing.assert_array_equal(rank_by_counting(s).numpy(), _ref_ranks(s.numpy()))


# ------------------------------------------------------------------------------ gather matrix

def _check_gather(s: np.ndarray, K: int):
    G = capacity_gather_matrix(torch.from_numpy(s), K).numpy()
    B, n = s.shape
    assert G.shape == (B, K, n)
    assert set(np.unique(G).tolist()) <= {0.0, 1.0}
    np.testing.assert_array_equal(G.sum(axis=2), np.ones((B, K)))   # each row one-hot
    assert (G.sum(axis=1) <= 1).all()                                # each token at most once
    ranks = _ref_ranks(s)
    for b in range(B):
        cols = G[b].argmax(axis=1)
        np.testing.assert_array_equal(ranks[b][cols], np.arange(K))   # row k: the token ranked k (best first)
        assert set(cols.tolist()) == set(np.flatnonzero(ranks[b] < K).tolist())  # the top K (ties: lower index)


def test_gather_matrix_keeps_exactly_the_top_k_best_first():
    for seed in range(20):
        rng = np.random.default_rng(seed)
        n = int(rng.integers(1, 20))
        s = _tie_scores(rng, 3, n, levels=3) if seed % 2 else rng.random((3, n)).astype(np.float32)
        for K in range(n + 1):
            _check_gather(s, K)


def test_gather_matrix_edge_capacities():
    s = torch.rand(2, 6, generator=torch.Generator().manual_seed(1))
    assert capacity_gather_matrix(s, 0).shape == (2, 0, 6)
    order = torch.from_numpy(np.argsort(-s.numpy(), axis=1, kind="stable"))
    assert torch.equal(capacity_gather_matrix(s, 6), torch.eye(6)[order])  # K = P: the permutation, best first
    for K in (-1, 7, 100):
        with pytest.raises(ValueError, match=f"capacity {K} outside 0..6"):
            capacity_gather_matrix(s, K)


def test_capacity_select_keeps_prefix_and_best_tokens():
    g = torch.Generator().manual_seed(5)
    p, n, C = 2, 9, 4
    x = torch.randn(3, p + n, C, generator=g)
    s = torch.rand(3, n, generator=g)
    for K in (0, 1, 4, n):
        out = capacity_select(x, s, K, p)
        assert out.shape == (3, p + K, C)
        for b in range(3):
            idx = torch.argsort(-s[b], stable=True)[:K]  # best first
            assert torch.equal(out[b], torch.cat([x[b, :p], x[b, p + idx]]))


# ------------------------------------------------------------------------------ the model

@pytest.fixture(scope="module")
def model3():
    """A tiny ViT (CLS token head, 16 patches) with 3 blocks, and 3 seeded images."""
    pm = PrunableViT(make_tiny_vit(depth=3))
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(21))
    return pm, x


@pytest.fixture
def fresh(model3):
    pm, x = model3
    yield pm, x
    pm.set_thresholds([None] * pm.depth)
    pm.package_token = False


@pytest.mark.parametrize("caps, kept", [([10, None, 4], [10, 10, 4]), ([4, 10, None], [4, 4, 4]),
                                        ([None, 16, 0], [16, 16, 0]), ([1, 1, 1], [1, 1, 1])])
def test_kept_counts_are_the_capacities(fresh, caps, kept):
    pm, x = fresh
    pm.set_capacities(caps)
    assert pm.capacities == caps and pm.thresholds == [None] * 3
    with torch.no_grad():
        out = pm.forward_with_info(x)                                 # batch 3: static shapes, no batch-1 limit
    assert out.logits.shape == (3, CLASSES) and torch.isfinite(out.logits).all()
    assert [int(k) for k in out.kept] == kept                         # min(K, incoming) per block
    assert all(k.dtype == torch.int64 and k.dim() == 0 for k in out.kept)
    with torch.no_grad():
        one = torch.cat([pm(x[i:i + 1]) for i in range(3)])
    torch.testing.assert_close(out.logits, one, atol=1e-5, rtol=0)   # images do not interact


def test_full_capacity_equals_the_unpruned_model(fresh):
    pm, x = fresh
    pm.set_capacities([P] * pm.depth)
    with torch.no_grad():
        out = pm.forward_with_info(x)
        ref = pm.vit(x)
    assert [int(k) for k in out.kept] == [P] * 3
    assert (out.logits - ref).abs().max().item() <= 1e-5


def _manual_topk_forward(pm, x, caps):
    """Reference capacity forward with a stable sort (best first, ties: lower index); returns logits and
    each block's tokens entering its MLP."""
    tokens, seen = pm.embed(x), []
    p = pm.num_prefix
    for blk, K in zip(pm.vit.blocks, caps):
        tokens, scores = blk.attention_part(tokens)
        if K is not None:
            K = min(K, tokens.shape[1] - p)
            idx = torch.argsort(-scores, dim=1, stable=True)[:, :K]                 # (B, K)
            patches = torch.gather(tokens[:, p:], 1, idx.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))
            tokens = torch.cat([tokens[:, :p], patches], dim=1)
        seen.append(tokens)
        tokens = blk.mlp_part(tokens)
    return pm.head(tokens), seen


def test_kept_tokens_are_the_top_k_by_cls_score(fresh):
    pm, x = fresh
    caps = [9, None, 3]
    pm.set_capacities(caps)
    captured = []
    hooks = [blk.norm2.register_forward_pre_hook(lambda m, a: captured.append(a[0])) for blk in pm.vit.blocks]
    try:
        with torch.no_grad():
            logits = pm(x)
    finally:
        for h in hooks:
            h.remove()
    with torch.no_grad():
        ref_logits, ref_tokens = _manual_topk_forward(pm, x, caps)
    assert [t.shape[1] for t in captured] == [10, 10, 4]
    for got, want in zip(captured, ref_tokens):
        torch.testing.assert_close(got, want, atol=1e-6, rtol=0)    # the same tokens, best first
    torch.testing.assert_close(logits, ref_logits, atol=1e-5, rtol=0)


def test_set_capacities_validation(fresh):
    pm, _ = fresh
    pm.set_capacities(np.array([3, 2, 0]))                              # numpy integers are fine
    assert pm.capacities == [3, 2, 0] and all(type(k) is int for k in pm.capacities)
    for bad in ([1, 2], [1, 2, 3, 4], [17, None, None], [-1, None, None], [2.0, None, None], [True, None, None],
                ["4", None, None]):
        with pytest.raises(ValueError):
            pm.set_capacities(bad)
    pm.set_capacities([4, None, 2])
    pm.set_thresholds([0.1, None, None])                                # thresholds and capacities exclude each other
    assert pm.capacities == [None] * 3 and pm.thresholds == [0.1, None, None]
    pm.set_capacities([4, None, 2])
    assert pm.thresholds == [None] * 3


def test_avg_pool_head_needs_one_patch_token():
    pm = PrunableViT(make_tiny_vit(global_pool="avg"))
    assert pm.min_patch_tokens == 1
    with pytest.raises(ValueError, match="outside 1..16"):
        pm.set_capacities([None, 0])
    pm.set_capacities([None, 1])
    with torch.no_grad():
        out = pm.forward_with_info(torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2)))
    assert [int(k) for k in out.kept] == [16, 1] and torch.isfinite(out.logits).all()


def test_package_token_with_capacities(fresh):
    """One more token after the first selector, never ranked (test_package_token.py checks its values)."""
    pm, imgs = fresh
    pm.package_token = True
    pm.set_capacities([9, None, 3])
    with torch.no_grad():
        info = pm.forward_with_info(imgs)
    assert [int(k) for k in info.kept] == [10, 10, 4] and torch.isfinite(info.logits).all()
    pm.set_capacities([9, 9, 3])                                        # K_1 = K_0: still compiled out
    with torch.no_grad():
        again = pm.forward_with_info(imgs)
    torch.testing.assert_close(again.logits, info.logits, atol=0, rtol=0)


# ------------------------------------------------------------------------------ ONNX export

CAPACITY_BANNED = {"NonZero", "TopK", "Greater", "GreaterOrEqual", "Less", "LessOrEqual", "Equal", "And", "Or",
                   "Not", "Xor", "CumSum", "Cast", "Where", "ArgMax", "ArgMin", "ScatterND", "ScatterElements"}


@pytest.mark.parametrize("config, caps, package, score", [("deit_tiny_distilled_patch16_224", [6, 2], False, "cls-attention"),
                                                         ("avg_pool", [None, 1], False, "cls-attention"),
                                                         ("vit_tiny_patch16_224", [5, 5], True, "cls-attention"),
                                                         ("deit_tiny_distilled_patch16_224", [6, 2], False, "significance"),
                                                         ("deit_tiny_distilled_patch16_224", [None, 2], False, "cumulative-significance"),
                                                         ("vit_tiny_patch16_224", [5, 5], True, "cumulative-significance")])
def test_capacity_onnx_export_is_float_only_and_matches(config, caps, package, score, tmp_path):
    vit = make_tiny_vit(global_pool="avg") if config == "avg_pool" else make_tiny_vit(config)
    pm = PrunableViT(vit)
    pm.package_token = package
    pm.token_score = score
    pm.set_capacities(caps)
    path = tmp_path / "capacity.onnx"
    ops = audit_ops(export_pruned(pm, path))
    assert not (set(ops) & CAPACITY_BANNED), set(ops) & CAPACITY_BANNED
    assert ops["Ceil"] >= 1 and ops["MatMul"] >= 1                      # the float step and the one-hot gather
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(11))
    report = check_parity(pm, path, ImageSet(images=x.numpy(), labels=None, name="random"))
    assert report.max_abs_diff < 1e-4 and report.kept_match == 1.0 and report.top1_agreement == 1.0



def test_repeated_capacity_is_compiled_out(tmp_path):
    """K_l equal to the tokens a block receives prunes nothing: no selector in the graph, no cost."""
    pm = PrunableViT(make_tiny_vit(depth=3))
    base = audit_ops(export_pruned(pm, tmp_path / "none.onnx"))
    pm.set_capacities([P, P, P])                                        # K = P everywhere: the unpruned graph
    assert audit_ops(export_pruned(pm, tmp_path / "full.onnx")) == base
    pm.set_capacities([5, 5, 5])
    once = audit_ops(export_pruned(pm, tmp_path / "once.onnx"))
    pm.set_capacities([5, 4, 3])
    thrice = audit_ops(export_pruned(pm, tmp_path / "thrice.onnx"))
    assert once["Ceil"] > 0 and thrice["Ceil"] == 3 * once["Ceil"]      # one selector vs three
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        pm.set_capacities([5, 5, 5])
        a = pm.forward_with_info(x)
        pm.set_capacities([5, None, None])
        b = pm.forward_with_info(x)
    assert [int(k) for k in a.kept] == [5, 5, 5]
    torch.testing.assert_close(a.logits, b.logits, atol=0, rtol=0)
    pm.package_token = True                                             # the package token is never ranked:
    pm.set_capacities([5, 5, 5])                                        # still one selector
    assert audit_ops(export_pruned(pm, tmp_path / "pkg.onnx"))["Ceil"] == once["Ceil"]

def test_k0_equal_to_p_is_one_rule_everywhere(tmp_path):
    """K_0 = P (and a K above the tokens present) prunes nothing: the adapter, Schedule.selectors, the
    planner's prediction and the quality evaluator all compile that selector out (one function)."""
    from vitedge.evaluate import evaluate_pruned
    from vitedge.quality import QualityEvaluator
    from vitedge.schedule import capacity_selectors

    assert capacity_selectors([P, 5, 5, 8, 3, None], P) == [False, True, False, False, True, False]
    s = Schedule(mode="capacity", candidates=[1, 2, 2], thresholds=[None] * 3, capacities=[P, 5, 5], budget=1.0,
                 unit="ms", cost_model="latency", predicted=1.0, predicted_kept=[P, 5, 5], fisher_loss=0.0,
                 meta={"num_patches": P})
    assert s.selectors == [False, True, False]
    s.meta["package_token"] = True
    assert s.selectors == [False, True, False]
    pm = PrunableViT(make_tiny_vit(depth=3))
    pm.set_capacities([5, 5, 5])
    once = audit_ops(export_pruned(pm, tmp_path / "once.onnx"))
    pm.set_capacities([P, 5, 5])
    assert audit_ops(export_pruned(pm, tmp_path / "k0.onnx")) == once   # one selector, at block 1
    x = torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    images = ImageSet(images=x.numpy(), labels=None, name="random")
    with torch.no_grad():
        a = pm.forward_with_info(x)
        pm.set_capacities([None, 5, None])
        b = pm.forward_with_info(x)
    assert [int(k) for k in a.kept] == [P, 5, 5]
    torch.testing.assert_close(a.logits, b.logits, atol=0, rtol=0)
    ev = QualityEvaluator(pm, images)
    q, e = ev.evaluate("capacity", [P, 5, 5]), evaluate_pruned(pm, images, capacities=[P, 5, 5])
    assert np.array_equal(q.kept, e.kept) and np.array_equal(q.top1, e.top1) and q.kept[:, 0].tolist() == [P, 5, 5]
    pl = Planner(make_calibration(), "latency", make_capacity_table(measured=GRID), mode="capacity")
    sched = pl.schedule([3, 3, 1], 1.0, 0.0)                            # K grows at block 2: nothing to prune there
    assert sched.meta["num_patches"] == P and sched.selectors == [True, False, False]
    assert sched.selectors == capacity_selectors(sched.capacities, P)


# ------------------------------------------------------------------------------ capacity loss table

def _brute_loss(scores, fisher, caps):
    L, D, n = scores.shape
    out = np.zeros((L, len(caps)))
    for l in range(L):
        for d in range(D):
            order = sorted(range(n), key=lambda j: (-float(scores[l, d, j]), j))   # best first, ties by index
            for m, K in enumerate(caps):
                out[l, m] += sum(float(fisher[l, d, j]) for j in order[K:])
    return out


def test_capacity_loss_table_matches_brute_force():
    for seed in range(8):
        rng = np.random.default_rng(seed)
        L, D, n = 2, 3, int(rng.integers(1, 9))
        scores = _tie_scores(rng, L * D, n, levels=3).reshape(L, D, n) if seed % 2 else rng.random((L, D, n)).astype(np.float32)
        fisher = rng.random((L, D, n)).astype(np.float32)
        caps = list(range(n, -1, -1))
        got = capacity_loss_table(scores, fisher, caps)
        assert got.shape == (L, n + 1) and got.dtype == np.float64
        np.testing.assert_allclose(got, _brute_loss(scores, fisher, caps), rtol=1e-6, atol=1e-9)
        np.testing.assert_array_equal(got[:, 0], 0.0)                                    # K = P prunes nothing
        np.testing.assert_allclose(got[:, -1], fisher.astype(np.float64).sum(axis=(1, 2)), rtol=1e-6)  # K = 0: all
        assert (np.diff(got, axis=1) >= -1e-9).all()                                     # fewer tokens, more loss


def test_capacity_loss_table_ranks_like_the_exported_selector():
    """The calibration's top K (ties by token index) is exactly the set rank_by_counting keeps."""
    rng = np.random.default_rng(3)
    scores = _tie_scores(rng, 4, 10, levels=3).reshape(1, 4, 10)
    fisher = rng.random((1, 4, 10))
    ranks = rank_by_counting(torch.from_numpy(scores[0])).numpy()
    for K in range(11):
        want = (fisher[0] * (ranks >= K)).sum()
        assert capacity_loss_table(scores, fisher, [K])[0, 0] == pytest.approx(want)


def test_capacity_loss_table_rejects_bad_input():
    s = np.zeros((2, 3, 4), np.float32)
    with pytest.raises(ValueError, match="0..4"):
        capacity_loss_table(s, s, [5])
    with pytest.raises(ValueError, match="0..4"):
        capacity_loss_table(s, s, [-1])
    with pytest.raises(ValueError, match="0..4"):
        capacity_loss_table(s, s, [[1, 2]])
    with pytest.raises(ValueError, match="must both be"):
        capacity_loss_table(s, s[:, :, :3], [1])
    with pytest.raises(ValueError, match="must both be"):
        capacity_loss_table(s[0], s[0], [1])


# ------------------------------------------------------------------------------ latency table and planner

def cap_sel(n):
    return 0.01 + 0.0004 * n * n                                       # O(n^2) rank by counting, overhead removed


def make_capacity_table(*, measured=None, with_threshold_selector=True, **kw) -> LatencyTable:
    t = make_table(**kw)
    v = cap_sel(np.arange(1, t.num_tokens + 1, dtype=np.float64)) + OVERHEAD
    t.parts["capacity_selector"] = {"median_ms": v.tolist(), "p90_ms": (v * 1.1).tolist(),
                                    "samples_ms": [[x, x] for x in v]}
    if not with_threshold_selector:
        del t.parts["selector"]
    if measured is not None:
        t.meta["measured_tokens"] = list(measured)
    return t


GRID = [1, 2, 3, 5, 7, 9, 11, 13, 15, 17]       # a LiteRT-like grid: K = n - 1


@pytest.fixture
def cap_planner():
    return Planner(make_calibration(), "latency", make_capacity_table(measured=GRID), mode="capacity")


def _effective(caps):
    return [P if k is None else k for k in caps]


def test_capacity_planner_candidates_are_measured_counts(cap_planner):
    pl = cap_planner
    assert pl.capacities.tolist() == [16, 14, 12, 10, 8, 6, 4, 2, 1, 0]   # K = n - p for measured n, descending
    assert pl.cost.shape == pl.loss.shape == (3, 10)
    cal = pl.calibration
    np.testing.assert_allclose(pl.loss, capacity_loss_table(cal.scores, cal.fisher, pl.capacities))
    pl1 = Planner(cal, "latency", make_capacity_table(measured=GRID), mode="capacity", min_patch_tokens=1)
    assert pl1.capacities.tolist() == [16, 14, 12, 10, 8, 6, 4, 2, 1]     # K = 0 excluded for pooling heads
    # without a measured grid every n counts; P is always a candidate
    pl_all = Planner(cal, "latency", make_capacity_table(), mode="capacity")
    assert pl_all.capacities.tolist() == list(range(16, -1, -1))
    pl_few = Planner(cal, "latency", make_capacity_table(measured=[1, 2, 9]), mode="capacity")
    assert pl_few.capacities.tolist() == [16, 8, 1, 0]


def test_capacity_planner_schedules(cap_planner):
    pl = cap_planner
    lo, hi = pl.min_budget, pl.full
    budgets = np.linspace(lo + 0.01 * (hi - lo), hi, 9)
    predicted = []
    allowed = set(pl.capacities.tolist())
    for b in budgets:
        s = pl.solve(float(b))
        assert s.mode == "capacity" and s.unit == "ms" and s.thresholds == [None] * 3
        caps = _effective(s.capacities)
        assert all(k in allowed for k in caps)
        assert caps == sorted(caps, reverse=True)                      # non-increasing across blocks
        idx = s.candidates
        assert [pl.capacities[m] for m in idx] == caps
        assert [k is None for k in s.capacities] == [m == 0 for m in idx]
        total = pl.base + sum(pl.cost[l, m] for l, m in enumerate(idx))
        repeats = sum(1 for a, c in zip(idx, idx[1:]) if c == a > 0)    # K_l = K_{l-1}: compiled out, no selector
        assert s.selectors == [m > 0 and (l == 0 or idx[l - 1] != m) for l, m in enumerate(idx)]
        assert s.predicted == pytest.approx(total - repeats * cap_sel(17)) and s.predicted <= b + 1e-9
        assert s.fisher_loss == pytest.approx(sum(pl.loss[l, m] for l, m in enumerate(idx)))
        assert s.predicted_kept == [float(k) for k in caps]
        # the search charges each selector on N tokens (an upper bound of the table's own prediction)
        exact = float(pl.table.predict_ms(np.array(caps), np.array(s.selectors), mode="capacity"))
        n_in = [17] + [k + 1 for k in caps[:-1]]
        slack = sum(cap_sel(17) - cap_sel(n) for n, sel in zip(n_in, s.selectors) if sel)
        assert s.predicted == pytest.approx(exact + slack)
        predicted.append(total)                                        # what the search charged
    assert predicted[0] < predicted[-1]                                # tighter budget, lower charged latency
    assert all(a <= b + 1e-12 for a, b in zip(predicted, predicted[1:]))
    assert pl.solve(float(hi) * 1.01).keeps_everything                 # (at exactly full the CLI uses keep_all)


def test_capacity_planner_keep_all_costs_the_unpruned_model(cap_planner):
    pl = cap_planner
    s = pl.keep_all(pl.full)
    assert s.capacities == [None] * 3 and s.keeps_everything and s.mode == "capacity"
    assert s.predicted == pytest.approx(pl.full)


def test_schedule_apply_sets_capacities(cap_planner, fresh, tmp_path):
    pm, x = fresh
    pl = cap_planner
    s = pl.solve(float(pl.min_budget + 0.3 * (pl.full - pl.min_budget)))
    assert not s.keeps_everything
    path = tmp_path / "schedule.json"
    s.save(path)
    back = Schedule.load(path)
    assert back.mode == "capacity" and back.capacities == s.capacities and back.selectors == s.selectors
    pm.set_thresholds([0.5, None, None])
    back.apply(pm)
    assert pm.capacities == s.capacities and pm.thresholds == [None] * 3
    with torch.no_grad():
        out = pm.forward_with_info(x)
    assert [int(k) for k in out.kept] == _effective(s.capacities)


def test_capacity_mode_needs_latency_and_a_capacity_table():
    cal = make_calibration()
    with pytest.raises(ValueError, match="capacity mode"):
        Planner(cal, "flops", mode="capacity")
    with pytest.raises(ValueError, match="unknown mode"):
        Planner(cal, "latency", make_capacity_table(), mode="topk")
    with pytest.raises(LatencyTableError, match="capacity_selector"):
        Planner(cal, "latency", make_table(), mode="capacity")


def test_latency_table_capacity_selector_part():
    plain = make_table()
    kept = np.array([[[16], [8]], [[16], [4]], [[16], [2]]])
    with pytest.raises(LatencyTableError, match="no capacity_selector part"):
        plain.candidate_costs(kept, mode="capacity")
    with pytest.raises(LatencyTableError, match="capacity_selector"):
        plain.predict_ms(np.array([8, 4, 2]), mode="capacity")
    only_cap = make_capacity_table(with_threshold_selector=False)
    with pytest.raises(LatencyTableError, match="no selector part"):
        only_cap.candidate_costs(kept)                                  # threshold mode, e.g. a LiteRT table
    cost_c, base = only_cap.candidate_costs(kept, mode="capacity")
    cost_t, _ = make_capacity_table().candidate_costs(kept)
    np.testing.assert_allclose(cost_c[:, 0], cost_t[:, 0])              # no selector at candidate 0
    np.testing.assert_allclose(cost_c[:, 1] - cost_t[:, 1], cap_sel(17) - (0.02 + 0.001 * 17))
    assert base == pytest.approx(only_cap.base_ms())
    # whole-model prediction charges the capacity selector on each block's input tokens
    full = float(only_cap.predict_ms(np.full(3, 16), np.zeros(3, bool), mode="capacity"))
    pruned = float(only_cap.predict_ms(np.array([8, 8, 4]), np.array([True, False, True]), mode="capacity"))
    t = only_cap
    want = full - sum(t.part_ms("mlp", 17) - t.part_ms("mlp", n) for n in (9, 9, 5)) \
        - sum(t.part_ms("attention", 17) - t.part_ms("attention", n) for n in (9, 9)) + cap_sel(17) + cap_sel(9)
    assert pruned == pytest.approx(want)


def test_capacity_only_table_round_trips(tmp_path):
    t = make_capacity_table(measured=GRID, with_threshold_selector=False)
    path = tmp_path / "table.json"
    t.save(path)
    back = LatencyTable.load(path)
    assert back.parts == t.parts and back.measured_tokens == GRID
    del t.parts["capacity_selector"]
    t.save(path)
    with pytest.raises(LatencyTableError, match="selector"):
        LatencyTable.load(path)                                         # neither selector: refused
