"""The package token: the pruned tokens merged into one sized token with proportional attention.

Checked against a plain reference written here with per-token sizes (ToMe §3: every token carries the
patches it stands for, attention adds log size to each key's logits), a stable argsort for the capacity
selector and a comparison for the threshold one: nothing of vitedge's package code is reused.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from conftest import make_tiny_vit
from vitedge.data.digits import ImageSet
from vitedge.exporters.graphs import export_pruned
from vitedge.exporters.onnx import audit_ops
from vitedge.exporters.validation import check_parity
from vitedge.models.adapter import PrunableViT
from vitedge.models.pruning import TOKEN_SCORES, package_key_bias, package_merge


def _attention(blk, x, log_size, p):
    """Explicit MSA with residual and proportional attention; returns tokens and (B, n - p) scores of the
    tokens from column p on."""
    a = blk.attn
    B, N, C = x.shape
    qkv = a.qkv(blk.norm1(x)).reshape(B, N, 3, a.num_heads, a.head_dim).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)
    attn = ((q * a.scale) @ k.transpose(-2, -1) + log_size[:, None, None, :]).softmax(-1)
    out = a.proj((attn @ v).transpose(1, 2).reshape(B, N, C))
    return x + out, TOKEN_SCORES[a.token_score](attn, v, p)


def reference_forward(pm: PrunableViT, x: torch.Tensor, mode: str, values) -> tuple[torch.Tensor, list]:
    """Sizes per token; the package (once there is one) sits after the prefix tokens and is never ranked."""
    p = pm.num_prefix
    tokens = pm.embed(x)
    sizes = torch.ones(tokens.shape[:2])
    packed, kept_counts = False, []
    for blk, value in zip(pm.vit.blocks, values):
        q = p + packed
        tokens, scores = _attention(blk, tokens, sizes.log(), q)
        if value is not None and (mode == "threshold" or value < tokens.shape[1] - q):
            patches, psizes = tokens[:, q:], sizes[:, q:]
            if mode == "capacity":
                order = torch.argsort(-scores, dim=1, stable=True)
                keep_idx, drop_idx = order[:, :value], order[:, value:]
            else:  # batch 1
                keep_idx = torch.nonzero(scores[0] >= value).T
                drop_idx = torch.nonzero(scores[0] < value).T
            take = lambda t, i: torch.gather(t, 1, i.unsqueeze(-1).expand(-1, -1, t.shape[-1]))
            merged_x = take(patches, drop_idx) * torch.gather(psizes, 1, drop_idx).unsqueeze(-1)
            merged_s = torch.gather(psizes, 1, drop_idx).sum(1)
            if packed:
                merged_x = torch.cat([merged_x, tokens[:, p:q] * sizes[:, p:q].unsqueeze(-1)], 1)
                merged_s = merged_s + sizes[:, p]
            package = merged_x.sum(1, keepdim=True) / merged_s.clamp(min=1).reshape(-1, 1, 1)
            tokens = torch.cat([tokens[:, :p], package, take(patches, keep_idx)], 1)
            sizes = torch.cat([sizes[:, :p], merged_s[:, None], torch.gather(psizes, 1, keep_idx)], 1)
            packed = True
        tokens = blk.mlp_part(tokens)
        kept_counts.append(tokens.shape[1] - p)
    return pm.head(tokens), kept_counts


@pytest.fixture
def pm():
    model = PrunableViT(make_tiny_vit(depth=3))
    model.package_token = True
    return model


@pytest.mark.parametrize("score", ["cls-attention", "significance"])
@pytest.mark.parametrize("caps", [[9, None, 3], [12, 6, 2], [None, 5, 5], [4, 4, 1]])
def test_capacity_forward_equals_the_sized_reference(pm, caps, score):
    pm.token_score = score
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    with torch.no_grad(), pm.pruning(capacities=caps):
        out = pm.forward_with_info(x)
        ref, kept = reference_forward(pm, x, "capacity", caps)
    assert [int(k) for k in out.kept] == kept
    torch.testing.assert_close(out.logits, ref, atol=1e-5, rtol=0)


def test_threshold_forward_equals_the_sized_reference(pm):
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        scores = pm.forward_with_info(x, want_scores=True).scores
    thresholds = [float(np.quantile(scores[0].numpy(), 0.5)), None, float(np.quantile(scores[2].numpy(), 0.6))]
    for i in range(len(x)):
        with torch.no_grad(), pm.pruning(thresholds=thresholds):
            out = pm.forward_with_info(x[i:i + 1])
            ref, kept = reference_forward(pm, x[i:i + 1], "threshold", thresholds)
        assert [int(k) for k in out.kept] == kept
        torch.testing.assert_close(out.logits, ref, atol=1e-5, rtol=0)


def test_merge_keeps_the_sum_of_sized_tokens():
    g = torch.Generator().manual_seed(1)
    patches, old = torch.randn(2, 6, 4, generator=g), torch.randn(2, 1, 4, generator=g)
    pruned = torch.tensor([[1, 0, 1, 0, 0, 1], [0, 0, 0, 0, 0, 0]], dtype=torch.float32)
    new = package_merge(old, 3, patches, pruned, torch.tensor([6.0, 3.0]).reshape(2, 1, 1))
    torch.testing.assert_close(6 * new[0], 3 * old[0] + patches[0, [0, 2, 5]].sum(0, keepdim=True))
    torch.testing.assert_close(new[1], old[1])                          # nothing pruned: unchanged
    first = package_merge(None, 0, patches, pruned, 3)                  # the first selector: the plain mean
    torch.testing.assert_close(first[0], patches[0, [0, 2, 5]].mean(0, keepdim=True))
    assert first[1].abs().max() == 0                                    # nothing pruned yet: zeros, and no key:
    bias = package_key_bias(torch.zeros(1, 5, 4), 1, torch.tensor([[[0.0]]]))
    assert bias.shape == (1, 1, 1, 5) and bias[0, 0, 0, 1] == -math.inf and bias[0, 0, 0, [0, 2, 3, 4]].eq(0).all()
    const = package_key_bias(torch.zeros(1, 5, 4), 1, 7)
    torch.testing.assert_close(const[0, 0, 0], torch.tensor([0.0, math.log(7), 0, 0, 0]))


@pytest.mark.parametrize("mode, values", [("capacity", [9, None, 3]), ("threshold", [0.05, None, 0.08])])
def test_onnx_export_matches_pytorch(pm, mode, values, tmp_path):
    with pm.pruning(**{"capacities" if mode == "capacity" else "thresholds": values}):
        path = tmp_path / "pkg.onnx"
        ops = audit_ops(export_pruned(pm, path))
        if mode == "capacity":  # the sizes are static: the bias is a constant, no Log in the graph
            assert "Log" not in ops and "NonZero" not in ops
        else:
            assert ops["Log"] >= 1
        x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(11))
        report = check_parity(pm, path, ImageSet(images=x.numpy(), labels=None, name="random"))
    assert report.max_abs_diff < 1e-4 and report.kept_match == 1.0 and report.top1_agreement == 1.0
