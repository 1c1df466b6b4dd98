"""Load a timm ViT and hash its weights.

Model forms (``name``):
- a timm name, optionally with a pretrained tag (``vit_tiny_patch16_224.augreg_in21k``): the tag picks
  timm's pretrained config (input size, mean/std, classes) and, with ``pretrained``, its weights;
- ``local-dir:DIR`` (what ``timm.models.save_for_hf`` writes: config.json + weights) and ``hf-hub:ORG/NAME``
  (needs internet): passed to ``timm.create_model`` as it takes them, weights included;
- None / ``vitedge-digits-vit``: the shipped reference model.

Checkpoints: .safetensors, or .pth/.pth.tar/.pt/.bin read with ``torch.load(weights_only=True)`` where the
only class allowed besides tensors is ``argparse.Namespace`` (the ``args`` of timm's training
checkpoints). Training checkpoints hold the weights under ``state_dict``/``model`` and the EMA weights under
``state_dict_ema``/``model_ema``; a ``module.`` (DDP) or ``_orig_mod.`` (torch.compile) prefix is stripped.
The head's class count (``head``, ``head_dist``) and the input size (the position embedding's grid times the
patch size, prefix tokens aside) are read from the checkpoint unless given, the model is built with them,
and the weights are loaded strictly.
"""
from __future__ import annotations

import argparse
import hashlib
import math
import pickle
import re
import warnings
from pathlib import Path

import torch

from .adapter import PrunableViT, UnsupportedModelError
from .reference import REFERENCE_NAME, build_reference

SOURCES = ("local-dir", "hf-hub")           # timm.create_model's model sources (they carry their weights)
WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DDP / torch.compile wrappers in saved keys
WEIGHT_KEYS = ("state_dict", "model")       # where training checkpoints keep the weights ...
EMA_KEYS = ("state_dict_ema", "model_ema")  # ... and their exponential moving average
SAFE_GLOBALS = [argparse.Namespace]         # the only pickled class weights_only loading may build


class ModelLoadError(ValueError):
    """The model name, checkpoint or weights cannot be used (one-line message with the fix)."""


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


# ------------------------------------------------------------------------------ checkpoints

def _torch_load(path: Path):
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"GLOBAL (\S+)", str(e))
        if found is None:
            raise
        raise ModelLoadError(f"checkpoint {path} holds a pickled {found.group(1)}, which vitedge does not unpickle (it reads "
                             "tensors and argparse.Namespace only): save the weights alone, "
                             "torch.save(model.state_dict(), F) or safetensors") from None


def _pick_weights(state, path: Path, ema: bool):
    """The weights inside a training checkpoint (or the checkpoint itself when it is a bare state dict)."""
    if not isinstance(state, dict):
        return state
    for key in EMA_KEYS if ema else WEIGHT_KEYS:
        if isinstance(state.get(key), dict):
            return state[key]
    if ema:
        raise ModelLoadError(f"checkpoint {path} has no EMA weights ({' or '.join(EMA_KEYS)}): drop --ema")
    only_ema = [k for k in EMA_KEYS if isinstance(state.get(k), dict)]
    if only_ema:
        raise ModelLoadError(f"checkpoint {path} holds only EMA weights ({only_ema[0]}): pass --ema to use them")
    return state


def _strip_wrappers(key: str) -> str:
    stripped = True
    while stripped:
        stripped = False
        for prefix in WRAPPER_PREFIXES:
            if key.startswith(prefix):
                key, stripped = key[len(prefix):], True
    return key


def read_checkpoint(path: str | Path, *, ema: bool = False) -> dict:
    """The state dict in ``path``: a .safetensors file, a saved state dict, or a timm training checkpoint.

    Args:
        path: the checkpoint file.
        ema: take the EMA weights of a training checkpoint (``state_dict_ema`` / ``model_ema``).

    Raises:
        ModelLoadError: missing or unreadable file, a pickled class other than argparse.Namespace, no
            tensors, EMA weights asked for but absent (or only EMA weights and ``ema`` not set).
    """
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"checkpoint {path} does not exist: pass an existing .safetensors or .pth file to --checkpoint")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = _torch_load(path)
    except ModelLoadError:
        raise
    except Exception as e:  # corrupt file: the libraries raise many types
        raise ModelLoadError(f"checkpoint {path} cannot be read ({_first_line(e)}): "
                             "is it a complete .safetensors or .pth state dict?") from None
    state = _pick_weights(state, path, ema)
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelLoadError(f"checkpoint {path} holds no state dict of tensors: save model.state_dict()")
    return {_strip_wrappers(k): v for k, v in state.items()}


def _head_classes(state: dict) -> int | None:
    """Classes of the checkpoint's head (and distillation head) when they agree, else None."""
    counts = {int(state[k].shape[0]) for k in ("head.weight", "head_dist.weight") if k in state and state[k].ndim == 2}
    return counts.pop() if len(counts) == 1 else None


def _grid_img_size(state: dict, model) -> tuple[int, int] | None:
    """Input size (H, W) of the checkpoint's position embedding: its patch positions (the tokens after the
    prefix ones, unless the model embeds no prefix position) form a square grid of patches. None when the
    grid cannot be read (no pos_embed, another width, not a square)."""
    ckpt, own = state.get("pos_embed"), getattr(model, "pos_embed", None)
    if not isinstance(own, torch.Tensor) or ckpt is None or ckpt.ndim != 3 or ckpt.shape[-1] != own.shape[-1]:
        return None
    prefix = 0 if getattr(model, "no_embed_class", False) else int(getattr(model, "num_prefix_tokens", 1))
    positions = int(ckpt.shape[1]) - prefix
    side = math.isqrt(max(positions, 0))
    if positions <= 0 or side * side != positions:
        return None
    ph, pw = model.patch_embed.patch_size
    return side * ph, side * pw


def checkpoint_overrides(state: dict, model, *, num_classes: int | None = None,
                         img_size: int | tuple[int, int] | None = None) -> dict:
    """``num_classes`` / ``img_size`` for ``timm.create_model`` that make ``model``'s architecture take ``state``.

    Explicit values win; the others are read from the checkpoint and given only when they differ from
    ``model``'s (built with the defaults). Empty when nothing needs changing.
    """
    out = {}
    classes = num_classes if num_classes is not None else _head_classes(state)
    if classes is not None and classes != getattr(model, "num_classes", None):
        out["num_classes"] = classes
    size = img_size if img_size is not None else _grid_img_size(state, model)
    if size is not None:
        pair = (size, size) if isinstance(size, int) else tuple(size)
        if pair != tuple(getattr(getattr(model, "patch_embed", None), "img_size", ()) or ()):
            out["img_size"] = size
    return out


def _check_fits(model, state: dict, checkpoint, name: str) -> None:
    """One line naming the first key the checkpoint and the model disagree on (missing, shape, unexpected)."""
    own = model.state_dict()
    fix = "give the matching --model (or --num-classes / --img-size)"
    for key, value in own.items():
        if key not in state:
            raise ModelLoadError(f"checkpoint {checkpoint} does not fit {name}: it lacks {key} {tuple(value.shape)}: {fix}")
        if tuple(state[key].shape) != tuple(value.shape):
            raise ModelLoadError(f"checkpoint {checkpoint} does not fit {name}: {key} is {tuple(state[key].shape)} in the "
                                 f"checkpoint, {tuple(value.shape)} in the model: {fix}")
    extra = [k for k in state if k not in own]
    if extra:
        raise ModelLoadError(f"checkpoint {checkpoint} does not fit {name}: it has {extra[0]} {tuple(state[extra[0]].shape)}, "
                             f"which the model has not ({len(extra)} such keys): {fix}")


# ------------------------------------------------------------------------------ names

def _source(name: str) -> str | None:
    """timm's model source of ``name`` (``local-dir``, ``hf-hub``) or None for a registry name (checked)."""
    import timm
    from timm.models import parse_model_name, split_model_name_tag

    try:
        source, model_id = parse_model_name(name)
    except ValueError as e:
        raise ModelLoadError(f"model {name!r}: {_first_line(e)}") from None
    if source is None:
        if not timm.is_model(split_model_name_tag(model_id)[0]):
            raise ModelLoadError(f"unknown model {name!r}: use a timm name such as vit_small_patch16_224 (list them with "
                                 "timm.list_models('vit_*')), local-dir:DIR or hf-hub:ORG/NAME")
    elif source == "local-dir":
        folder = Path(model_id)
        if not (folder / "config.json").is_file():
            what = "has no config.json" if folder.is_dir() else "does not exist"
            raise ModelLoadError(f"model folder {folder} {what}: pass a folder written by timm.models.save_for_hf "
                                 "(config.json + model.safetensors) to --model local-dir:DIR")
    return source


def _create(name: str, source: str | None, *, pretrained: bool, **kwargs) -> torch.nn.Module:
    import timm

    try:
        return timm.create_model(name, pretrained=pretrained, **kwargs)
    except Exception as e:
        kind = {c.__name__ for c in type(e).__mro__}
        if source == "hf-hub" and kind & {"LocalEntryNotFoundError", "ConnectionError", "OfflineModeIsEnabled"}:
            raise ModelLoadError(f"cannot reach the Hugging Face Hub for {name!r} (offline?): connect to the internet, or "
                                 "save the model once with timm.models.save_for_hf and pass --model local-dir:DIR") from None
        if source == "hf-hub" and kind & {"RepositoryNotFoundError", "EntryNotFoundError"}:
            raise ModelLoadError(f"cannot load {name!r} from the Hugging Face Hub ({_first_line(e)}): check ORG/NAME "
                                 "(a timm model repository with config.json)") from None
        if source == "local-dir":
            raise ModelLoadError(f"cannot create {name!r} ({_first_line(e)}): the folder needs config.json and the weights "
                                 "(model.safetensors or pytorch_model.bin) that timm.models.save_for_hf writes") from None
        raise ModelLoadError(f"cannot create {name!r} ({_first_line(e)}): check the name and its pretrained tag "
                             "(timm.list_pretrained('ARCH*')), or drop --pretrained when offline") from None


def _sync_data_config(model) -> None:
    """Make the model's pretrained_cfg describe the model as built (input size, classes), so the data config
    timm resolves from it (``resolve_model_data_config``) matches; label names of another head are dropped."""
    cfg = dict(getattr(model, "pretrained_cfg", None) or {})
    embed = getattr(model, "patch_embed", None)
    if embed is not None and getattr(embed, "img_size", None):
        cfg["input_size"] = (int(embed.proj.in_channels), *(int(s) for s in embed.img_size))
    classes = getattr(model, "num_classes", None)
    if classes is not None and cfg.get("num_classes", classes) != classes:
        cfg["num_classes"] = classes
        cfg.pop("label_names", None)
        cfg.pop("label_descriptions", None)
    model.pretrained_cfg = model.default_cfg = cfg


def load_timm_model(name: str | None = None, *, checkpoint: str | Path | None = None, pretrained: bool = False,
                    num_classes: int | None = None, img_size: int | tuple[int, int] | None = None,
                    ema: bool = False) -> torch.nn.Module:
    """Create a timm model in eval mode.

    Args:
        name: a timm name (with an optional pretrained tag), ``local-dir:DIR``, ``hf-hub:ORG/NAME`` (needs
            internet), or None / ``"vitedge-digits-vit"`` for the shipped reference model.
        checkpoint: optional weights (see the module docstring); its head's classes and its position
            embedding's input size are used unless ``num_classes`` / ``img_size`` are given.
        pretrained: timm's pretrained weights (needs internet; implied by local-dir: and hf-hub:).
        num_classes: classes of the head (overrides the checkpoint's).
        img_size: input size, an int or (H, W) (overrides the checkpoint's).
        ema: take a training checkpoint's EMA weights.

    Raises:
        ModelLoadError: unknown name, missing folder, unreachable hub, missing/corrupt/mismatched checkpoint.
    """
    name = name or REFERENCE_NAME
    state = read_checkpoint(checkpoint, ema=ema) if checkpoint is not None else None
    if ema and state is None:
        raise ModelLoadError("--ema picks the EMA weights of a training checkpoint: give it with --checkpoint")
    if name == REFERENCE_NAME:
        if num_classes is not None or img_size is not None:
            raise ModelLoadError(f"{REFERENCE_NAME} has a fixed head and input size: drop --num-classes / --img-size, "
                                 "or give a timm --model")
        try:
            model = build_reference(weights=state is None)
        except FileNotFoundError as e:
            raise ModelLoadError(str(e)) from None
    else:
        source = _source(name)
        # a checkpoint replaces every weight (strict load), so nothing is downloaded for it
        weights = state is None and (pretrained or source is not None)
        given = {k: v for k, v in (("num_classes", num_classes), ("img_size", img_size)) if v is not None}
        model = _create(name, source, pretrained=weights, **given)
        if state is not None:
            fitted = checkpoint_overrides(state, model, num_classes=num_classes, img_size=img_size)
            if fitted:
                model = _create(name, source, pretrained=False, **{**given, **fitted})
        _sync_data_config(model)
    if state is not None:
        _check_fits(model, state, checkpoint, name)
        try:
            model.load_state_dict(state)
        except RuntimeError as e:
            raise ModelLoadError(f"checkpoint {checkpoint} does not fit {name} ({_first_line(e)}): give the matching --model") from None
    return model.eval()


def load_prunable(name: str | None = None, *, checkpoint=None, pretrained: bool = False, num_classes: int | None = None,
                  img_size: int | tuple[int, int] | None = None, ema: bool = False) -> PrunableViT:
    """:func:`load_timm_model` + :class:`PrunableViT`; warns when weights are random.

    Raises:
        ModelLoadError, UnsupportedModelError.
    """
    model = load_timm_model(name, checkpoint=checkpoint, pretrained=pretrained, num_classes=num_classes,
                            img_size=img_size, ema=ema)
    prunable = PrunableViT(model)  # raises UnsupportedModelError for non-ViT models
    prunable.model_name = name or REFERENCE_NAME
    from_source = name is not None and name.partition(":")[0] in SOURCES
    prunable.has_weights = (name in (None, REFERENCE_NAME)) or pretrained or from_source or checkpoint is not None
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


__all__ = ["ModelLoadError", "UnsupportedModelError", "load_timm_model", "load_prunable", "model_hash",
           "read_checkpoint", "checkpoint_overrides"]
