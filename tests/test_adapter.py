"""PrunableViT (vitedge.models.adapter) and the sort-free pruning ops (vitedge.models.pruning)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import timm
import torch
from timm.models.vision_transformer import Block, ResPostBlock

from conftest import CLASSES, NUM_PATCHES, make_config, make_tiny_vit
from vitedge.models.adapter import PrunableAttention, PrunableBlock, PrunableViT, UnsupportedModelError
from vitedge.models.pruning import cls_attention_scores, gather_tokens, significance_scores, threshold_keep_indices

ATOL = 1e-5


def _manual_cls_row(blk, x):
    """CLS query's attention row over all keys, mean over heads, computed from timm's submodules in float64."""
    a = blk.attn
    h = blk.norm1(x).double()
    B, N, _ = h.shape
    qkv = torch.nn.functional.linear(h, a.qkv.weight.double(),
                                     None if a.qkv.bias is None else a.qkv.bias.double())
    qkv = qkv.reshape(B, N, 3, a.num_heads, a.head_dim).permute(2, 0, 3, 1, 4)
    q, k = qkv[0], qkv[1]
    for norm, which in ((a.q_norm, 0), (a.k_norm, 1)):
        if not isinstance(norm, torch.nn.Identity):  # qk-norm: timm's LayerNorm over head_dim
            t = qkv[which]
            t = torch.nn.functional.layer_norm(t, (a.head_dim,), norm.weight.double(), norm.bias.double(), norm.eps)
            q, k = (t, k) if which == 0 else (q, t)
    attn = torch.softmax((q @ k.transpose(-2, -1)) / math.sqrt(a.head_dim), dim=-1)  # (B, H, N, N)
    return attn[:, :, 0, :].mean(dim=1)  # (B, N)


# ------------------------------------------------------------------------------ unpruned equality

def test_unpruned_forward_equals_timm(tiny_config, images):
    vit, prefix, key = tiny_config
    with torch.no_grad():
        ref = vit(images)  # timm's own forward, before the adapter swaps classes
        pm = PrunableViT(vit)
        assert pm.num_prefix == prefix
        assert pm.num_patches == NUM_PATCHES and pm.num_tokens == NUM_PATCHES + prefix
        plain = pm(images)
        info = pm.forward_with_info(images, want_scores=True)
    assert ref.shape == (images.shape[0], CLASSES)
    assert (plain - ref).abs().max().item() <= ATOL
    assert (info.logits - ref).abs().max().item() <= ATOL
    # no thresholds: every block keeps every patch token
    assert [int(k) for k in info.kept] == [NUM_PATCHES] * pm.depth


def test_adapter_swaps_classes_in_place_and_shares_parameters(tiny_vit):
    params_before = {k: v.data_ptr() for k, v in tiny_vit.named_parameters()}
    pm = PrunableViT(tiny_vit)
    assert pm.vit is tiny_vit
    assert all(type(b) is PrunableBlock and type(b.attn) is PrunableAttention for b in tiny_vit.blocks)
    assert {k: v.data_ptr() for k, v in pm.vit.named_parameters()} == params_before
    assert pm.thresholds == [None] * pm.depth
    assert (pm.dim, pm.num_heads, pm.depth, pm.mlp_ratio, pm.input_size) == (32, 2, 2, 4.0, (3, 32, 32))
    # adapting an already adapted model is accepted (PrunableBlock is a standard Block)
    assert PrunableViT(tiny_vit).depth == 2


# ------------------------------------------------------------------------------ CLS scores

@pytest.mark.parametrize("key", ["plain", "distilled", "qk_norm", "registers"])
def test_cls_scores_match_manual_attention(key, images):
    vit, prefix = make_config(key)
    pm = PrunableViT(vit)
    with torch.no_grad():
        info = pm.forward_with_info(images, want_scores=True)
        x0 = pm.embed(images)
        x1 = Block.forward(vit.blocks[0], x0)  # timm's block forward gives block 1's input
        rows = [_manual_cls_row(vit.blocks[0], x0), _manual_cls_row(vit.blocks[1], x1)]
    for l, row in enumerate(rows):
        s = info.scores[l]
        assert s.shape == (images.shape[0], NUM_PATCHES)
        assert (s >= 0).all()
        assert (s.sum(dim=1) <= 1 + 1e-6).all()
        np.testing.assert_allclose(s.double().numpy(), row[:, prefix:].numpy(), atol=1e-6)
        # patch part + prefix part of the CLS row is a full softmax row
        total = s.double().sum(dim=1) + row[:, :prefix].sum(dim=1)
        np.testing.assert_allclose(total.numpy(), 1.0, atol=1e-6)
        # the prefix keys get a positive share, so patch scores alone sum strictly below 1
        assert (s.sum(dim=1) < 1).all()


def test_scores_only_when_requested(tiny_prunable, images):
    with torch.no_grad():
        out = tiny_prunable.forward_with_info(images)
    assert out.scores == [None, None]
    tiny_prunable.set_thresholds([None, 0.0])
    with torch.no_grad():
        out = tiny_prunable.forward_with_info(images[:1])
    assert out.scores[0] is None and out.scores[1].shape == (1, NUM_PATCHES)


# ------------------------------------------------------------------------------ thresholds

def _unpruned_scores(pm, x):
    saved = pm.thresholds
    pm.set_thresholds([None] * pm.depth)
    with torch.no_grad():
        out = pm.forward_with_info(x, want_scores=True)
    pm.set_thresholds(saved)
    return out


@pytest.mark.parametrize("key", ["plain", "distilled"])
@pytest.mark.parametrize("block", [0, 1])
def test_kept_count_equals_manual_count(key, block, images):
    pm = PrunableViT(make_config(key)[0])
    for i in range(images.shape[0]):
        x = images[i:i + 1]
        s = _unpruned_scores(pm, x).scores[block][0]
        v = s.sort().values
        k = len(v) // 2
        theta = float((v[k - 1] + v[k]) / 2)  # halfway between two scores: float rounding of a recomputed score cannot flip it
        expected = int((s >= theta).sum())
        assert 0 < expected < NUM_PATCHES
        thr = [None, None]
        thr[block] = theta
        pm.set_thresholds(thr)
        with torch.no_grad():
            out = pm.forward_with_info(x)
        kept = [int(k) for k in out.kept]
        assert kept[block] == expected
        assert kept[:block] == [NUM_PATCHES] * block          # earlier blocks untouched
        assert kept[block:] == [expected] * (pm.depth - block)  # later blocks see the pruned set


@pytest.mark.parametrize("key", ["plain", "distilled", "avg_pool"])
def test_pruned_forward_equals_manual_pipeline_tokens_in_order(key, images):
    pm = PrunableViT(make_config(key)[0])
    p = pm.num_prefix
    x = images[:1]
    with torch.no_grad():
        s0 = _unpruned_scores(pm, x).scores[0]
        theta = float(s0.median())
        pm.set_thresholds([theta, None])
        logits = pm(x)
        # by hand: MSA, keep prefix + patches with score >= theta in their original order, MLP, timm block, head
        blk0, blk1 = pm.vit.blocks
        t, s = blk0.attention_part(pm.embed(x))
        keep = list(range(p)) + [p + j for j in range(NUM_PATCHES) if float(s[0, j]) >= theta]
        selected = blk0.select(t, s, theta)
        assert selected.shape == (1, len(keep), pm.dim)
        assert torch.equal(selected, t[:, keep])
        ref = pm.head(Block.forward(blk1, blk0.mlp_part(t[:, keep])))
    assert (logits - ref).abs().max().item() <= 1e-6


@pytest.mark.parametrize("key", ["plain", "distilled", "registers"])
def test_threshold_above_every_score_keeps_only_prefix(key, images):
    pm = PrunableViT(make_config(key)[0])
    p = pm.num_prefix
    x = images[:1]
    pm.set_thresholds([2.0, 2.0])
    with torch.no_grad():
        out = pm.forward_with_info(x, want_scores=True)
        blk = pm.vit.blocks[0]
        t, s = blk.attention_part(pm.embed(x))
        sel = blk.select(t, s, 2.0)
    assert [int(k) for k in out.kept] == [0, 0]
    assert out.logits.shape == (1, CLASSES) and torch.isfinite(out.logits).all()
    assert out.scores[1].shape == (1, 0)  # block 2 sees no patch token
    assert torch.equal(sel, t[:, :p])     # prefix tokens (CLS, dist, registers) are never dropped



def test_avg_pool_model_stays_finite_when_every_patch_token_is_pruned(images):
    pm = PrunableViT(make_config("avg_pool")[0])
    pm.set_thresholds([2.0, None])
    with torch.no_grad():
        logits = pm(images[:1])
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("key", ["plain", "distilled", "layerscale"])
@pytest.mark.parametrize("thresholds", [[0.0, 0.0], [-1.0, None], [None, -0.5]])
def test_non_positive_threshold_keeps_everything(key, thresholds, images):
    pm = PrunableViT(make_config(key)[0])
    x = images[:1]
    with torch.no_grad():
        ref = pm(x)
        pm.set_thresholds(thresholds)
        assert pm.thresholds == [None if t is None else float(t) for t in thresholds]  # the selector still runs
        out = pm.forward_with_info(x)
    assert [int(k) for k in out.kept] == [NUM_PATCHES] * 2
    assert (out.logits - ref).abs().max().item() <= ATOL


def test_batch_above_one_with_thresholds_raises(tiny_prunable, images):
    tiny_prunable.set_thresholds([None, 0.01])
    with pytest.raises(ValueError, match="batch"):
        tiny_prunable(images[:2])
    tiny_prunable.set_thresholds([None, None])
    assert tiny_prunable(images[:2]).shape == (2, CLASSES)


@pytest.mark.parametrize("bad", [[0.1], [0.1, 0.2, 0.3], [], [float("nan"), None], [None, "0.1"]])
def test_set_thresholds_rejects_bad_values(tiny_prunable, bad):
    tiny_prunable.set_thresholds([0.5, 0.25])
    with pytest.raises(ValueError):
        tiny_prunable.set_thresholds(bad)
    assert tiny_prunable.thresholds == [0.5, 0.25]  # unchanged after a rejected call


def test_set_thresholds_normalises_values(tiny_prunable, images):
    tiny_prunable.set_thresholds([-math.inf, None])
    assert tiny_prunable.thresholds == [None, None]
    tiny_prunable.set_thresholds((0, np.float64(0.25)))
    assert tiny_prunable.thresholds == [0.0, 0.25] and all(type(t) is float for t in tiny_prunable.thresholds)
    tiny_prunable.set_thresholds([math.inf, None])  # +inf is a real threshold: prunes every patch token
    with torch.no_grad():
        out = tiny_prunable.forward_with_info(images[:1])
    assert [int(k) for k in out.kept] == [0, 0]



def test_set_thresholds_accepts_numpy_float32(tiny_prunable):
    tiny_prunable.set_thresholds([np.float32(0.125), None])
    assert tiny_prunable.thresholds == [0.125, None]


# ------------------------------------------------------------------------------ refusals

def _assert_one_line(err, *needles):
    msg = str(err.value)
    assert "\n" not in msg and msg
    for needle in needles:
        assert needle in msg, msg


def test_refuses_convnext():
    torch.manual_seed(0)
    model = timm.create_model("convnext_atto", pretrained=False, dims=(8, 16, 24, 32), depths=(1, 1, 1, 1))
    with pytest.raises(UnsupportedModelError) as err:
        PrunableViT(model)
    _assert_one_line(err, "ConvNeXt", "not a timm VisionTransformer")


def test_refuses_swin():
    model = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, img_size=32, window_size=4,
                              depths=(1, 1), num_heads=(1, 2), embed_dim=16)
    with pytest.raises(UnsupportedModelError) as err:
        PrunableViT(model)
    _assert_one_line(err, "SwinTransformer", "not a timm VisionTransformer")


def test_refuses_vit_without_class_token():
    model = make_tiny_vit(class_token=False, global_pool="avg")
    with pytest.raises(UnsupportedModelError) as err:
        PrunableViT(model)
    _assert_one_line(err, "no class token")
    assert isinstance(err.value, ValueError)


def test_refuses_nonstandard_blocks_and_dynamic_size():
    with pytest.raises(UnsupportedModelError) as err:
        PrunableViT(make_tiny_vit(block_fn=ResPostBlock))
    _assert_one_line(err, "block 0", "ResPostBlock")
    with pytest.raises(UnsupportedModelError) as err:
        PrunableViT(make_tiny_vit(dynamic_img_size=True))
    _assert_one_line(err, "dynamic_img_size")


# ------------------------------------------------------------------------------ pruning ops

def _idx(scores, theta, p):
    return threshold_keep_indices(torch.tensor([scores]), theta, p).tolist()


def test_threshold_keep_indices_hand_made():
    s = [0.1, 0.3, 0.3, 0.2, 0.05]
    assert _idx(s, 0.3, 1) == [0, 2, 3]            # ties at the threshold are kept (>=)
    assert _idx(s, 0.2, 1) == [0, 2, 3, 4]
    assert _idx(s, 0.2, 2) == [0, 1, 3, 4, 5]      # indices shift by p, prefix always first
    assert _idx(s, 0.31, 1) == [0]                 # all below: prefix only
    assert _idx(s, 0.31, 2) == [0, 1]
    assert _idx(s, 0.0, 1) == [0, 1, 2, 3, 4, 5]   # all above: every token, in order
    assert _idx(s, -1.0, 0) == [0, 1, 2, 3, 4]     # no prefix
    assert _idx(s, torch.tensor(0.3), 1) == [0, 2, 3]  # tensor threshold
    out = threshold_keep_indices(torch.tensor([s]), 0.2, 1)
    assert out.dtype == torch.int64 and out.ndim == 1
    assert _idx([], 0.5, 1) == [0]                 # no patch token left at all


def test_threshold_keep_indices_rejects_batch():
    with pytest.raises(ValueError, match="batch 2"):
        threshold_keep_indices(torch.zeros(2, 4), 0.1, 1)


def test_gather_tokens_keeps_order():
    x = torch.arange(2 * 5 * 3, dtype=torch.float32).reshape(2, 5, 3)
    out = gather_tokens(x, torch.tensor([0, 2, 4]))
    assert torch.equal(out, x[:, [0, 2, 4]])


def test_cls_attention_scores_hand_made():
    # (B=1, H=2, N=3, N=3); only the CLS query row (row 0) matters
    attn = torch.zeros(1, 2, 3, 3)
    attn[0, 0, 0] = torch.tensor([0.5, 0.3, 0.2])
    attn[0, 1, 0] = torch.tensor([0.1, 0.1, 0.8])
    attn[0, :, 1:] = 7.0  # other query rows must be ignored
    s1 = cls_attention_scores(attn, 1)
    assert s1.shape == (1, 2)
    np.testing.assert_allclose(s1.numpy(), [[0.2, 0.5]], atol=1e-7)
    s2 = cls_attention_scores(attn, 2)
    np.testing.assert_allclose(s2.numpy(), [[0.5]], atol=1e-7)
    batch = torch.stack([attn[0], attn[0].flip(0)])
    np.testing.assert_allclose(cls_attention_scores(batch, 1).numpy(), [[0.2, 0.5], [0.2, 0.5]], atol=1e-7)


def test_significance_scores_hand_made():
    # (B=1, H=2, N=3, N=3) attention, (B=1, H=2, N=3, d=2) values; ATS token scoring: sum_h A_h[0, j] ||V_h[j]||, normalised
    attn = torch.zeros(1, 2, 3, 3)
    attn[0, 0, 0] = torch.tensor([0.5, 0.3, 0.2])
    attn[0, 1, 0] = torch.tensor([0.1, 0.1, 0.8])
    attn[0, :, 1:] = 7.0                                   # other query rows are ignored
    v = torch.zeros(1, 2, 3, 2)
    v[0, 0] = torch.tensor([[9.0, 9.0], [3.0, 4.0], [0.0, 1.0]])   # norms (CLS ignored), 5, 1
    v[0, 1] = torch.tensor([[9.0, 9.0], [0.0, 2.0], [0.0, 0.5]])   # norms (CLS ignored), 2, 0.5
    w = np.array([0.3 * 5 + 0.1 * 2, 0.2 * 1 + 0.8 * 0.5])          # 1.7, 0.6
    s = significance_scores(attn, v, 1)
    assert s.shape == (1, 2)
    np.testing.assert_allclose(s.numpy(), [w / w.sum()], atol=1e-7)
    np.testing.assert_allclose(significance_scores(attn, v, 2).numpy(), [[1.0]], atol=1e-7)  # one patch token
    # equal value norms: the ranking (and the normalised score) of the head-averaged CLS attention
    ones = torch.ones(1, 2, 3, 2)
    c = cls_attention_scores(attn, 1)
    np.testing.assert_allclose(significance_scores(attn, ones, 1).numpy(), (c / c.sum(-1, keepdim=True)).numpy(), atol=1e-7)


def test_token_score_names_are_one_list():
    from vitedge import token_score
    from vitedge.models.pruning import TOKEN_SCORES

    assert set(TOKEN_SCORES) == set(token_score.NAMES) and token_score.DEFAULT in TOKEN_SCORES
    assert token_score.recorded({}) == token_score.LEGACY == "cls-attention"
    assert token_score.recorded({"token_score": "significance"}) == "significance"


def test_token_score_setting_drives_the_scores_and_is_restored(tiny_prunable, images):
    pm = tiny_prunable
    assert pm.token_score == "cls-attention"                # the library default: RCTP's score
    with torch.no_grad():
        cls = pm.forward_with_info(images, want_scores=True).scores
        with pm.pruning(token_score="significance"):
            assert all(blk.attn.token_score == "significance" for blk in pm.vit.blocks)
            sig = pm.forward_with_info(images, want_scores=True).scores
        assert pm.token_score == "cls-attention"            # restored on exit
        again = pm.forward_with_info(images, want_scores=True).scores
    for c, s, a in zip(cls, sig, again):
        assert torch.equal(c, a) and not torch.allclose(c, s)
        np.testing.assert_allclose(s.sum(dim=1).numpy(), 1.0, atol=1e-5)
        assert (s >= 0).all()
    with pytest.raises(ValueError, match="unknown token score 'attention'"):
        pm.token_score = "attention"
    with pytest.raises(ValueError, match="unknown token score"):
        with pm.pruning(capacities=[3, 2], token_score="max"):
            pass
    assert pm.token_score == "cls-attention" and pm.capacities == [None, None]


def test_capacity_keeps_the_top_k_by_the_chosen_score(tiny_prunable, images):
    """The kept tokens are the K best by the model's token score (significance here), checked by a manual pipeline."""
    pm = tiny_prunable
    x = images[:2]
    with torch.no_grad(), pm.pruning(capacities=[4, None], token_score="significance"):
        out = pm(x)
        blk0 = pm.vit.blocks[0]
        t, s = blk0.attention_part(pm.embed(x))
        p = pm.num_prefix
        keep = s.argsort(dim=-1, descending=True)[:, :4] + p
        kept = torch.cat([t[:, :p], torch.gather(t, 1, keep.unsqueeze(-1).expand(-1, -1, t.shape[-1]))], dim=1)
        manual = pm.head(Block.forward(pm.vit.blocks[1], blk0.mlp_part(kept)))
    np.testing.assert_allclose(out.numpy(), manual.numpy(), atol=ATOL)


@pytest.mark.parametrize("caps", [[None, 6, None], [6, None, 3], [8, 5, 3]])
def test_cumulative_significance_averages_the_blocks_since_the_previous_selector(images, caps):
    """``cumulative-significance``: a selector at block l ranks by the mean significance of the blocks after the
    previous selector up to l (all blocks from 0 for the first), checked by a plain pipeline with argsort."""
    pm = PrunableViT(make_tiny_vit(depth=3))
    x, p = images[:3], pm.num_prefix
    with torch.no_grad(), pm.pruning(capacities=caps, token_score="cumulative-significance"):
        info = pm.forward_with_info(x)
        out = info.logits
        t, window = pm.embed(x), []
        for blk, k in zip(pm.vit.blocks, caps):
            a, sig = blk.attention_part(t)  # the per-block significance (the model's blocks score by it)
            window.append(sig)
            if k is not None:
                score = torch.stack(window).mean(0)
                keep = score.argsort(dim=-1, descending=True)[:, :k] + p
                a = torch.cat([a[:, :p], torch.gather(a, 1, keep.unsqueeze(-1).expand(-1, -1, a.shape[-1]))], dim=1)
                window = []
            t = blk.mlp_part(a)
        manual = pm.head(t)
        with pm.pruning(capacities=caps, token_score="significance"):
            plain = pm.forward_with_info(x).scores
    np.testing.assert_allclose(out.numpy(), manual.numpy(), atol=ATOL)
    starts = [0] + [l + 1 for l, k in enumerate(caps) if k is not None]  # where each window starts
    for l, k in enumerate(caps):  # a selector's score: the block's own significance only when its window is one block
        if k is not None:
            own = max(b for b in starts if b <= l) == l
            assert torch.allclose(info.scores[l], plain[l], atol=ATOL) == own


# ------------------------------------------------------------------------------ capacity selector

def test_rank_by_counting_is_stable_descending_rank():
    from vitedge.models.pruning import rank_by_counting

    s = torch.tensor([[0.1, 0.3, 0.3, 0.2, 0.05, 0.3], [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]])
    ranks = rank_by_counting(s)
    assert ranks.dtype == s.dtype and torch.equal(ranks, ranks.round())  # integer-valued floats (float-only graph)
    assert ranks.tolist() == [[4, 0, 1, 3, 5, 2], [5, 4, 3, 2, 1, 0]]  # ties: lower index ranks first
    rng = np.random.default_rng(0)
    r = torch.from_numpy(np.round(rng.random((3, 20)), 1))  # many ties
    order = np.argsort(-r.numpy(), axis=1, kind="stable")
    expected = np.empty_like(order)
    np.put_along_axis(expected, order, np.arange(20)[None].repeat(3, 0), axis=1)
    np.testing.assert_array_equal(rank_by_counting(r).numpy(), expected)


def test_capacity_select_keeps_best_first():
    from vitedge.models.pruning import capacity_gather_matrix, capacity_select

    x = torch.arange(1 * 6 * 2, dtype=torch.float32).reshape(1, 6, 2)
    s = torch.tensor([[0.1, 0.3, 0.3, 0.2, 0.05]])  # patch tokens 1..5 (p = 1)
    out = capacity_select(x, s, 3, 1)
    assert torch.equal(out, x[:, [0, 2, 3, 4]])  # CLS + tokens with scores 0.3, 0.3 (tie: lower index first), 0.2
    assert torch.equal(capacity_select(x, s, 0, 1), x[:, :1])
    assert torch.equal(capacity_select(x, s, 5, 1), x[:, [0, 2, 3, 4, 1, 5]])  # every token, best first
    g = capacity_gather_matrix(s, 2)
    assert g.shape == (1, 2, 5) and torch.equal(g.sum(-1), torch.ones(1, 2))
    with pytest.raises(ValueError, match="capacity 6"):
        capacity_gather_matrix(s, 6)


def test_forward_with_capacities(tiny_distilled, images):
    pm = tiny_distilled
    with torch.no_grad():
        ref = pm(images)
        pm.set_capacities([5, 3])
        assert pm.thresholds == [None, None]
        out = pm.forward_with_info(images)  # capacities have static shapes: any batch
        assert [int(k) for k in out.kept] == [5, 3]
        single = torch.cat([pm(images[i:i + 1]) for i in range(images.shape[0])])
        assert (out.logits - single).abs().max() <= 1e-5
        assert (out.logits - ref).abs().max() > 1e-6  # it prunes
        pm.set_capacities([NUM_PATCHES, None])
        assert (pm(images) - ref).abs().max() <= ATOL  # keeping all P tokens changes nothing
        pm.set_thresholds([None, 0.0])
        assert pm.capacities == [None, None]  # thresholds and capacities exclude each other
    for bad in ([1], [NUM_PATCHES + 1, None], [-1, None], [2.5, None]):
        with pytest.raises(ValueError):
            pm.set_capacities(bad)



def test_set_capacities_accepts_numpy_int(tiny_prunable):
    tiny_prunable.set_capacities([np.int64(3), None])
    assert tiny_prunable.capacities == [3, None]


def test_pruning_context_restores_thresholds_capacities_and_package_token(tiny_prunable, images):
    pm = tiny_prunable
    pm.set_capacities([5, 3])
    pm.package_token = True
    with pm.pruning(thresholds=[0.01, None]):
        assert pm.thresholds == [0.01, None] and pm.capacities == [None, None]
    assert pm.capacities == [5, 3] and pm.thresholds == [None, None] and pm.package_token is True
    with pytest.raises(RuntimeError, match="boom"):
        with pm.pruning(package_token=False):             # no values: nothing pruned
            assert pm.capacities == [None, None] and pm.package_token is False
            raise RuntimeError("boom")
    assert pm.capacities == [5, 3] and pm.package_token is True  # restored on error too
    with pytest.raises(ValueError):
        with pm.pruning(capacities=[NUM_PATCHES + 1, None]):
            pass
    assert pm.capacities == [5, 3]                         # a rejected configuration changes nothing
    pm.set_thresholds([0.5, 0.25])
    pm.package_token = False

    class _Schedule:  # anything with apply(model), as vitedge.schedule.Schedule
        def apply(self, model):
            model.set_capacities([4, 2])

    with torch.no_grad(), pm.pruning(_Schedule()):
        assert [int(k) for k in pm.forward_with_info(images).kept] == [4, 2]
    assert pm.thresholds == [0.5, 0.25] and pm.capacities == [None, None]
