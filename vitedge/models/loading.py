"""Load a timm ViT by name, from a checkpoint, or timm's pretrained weights; hash its weights."""
from __future__ import annotations

import hashlib
import warnings
from pathlib import Path

import torch

from .adapter import PrunableViT, UnsupportedModelError
from .reference import REFERENCE_NAME, build_reference


class ModelLoadError(ValueError):
    """The model name, checkpoint or weights cannot be used (one-line message with the fix)."""


def _read_state_dict(path: Path) -> dict:
    if not path.is_file():
        raise ModelLoadError(f"checkpoint {path} does not exist: pass an existing .safetensors or .pth file to --checkpoint")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt file: the libraries raise many types
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelLoadError(f"checkpoint {path} cannot be read ({first}): is it a complete .safetensors or .pth state dict?") from None
    for key in ("state_dict", "model", "model_ema"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelLoadError(f"checkpoint {path} holds no state dict of tensors: save model.state_dict()")
    return state


def load_timm_model(name: str | None = None, *, checkpoint: str | Path | None = None, pretrained: bool = False,
                    num_classes: int | None = None) -> torch.nn.Module:
    """Create a timm model in eval mode.

    Args:
        name: a timm model name, or None / ``"vitedge-digits-vit"`` for the shipped reference model.
        checkpoint: optional weights (.safetensors, or .pth/.pt/.bin read with ``weights_only=True``).
        pretrained: timm's hub download (needs internet).
        num_classes: passed to timm when given.

    Raises:
        ModelLoadError: unknown name, missing/corrupt/mismatched checkpoint, failed download.
    """
    name = name or REFERENCE_NAME
    if name == REFERENCE_NAME:
        try:
            model = build_reference(weights=checkpoint is None)
        except FileNotFoundError as e:
            raise ModelLoadError(str(e)) from None
    else:
        import timm

        if not timm.is_model(name):
            raise ModelLoadError(f"unknown model {name!r}: use a timm name such as vit_small_patch16_224 (list them with timm.list_models('vit_*'))")
        kwargs = {} if num_classes is None else {"num_classes": num_classes}
        try:
            model = timm.create_model(name, pretrained=pretrained, **kwargs)
        except Exception as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ModelLoadError(f"cannot create {name!r} ({first}): check the name, or drop --pretrained when offline") from None
    if checkpoint is not None:
        state = _read_state_dict(Path(checkpoint))
        try:
            model.load_state_dict(state)
        except RuntimeError as e:
            first = str(e).strip().splitlines()[0]
            raise ModelLoadError(f"checkpoint {checkpoint} does not fit {name} ({first}): give the matching --model") from None
    return model.eval()


def load_prunable(name: str | None = None, *, checkpoint=None, pretrained: bool = False) -> PrunableViT:
    """:func:`load_timm_model` + :class:`PrunableViT`; warns when weights are random.

    Raises:
        ModelLoadError, UnsupportedModelError.
    """
    model = load_timm_model(name, checkpoint=checkpoint, pretrained=pretrained)
    prunable = PrunableViT(model)  # raises UnsupportedModelError for non-ViT models
    prunable.model_name = name or REFERENCE_NAME
    prunable.has_weights = (name in (None, REFERENCE_NAME)) or pretrained or checkpoint is not None
    if not prunable.has_weights:
        warnings.warn(f"{name} has random weights (no --pretrained or --checkpoint): latency is meaningful, accuracy is not",
                      stacklevel=2)
    return prunable


def model_hash(model: torch.nn.Module) -> str:
    """SHA-256 (hex, 16 chars) of the architecture name and every parameter/buffer, in key order."""
    h = hashlib.sha256(type(model).__name__.encode())
    for key, value in sorted(model.state_dict().items()):
        h.update(key.encode())
        h.update(str(tuple(value.shape)).encode())
        h.update(value.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


__all__ = ["ModelLoadError", "UnsupportedModelError", "load_timm_model", "load_prunable", "model_hash"]
