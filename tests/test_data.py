"""Image sets (vitedge.data): the embedded digits splits and user image folders."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from vitedge.data import digits
from vitedge.data.digits import (
    CANVAS, SPLIT_SIZES, TEST_PLACEMENTS, ImageSet, _digit_indices, digits_split, place_on_canvas, train_epoch,
)
from vitedge.data.images import ImageSetError, image_set_hash, load_image_folder, resized_digits, resolve_images
from vitedge.models.reference import build_reference


@pytest.fixture(scope="module")
def calib():
    return digits_split("calib")


@pytest.fixture(scope="module")
def test_split():
    return digits_split("test")


@pytest.fixture(scope="module")
def reference_vit():
    """The reference architecture (32x32, mean/std 0.5, crop_pct 1.0) without weights."""
    return build_reference(weights=False)


# ------------------------------------------------------------------------------ digits

def test_split_indices_disjoint_and_complete():
    idx = _digit_indices()
    assert {k: len(v) for k, v in idx.items()} == SPLIT_SIZES
    sets = {k: set(v.tolist()) for k, v in idx.items()}
    assert all(len(sets[k]) == len(idx[k]) for k in idx)  # no digit twice within a split
    assert not (sets["train"] & sets["calib"]) and not (sets["train"] & sets["test"]) and not (sets["calib"] & sets["test"])
    assert sets["train"] | sets["calib"] | sets["test"] == set(range(sum(SPLIT_SIZES.values())))
    again = _digit_indices()
    assert all(np.array_equal(idx[k], again[k]) for k in idx)


def test_split_sizes_shapes_and_labels(calib, test_split):
    assert len(calib) == SPLIT_SIZES["calib"] == 200
    assert len(test_split) == SPLIT_SIZES["test"] * TEST_PLACEMENTS == 600
    for s, name in ((calib, "digits:calib"), (test_split, "digits:test")):
        assert s.images.shape == (len(s), 3, CANVAS, CANVAS) and s.images.dtype == np.float32
        assert s.labels.shape == (len(s),) and s.labels.dtype == np.int64
        assert s.name == name
        assert set(np.unique(s.labels).tolist()) == set(range(10))
        counts = np.bincount(s.labels, minlength=10)
        assert counts.min() >= 0.8 * counts.mean()  # stratified split
        # the three channels are the same grey image
        assert np.array_equal(s.images[:, 0], s.images[:, 1]) and np.array_equal(s.images[:, 0], s.images[:, 2])


def test_test_split_places_each_digit_twice(test_split):
    from sklearn.datasets import load_digits

    idx = _digit_indices()["test"]
    half = len(idx)
    np.testing.assert_array_equal(test_split.labels[:half], test_split.labels[half:])
    np.testing.assert_array_equal(test_split.labels[:half], load_digits().target[idx])
    # same digit, other position: the images differ
    assert not np.array_equal(test_split.images[:half], test_split.images[half:])


def test_digits_deterministic(calib):
    again = digits_split("calib")
    np.testing.assert_array_equal(calib.images, again.images)
    np.testing.assert_array_equal(calib.labels, again.labels)
    e1, e1b, e2 = train_epoch(1), train_epoch(1), train_epoch(2)
    assert len(e1) == SPLIT_SIZES["train"]
    np.testing.assert_array_equal(e1.images, e1b.images)
    assert not np.array_equal(e1.images, e2.images)        # fresh positions per epoch
    np.testing.assert_array_equal(e1.labels, e2.labels)      # same digits


def test_digits_normalised_range(calib, test_split):
    for s in (calib, test_split):
        assert s.images.min() == -1.0 and s.images.max() <= 1.0 and s.images.max() > 0.9
        assert ((s.images >= -1.0) & (s.images <= 1.0)).all()


def test_three_quarters_of_patches_are_background(calib, test_split):
    for s in (calib, test_split):
        x = s.images[:, 0]
        patches = x.reshape(len(s), 8, 4, 8, 4).transpose(0, 1, 3, 2, 4).reshape(len(s), 64, 16)
        background = (patches == -1.0).all(axis=2)  # pure black canvas
        frac = background.mean()
        assert 0.70 <= frac <= 0.85, frac
        # a 16x16 digit covers at most 5x5 patches, so at least 39 of 64 patches are background per image
        assert background.sum(axis=1).min() >= 64 - 25


def test_place_on_canvas_hand_made():
    d = np.zeros((1, 8, 8))
    d[0, 0, 0] = 16  # one full-ink pixel -> a 2x2 white block at the top-left corner of the digit
    out = place_on_canvas(d, np.array([[3, 5]]))
    assert out.shape == (1, 3, 32, 32) and out.dtype == np.float32
    white = np.argwhere(out[0, 0] == 1.0)
    assert white.tolist() == [[3, 5], [3, 6], [4, 5], [4, 6]]
    assert (out[0, 0][out[0, 0] != 1.0] == -1.0).all()


def test_unknown_split_raises():
    with pytest.raises(ValueError, match="train"):
        digits_split("train")


# ------------------------------------------------------------------------------ image folders

def _png(path, value, size=32):
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.full((size, size, 3), value, np.uint8)
    arr[0, 0] = (255, 0, 128)
    Image.fromarray(arr).save(path)
    return arr


def test_image_folder_layout(tmp_path, reference_vit):
    arrays = {}
    for cls, values in (("cat", (10, 20)), ("dog", (200,))):
        for i, v in enumerate(values):
            arrays[(cls, i)] = _png(tmp_path / cls / f"img{i}.png", v)
    (tmp_path / "dog" / "notes.txt").write_text("not an image")
    s = load_image_folder(tmp_path, reference_vit)
    assert isinstance(s, ImageSet) and s.name == str(tmp_path)
    assert s.images.shape == (3, 3, 32, 32) and s.images.dtype == np.float32
    np.testing.assert_array_equal(s.labels, [0, 0, 1])  # sorted class folders -> class index
    # the reference data config: no resize at 32x32, (x/255 - 0.5) / 0.5
    expected = (arrays[("cat", 0)].transpose(2, 0, 1) / 255.0 - 0.5) / 0.5
    np.testing.assert_allclose(s.images[0], expected, atol=1e-6)
    limited = load_image_folder(tmp_path, reference_vit, limit=2)
    assert len(limited) == 2 and limited.labels.tolist() == [0, 0]


def test_flat_folder_has_no_labels(tmp_path, reference_vit):
    for i, v in enumerate((0, 50, 255)):
        _png(tmp_path / f"{i}.png", v, size=40)  # resized/cropped to the model's 32x32
    s = load_image_folder(tmp_path, reference_vit)
    assert s.labels is None
    assert s.images.shape == (3, 3, 32, 32)
    assert s.images[0].mean() < s.images[1].mean() < s.images[2].mean()


def test_empty_missing_corrupt_folders(tmp_path, reference_vit):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("no images here")
    for root, needle in ((empty, "no images"), (tmp_path / "missing", "does not exist")):
        with pytest.raises(ImageSetError) as err:
            load_image_folder(root, reference_vit)
        assert needle in str(err.value) and "\n" not in str(err.value)
    bad = tmp_path / "bad"
    _png(bad / "good.png", 10)
    (bad / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    with pytest.raises(ImageSetError) as err:
        load_image_folder(bad, reference_vit)
    assert "broken.png" in str(err.value) and "\n" not in str(err.value)
    assert isinstance(err.value, ValueError)


def test_image_set_hash():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 4, 4)).astype(np.float32)
    a = ImageSet(images=x, labels=np.array([0, 1]), name="a")
    h = image_set_hash(a)
    assert len(h) == 16
    assert image_set_hash(ImageSet(images=x.copy(), labels=np.array([0, 1]), name="other name")) == h
    y = x.copy()
    y[1, 2, 3, 3] += 1e-3  # one pixel
    assert image_set_hash(ImageSet(images=y, labels=np.array([0, 1]), name="a")) != h
    assert image_set_hash(ImageSet(images=x, labels=np.array([1, 1]), name="a")) != h
    assert image_set_hash(ImageSet(images=x, labels=None, name="a")) != h


def test_resolve_images_and_resized_digits(calib, reference_vit, tmp_path):
    ref = resolve_images(None, reference_vit, input_size=(3, 32, 32), limit=10)
    np.testing.assert_array_equal(ref.images, calib.images[:10])
    np.testing.assert_array_equal(ref.labels, calib.labels[:10])
    other = resized_digits("calib", (3, 48, 48))
    assert other.images.shape == (200, 3, 48, 48) and other.labels is None
    assert other.images.min() >= -1.0 - 1e-6 and other.images.max() <= 1.0 + 1e-6
    unlabelled = resolve_images(None, reference_vit, input_size=(1, 16, 16), limit=5, reference=False)
    assert unlabelled.images.shape == (5, 1, 16, 16) and unlabelled.labels is None
    _png(tmp_path / "x.png", 7)
    assert len(resolve_images(tmp_path, reference_vit, input_size=(3, 32, 32))) == 1


def test_digits_module_constants():
    assert sum(SPLIT_SIZES.values()) == 1797  # scikit-learn's digits
    assert digits.DIGIT * 2 == CANVAS
