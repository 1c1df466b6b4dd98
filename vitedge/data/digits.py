"""The embedded default image set: scikit-learn's handwritten digits placed on a larger canvas.

Each 8x8 digit (ink 0..16) is upsampled to 16x16 and pasted at a position inside a 32x32 black
canvas, so with patch size 4 the model sees 64 patch tokens of which about three quarters are pure
background -- the situation token pruning exploits on natural photos. The split is fixed
(stratified, seed 0) and the three parts are disjoint digits:

========  ======  ==========================================================
split     digits  images
========  ======  ==========================================================
train     1297    one random position per digit per epoch (``train_epoch``)
calib      200    one fixed position per digit (seeded)                -> 200
test       300    ``TEST_PLACEMENTS`` fixed positions per digit (seeded) -> 600
========  ======  ==========================================================
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

CANVAS = 32
DIGIT = 16
MEAN = (0.5, 0.5, 0.5)
STD = (0.5, 0.5, 0.5)
SPLIT_SIZES = {"train": 1297, "calib": 200, "test": 300}
TEST_PLACEMENTS = 2
SPLIT_SEED = 0
_PLACEMENT_SEEDS = {"calib": 1, "test": 2}


@dataclass(frozen=True)
class ImageSet:
    """Images ready for the model and their labels.

    Attributes:
        images: float32 (D, 3, H, W), normalised with the model's mean/std.
        labels: int64 (D,), or None when the images carry no labels.
        name: human-readable source, e.g. ``"digits:calib"`` or a folder path.
        label_mapping: how a folder's class names became label indices: ``"by name"`` (the model's
            label names) or ``"sorted order"``; None for unlabelled or built-in images.
    """

    images: np.ndarray
    labels: np.ndarray | None
    name: str
    label_mapping: str | None = None

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def subset(self, n: int) -> "ImageSet":
        """The first ``n`` images (n >= 1), labels kept; named ``name[:n]``."""
        n = max(1, min(int(n), len(self)))
        return ImageSet(self.images[:n], None if self.labels is None else self.labels[:n], f"{self.name}[:{n}]")


def _digit_indices() -> dict[str, np.ndarray]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    y = load_digits().target
    idx = np.arange(len(y))
    train, rest = train_test_split(idx, train_size=SPLIT_SIZES["train"], stratify=y, random_state=SPLIT_SEED)
    calib, test = train_test_split(rest, train_size=SPLIT_SIZES["calib"], stratify=y[rest], random_state=SPLIT_SEED)
    return {"train": np.sort(train), "calib": np.sort(calib), "test": np.sort(test)}


def place_on_canvas(digits: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """Paste upsampled digits on a black canvas and normalise.

    Args:
        digits: (D, 8, 8) ink values 0..16.
        positions: (D, 2) integer (row, col) of the digit's top-left corner, each in [0, 16].

    Returns:
        float32 (D, 3, 32, 32), ink in [0, 1] normalised to (x - 0.5) / 0.5.
    """
    big = np.kron(digits.astype(np.float32) / 16.0, np.ones((2, 2), np.float32))  # (D, 16, 16)
    canvas = np.zeros((len(digits), CANVAS, CANVAS), np.float32)
    for i, (r, c) in enumerate(positions):
        canvas[i, r:r + DIGIT, c:c + DIGIT] = big[i]
    canvas = (canvas - MEAN[0]) / STD[0]
    return np.repeat(canvas[:, None], 3, axis=1)


def _random_positions(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.integers(0, CANVAS - DIGIT + 1, size=(n, 2))


def digits_split(split: str) -> ImageSet:
    """The fixed calibration or test image set (see the module docstring).

    Raises:
        ValueError: ``split`` is not "calib" or "test" (training uses :func:`train_epoch`).
    """
    if split not in _PLACEMENT_SEEDS:
        raise ValueError(f"unknown digits split {split!r}: use 'calib' or 'test'")
    from sklearn.datasets import load_digits

    data = load_digits()
    idx = _digit_indices()[split]
    reps = TEST_PLACEMENTS if split == "test" else 1
    idx = np.tile(idx, reps)
    rng = np.random.default_rng(_PLACEMENT_SEEDS[split])
    images = place_on_canvas(data.images[idx], _random_positions(rng, len(idx)))
    return ImageSet(images=images, labels=data.target[idx].astype(np.int64), name=f"digits:{split}")


def train_epoch(epoch: int, seed: int = 0) -> ImageSet:
    """The training digits at fresh random positions for one epoch (deterministic per epoch)."""
    from sklearn.datasets import load_digits

    data = load_digits()
    idx = _digit_indices()["train"]
    rng = np.random.default_rng([seed, epoch])
    images = place_on_canvas(data.images[idx], _random_positions(rng, len(idx)))
    return ImageSet(images=images, labels=data.target[idx].astype(np.int64), name=f"digits:train@{epoch}")
