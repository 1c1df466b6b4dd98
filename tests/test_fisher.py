"""RCTP stage 1 (vitedge.calibration.fisher): CLS scores and per-token Fisher information."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import CLASSES, NUM_PATCHES, make_tiny_vit
from vitedge.calibration.fisher import collect_stage1
from vitedge.data.digits import ImageSet
from vitedge.models.adapter import PrunableViT


def _image_set(n, *, labels=True, seed=0, dtype=np.float32, size=32):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 3, size, size)).astype(dtype)
    y = rng.integers(0, CLASSES, n).astype(np.int64) if labels else None
    return ImageSet(images=x, labels=y, name="random")


@pytest.fixture
def model():
    return PrunableViT(make_tiny_vit("deit_tiny_distilled_patch16_224"))


def test_shapes_and_dtypes(model):
    images = _image_set(5)
    s1 = collect_stage1(model, images, batch_size=2, progress=False)
    L, D, P = model.depth, 5, NUM_PATCHES
    assert s1.scores.shape == (L, D, P) and s1.fisher.shape == (L, D, P)
    assert s1.scores.dtype == np.float32 and s1.fisher.dtype == np.float32
    assert s1.labels.shape == (D,) and s1.model_top1.shape == (D,)
    assert np.isfinite(s1.fisher).all() and (s1.fisher >= 0).all() and s1.fisher.sum() > 0
    assert (s1.scores >= 0).all() and (s1.scores.sum(axis=2) <= 1 + 1e-6).all()


def test_scores_equal_unpruned_forward(model):
    images = _image_set(3)
    s1 = collect_stage1(model, images, batch_size=3, progress=False)
    with torch.no_grad():
        out = model.forward_with_info(torch.from_numpy(images.images), want_scores=True)
    for l in range(model.depth):
        np.testing.assert_allclose(s1.scores[l], out.scores[l].numpy(), atol=1e-7)
    np.testing.assert_array_equal(s1.model_top1, out.logits.argmax(-1).numpy())


def test_batched_fisher_equals_batch_one(model):
    images = _image_set(5, seed=1)
    batched = collect_stage1(model, images, batch_size=5, progress=False)
    single = collect_stage1(model, images, batch_size=1, progress=False)
    ragged = collect_stage1(model, images, batch_size=3, progress=False)  # last batch of 2
    for other in (single, ragged):
        np.testing.assert_allclose(batched.fisher, other.fisher, rtol=1e-4, atol=1e-12)
        np.testing.assert_allclose(batched.scores, other.scores, atol=1e-6)
        np.testing.assert_array_equal(batched.labels, other.labels)


def _sharpen(vit, seed=0):
    """Redraw the weights larger than timm's init (std 0.02), so losses and gradients are far from flat."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in vit.named_parameters():
            if p.ndim >= 2 or "token" in name:
                p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * (0.3 if p.ndim == 2 else 1.0))
    return vit


@pytest.mark.parametrize("pool", ["token", "avg"])
def test_fisher_equals_finite_difference(pool):
    """(dL/dm_j)^2 against a central difference of the loss in the mask of one token, in float64."""
    pm = PrunableViT(_sharpen(make_tiny_vit(seed=3, global_pool=pool)).double())
    images = _image_set(2, seed=4, dtype=np.float64)
    s1 = collect_stage1(pm, images, batch_size=2, progress=False)
    L, N, p = pm.depth, pm.num_tokens, pm.num_prefix
    eps = 1e-6
    fd = np.zeros((L, 2, NUM_PATCHES))
    for d in range(2):
        x = torch.from_numpy(images.images[d:d + 1])
        y = torch.from_numpy(images.labels[d:d + 1])

        def loss(l, tok, delta):
            masks = [torch.ones(1, N, 1, dtype=torch.float64) for _ in range(L)]
            masks[l][0, tok, 0] += delta
            with torch.no_grad():
                return F.cross_entropy(pm.forward_with_info(x, fisher_masks=masks).logits, y).item()

        for l in range(L):
            for j in range(NUM_PATCHES):
                fd[l, d, j] = (loss(l, p + j, eps) - loss(l, p + j, -eps)) / (2 * eps)
    np.testing.assert_allclose(s1.fisher[0], fd[0] ** 2, rtol=1e-4, atol=1e-10)
    assert (fd[0] ** 2).max() > 1e-4  # gradients are not ~0: the comparison is not vacuous
    if pool == "token":
        # the last block's patch tokens never reach the CLS token again: no Fisher information
        assert np.all(s1.fisher[-1] == 0) and np.abs(fd[-1]).max() < 1e-8
    else:
        np.testing.assert_allclose(s1.fisher[-1], fd[-1] ** 2, rtol=1e-4, atol=1e-10)
        assert (fd[-1] ** 2).max() > 1e-4


def test_fisher_mask_of_ones_leaves_logits_unchanged(model):
    x = torch.from_numpy(_image_set(2).images)
    masks = [torch.ones(2, model.num_tokens, 1) for _ in range(model.depth)]
    with torch.no_grad():
        a = model.forward_with_info(x, fisher_masks=masks).logits
        b = model.vit(x)
        masks[0][:, 3] = 0.0  # zeroing one token's MSA output changes the result
        c = model.forward_with_info(x, fisher_masks=masks).logits
    assert (a - b).abs().max() <= 1e-5
    assert (a - c).abs().max() > 1e-6


def test_label_source(model):
    unlabelled = _image_set(4, seed=2, labels=False)
    own = collect_stage1(model, unlabelled, progress=False)
    assert own.label_source == "model"
    np.testing.assert_array_equal(own.labels, own.model_top1)
    # labels that disagree with the model's top-1 everywhere
    images = ImageSet(images=unlabelled.images, labels=(own.model_top1 + 1) % CLASSES, name="labelled")
    data = collect_stage1(model, images, progress=False)
    assert data.label_source == "data"
    np.testing.assert_array_equal(data.labels, images.labels)
    np.testing.assert_array_equal(data.model_top1, own.model_top1)
    assert not np.allclose(data.fisher, own.fisher, rtol=1e-2, atol=0)  # the loss really used the data labels
    forced = collect_stage1(model, images, use_labels=False, progress=False)
    assert forced.label_source == "model"
    np.testing.assert_array_equal(forced.labels, own.model_top1)
    np.testing.assert_allclose(forced.fisher, own.fisher, rtol=1e-6, atol=1e-12)


def test_thresholds_are_ignored_and_restored(model):
    images = _image_set(2)
    ref = collect_stage1(model, images, progress=False)
    model.set_thresholds([0.05, None])
    s1 = collect_stage1(model, images, batch_size=2, progress=False)  # batch 2 would fail if pruning ran
    assert model.thresholds == [0.05, None]
    np.testing.assert_allclose(s1.fisher, ref.fisher, rtol=1e-5, atol=1e-12)


def test_wrong_image_size_raises(model):
    with pytest.raises(ValueError, match=r"\(3, 48, 48\)"):
        collect_stage1(model, _image_set(2, size=48), progress=False)


def test_empty_image_set_raises(model):
    empty = ImageSet(images=np.zeros((0, 3, 32, 32), np.float32), labels=None, name="empty")
    with pytest.raises(ValueError, match="empty"):
        collect_stage1(model, empty, progress=False)


def test_capacity_configuration_survives_calibration(model):
    """Stage 1 runs the unpruned model and hands back the caller's capacities (and package token)."""
    images = _image_set(2)
    ref = collect_stage1(model, images, progress=False)
    model.set_capacities([5, 3])
    model.package_token = True
    s1 = collect_stage1(model, images, batch_size=2, progress=False)
    assert model.capacities == [5, 3] and model.thresholds == [None, None] and model.package_token is True
    np.testing.assert_allclose(s1.fisher, ref.fisher, rtol=1e-5, atol=1e-12)
