"""The ToMe baseline of the benchmarks (benchmarks/_tome.py, written from Bolya et al., ICLR 2023, §3) on tiny timm ViTs."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import NUM_PATCHES, make_tiny_vit
from vitedge.models.adapter import PrunableViT

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))
from _tome import attend, match, merge, merging_block, tome_forward, tome_max_r  # noqa: E402


def test_r0_is_timms_forward(tiny_config, images):
    vit, _, _ = tiny_config
    with torch.no_grad():
        want = vit(images)
        got, kept = tome_forward(PrunableViT(vit), images, 0)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert kept == [NUM_PATCHES] * len(vit.blocks)


def test_r_tokens_merged_per_block(images):
    model = PrunableViT(make_tiny_vit(depth=4))
    r = tome_max_r(NUM_PATCHES, 4)
    assert r == 3  # 16 patch tokens over 4 blocks: 16 13 10 7, and 7 // 2 = 3 still merge in the last one
    with torch.no_grad():
        logits, kept = tome_forward(model, images, r)
    assert kept == [NUM_PATCHES - r * (l + 1) for l in range(4)]
    assert logits.shape == (len(images), 5) and torch.isfinite(logits).all()
    with torch.no_grad():  # one more and the last block runs out of A tokens
        assert tome_forward(model, images, r + 1)[1][-1] > NUM_PATCHES - 4 * (r + 1)


def test_merge_keeps_the_size_weighted_sum():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 1 + 11, 8, generator=g)
    size = torch.randint(1, 5, (2, 12, 1), generator=g).float()
    size[:, 0] = 1
    plan = match(torch.randn(2, 12, 4, generator=g), 4, num_prefix=1)
    x2, s2 = merge(x, size, plan, num_prefix=1)
    assert x2.shape == (2, 12 - 4, 8) and s2.shape == (2, 12 - 4, 1)
    torch.testing.assert_close((x2 * s2).sum(1), (x * size).sum(1))
    torch.testing.assert_close(s2.sum(1), size.sum(1))


def test_merge_is_the_size_weighted_average_of_the_matched_pair():
    # patch tokens 0..3: A = positions 1, 3; B = positions 0, 2. Position 3's key equals position 0's.
    keys = torch.tensor([[[0., 0., 1.], [1., 0., 0.], [0., 1., 0.], [1., 1., 0.], [1., 0., 0.]]])  # class token first
    plan = match(keys, 1, num_prefix=1)
    assert plan.src.tolist() == [[1]] and plan.dst.tolist() == [[0]]
    x = torch.arange(5.).reshape(1, 5, 1) * 10
    size = torch.tensor([1., 1., 2., 1., 3.]).reshape(1, 5, 1)
    x2, s2 = merge(x, size, plan, num_prefix=1)
    merged = (1 * 10. + 3 * 40.) / 4  # patch position 0 (value 10, size 1) with position 3 (value 40, size 3)
    # out: class token, unmerged A (position 1), then B (positions 0 and 2)
    assert x2.flatten().tolist() == pytest.approx([0., 20., merged, 30.])
    assert s2.flatten().tolist() == [1., 2., 4., 1.]


def test_proportional_attention_with_unit_sizes_is_plain_attention():
    blk = make_tiny_vit().blocks[0]
    x = torch.randn(2, 1 + NUM_PATCHES, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        plain = blk.attn(x)
        ones, _ = attend(blk.attn, x, torch.ones(2, 1 + NUM_PATCHES, 1))
        none, _ = attend(blk.attn, x, None)
    torch.testing.assert_close(ones, plain, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(none, plain, atol=1e-6, rtol=1e-5)


def test_a_token_of_size_two_attends_as_two_copies():
    blk = make_tiny_vit().blocks[0]
    x = torch.randn(1, 6, 32, generator=torch.Generator().manual_seed(2))
    size = torch.ones(1, 6, 1)
    size[0, 4] = 2
    doubled = torch.cat([x, x[:, 4:5]], dim=1)
    with torch.no_grad():
        prop, _ = attend(blk.attn, x, size)
        copies = blk.attn(doubled)[:, :6]
    torch.testing.assert_close(prop, copies, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name,prefix", [("vit_tiny_patch16_224", 1), ("deit_tiny_distilled_patch16_224", 2)])
def test_prefix_tokens_are_never_merged(name, prefix):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, prefix + NUM_PATCHES, 32, generator=g)
    keys = x[..., :8].clone()
    keys[:, :prefix] = keys[:, prefix:prefix + 1]  # prefix keys identical to a patch token's: the best match there is
    plan = match(keys, NUM_PATCHES // 2, num_prefix=prefix)
    x2, s2 = merge(x, torch.ones(2, prefix + NUM_PATCHES, 1), plan, num_prefix=prefix)
    assert torch.equal(x2[:, :prefix], x[:, :prefix])
    assert torch.equal(s2[:, :prefix], torch.ones(2, prefix, 1))
    assert x2.shape[1] == prefix + NUM_PATCHES // 2

    blk = make_tiny_vit(name).blocks[0]
    with torch.no_grad():
        out, size = merging_block(blk, x, None, 5, prefix)
        ref = blk(x)
    torch.testing.assert_close(out[:, :prefix], ref[:, :prefix], atol=1e-5, rtol=1e-5)  # merging after its attention
    assert torch.equal(size[:, :prefix], torch.ones(2, prefix, 1))


@pytest.mark.slow
def test_pareto_tome_only_replaces_only_the_eager_section(tmp_path):
    previous = json.loads((BENCH / "results" / "pareto.json").read_text())
    (tmp_path / "pareto.json").write_text(json.dumps(previous))
    cmd = [sys.executable, str(BENCH / "pareto.py"), "--tome-only", "--quick", "--points", "2", "--test-limit", "20",
           "--threads", "1", "--out", str(tmp_path)]
    subprocess.run(cmd, check=True, capture_output=True, env={**os.environ, "VITEDGE_CACHE": str(tmp_path / "cache")})
    data = json.loads((tmp_path / "pareto.json").read_text())
    eager = data["reference"]["torch_eager"]
    assert data["large"] == previous["large"] and data["reference"]["runtimes"] == previous["reference"]["runtimes"]
    assert "torch_eager" in data["remeasured"] and (tmp_path / "pareto.md").exists()
    assert {r["param"] for r in eager["methods"]["tome"]} == {0.0, 1.0, 9.0}
    assert [r["mean_kept"] for r in eager["methods"]["tome"] if r["param"] == 9.0] == [[55, 46, 37, 28, 19, 10]]
    assert "tome (torch eager)" in data["reference"]["relative_summary"]["relative_latency_at_target"]
    assert json.loads((tmp_path / "tome.json").read_text())["torch_eager"] == eager
    md = (tmp_path / "tome.md").read_text()
    assert "relative to the unpruned model timed in the same run" in md and "| ToMe (from the paper)" in md
