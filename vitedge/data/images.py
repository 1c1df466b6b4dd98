"""Image sets: the embedded digits, or a user folder read with timm's data config and transforms."""
from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path

import numpy as np

from .digits import ImageSet, digits_split

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}


class ImageSetError(ValueError):
    """The image input cannot be used (one-line message naming the fix)."""


def _list_images(root: Path) -> tuple[list[Path], list[int] | None, list[str]]:
    """ImageFolder layout (one sub-folder per class; labels index the sorted class names) or a flat folder.

    Returns:
        files, their class indices in sorted order (None for a flat folder), the sorted class names.
    """
    subdirs = sorted(d for d in root.iterdir() if d.is_dir())
    flat = sorted(f for f in root.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
    if subdirs and not flat:
        files, labels = [], []
        for cls, d in enumerate(subdirs):
            for f in sorted(d.rglob("*")):
                if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES:
                    files.append(f)
                    labels.append(cls)
        return files, labels, [d.name for d in subdirs]
    return flat, None, []


def model_label_index(model) -> dict[str, int]:
    """Class name -> output index of ``model``: its pretrained_cfg ``label_names`` (a list, or an
    index -> name mapping), else the ImageNet synsets timm infers from its class count; {} if none."""
    names = (getattr(model, "pretrained_cfg", None) or {}).get("label_names")
    if isinstance(names, dict):
        return {str(v): int(k) for k, v in names.items()}
    if names:
        return {str(n): i for i, n in enumerate(names)}
    from timm.data import ImageNetInfo, infer_imagenet_subset

    subset = infer_imagenet_subset(model)
    return {n: i for i, n in enumerate(ImageNetInfo(subset).label_names())} if subset else {}


def map_labels(class_names: list[str], labels: list[int], model) -> tuple[np.ndarray, str]:
    """Labels as the model's indices when every class folder is one of its label names ("by name"),
    else the folders' sorted order ("sorted order")."""
    index = model_label_index(model) if class_names else {}
    if index and all(c in index for c in class_names):
        return np.asarray([index[class_names[c]] for c in labels], np.int64), "by name"
    return np.asarray(labels, np.int64), "sorted order"


def model_data_config(model) -> dict:
    """timm's data config of the loaded model (input size, interpolation, mean/std, crop), with the input
    size the model was built with (a checkpoint's or --img-size), which a pretrained_cfg may not state."""
    from timm.data import resolve_model_data_config

    config = dict(resolve_model_data_config(model))
    size = getattr(getattr(model, "patch_embed", None), "img_size", None)
    if size:
        config["input_size"] = (config["input_size"][0], int(size[0]), int(size[1]))
    return config


def load_image_folder(root: str | Path, model, *, limit: int | None = None) -> ImageSet:
    """Read images with the model's timm data config (size, interpolation, crop, mean/std).

    Args:
        root: an ImageFolder-style folder (class sub-folders -> labels) or a flat folder (no labels).
        model: the timm model (:func:`model_data_config` gives the transforms, :func:`map_labels` the labels).
        limit: keep the first ``limit`` images (in sorted order).

    Returns:
        :class:`ImageSet` with images (D, 3, H, W) float32 and its ``label_mapping``.

    Raises:
        ImageSetError: missing folder, no images, unreadable image.
    """
    from PIL import Image
    from timm.data import create_transform

    root = Path(root)
    if not root.is_dir():
        raise ImageSetError(f"image folder {root} does not exist: pass a folder of images to --data")
    files, labels, class_names = _list_images(root)
    if not files:
        raise ImageSetError(f"no images in {root} (looked for {', '.join(sorted(IMAGE_SUFFIXES))}): add images or use the default data")
    if limit is not None:
        files = files[:limit]
        labels = labels[:limit] if labels is not None else None
    transform = create_transform(**model_data_config(model), is_training=False)
    arrays = []
    for f in files:
        try:
            with Image.open(f) as im:
                arrays.append(transform(im.convert("RGB")).numpy())
        except Exception as e:
            raise ImageSetError(f"cannot read image {f} ({type(e).__name__}): remove or replace it") from None
    mapped, mapping = map_labels(class_names, labels, model) if labels is not None else (None, None)
    return ImageSet(images=np.stack(arrays).astype(np.float32), labels=mapped, name=str(root), label_mapping=mapping)


def resized_digits(split: str, input_size: tuple[int, int, int]) -> ImageSet:
    """The digits split resized (bilinear) to another model's input size: real images for any ViT."""
    import torch
    import torch.nn.functional as F

    base = digits_split(split)
    x = F.interpolate(torch.from_numpy(base.images), size=tuple(input_size[1:]), mode="bilinear", align_corners=False)
    if input_size[0] != x.shape[1]:
        x = x[:, :1].expand(-1, input_size[0], -1, -1)
    return ImageSet(images=x.contiguous().numpy(), labels=None, name=f"{base.name}@{input_size[1]}x{input_size[2]}")


def resolve_images(data: str | Path | None, model, *, input_size: tuple[int, int, int], split: str = "calib",
                   limit: int | None = None, reference: bool = True) -> ImageSet:
    """``data`` folder if given; else the digits split (resized, unlabelled, for non-reference models).

    Raises:
        ImageSetError: see :func:`load_image_folder`.
    """
    if data is not None:
        return load_image_folder(data, model, limit=limit)
    if reference:
        images = digits_split(split)
    else:  # no labels: the digit classes are not this model's classes
        images = resized_digits(split, input_size)
    if limit is not None and len(images) > limit:
        images = replace(images, images=images.images[:limit], labels=None if images.labels is None else images.labels[:limit])
    return images


def image_set_hash(images: ImageSet) -> str:
    """SHA-256 (hex, 16 chars) of the image tensor bytes and labels."""
    h = hashlib.sha256(images.images.tobytes())
    if images.labels is not None:
        h.update(images.labels.tobytes())
    return h.hexdigest()[:16]
