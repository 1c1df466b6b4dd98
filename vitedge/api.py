"""The Python API: what ``vitedge export | calibrate | profile | search`` do, for notebooks and scripts.

    import vitedge
    report = vitedge.export(model, budget_ms=5, images=x, out="out")   # the report dict (also out/report.json)
    cal = vitedge.calibrate(model, images=x)                           # Calibration
    table = vitedge.profile(model, device="rpi4", host="pi@raspberrypi.local")  # LatencyTable
    schedule = vitedge.search(model, budget_ms=5, images=x)            # Schedule

``model``: a timm name as ``--model`` takes it (None: the shipped reference model), or a timm
``VisionTransformer`` object (e.g. from ``timm.create_model``), used as is: nothing is copied, it is put in
eval mode, and its blocks' classes are swapped in place for prunable subclasses (their forward is timm's, so
``model(x)`` still gives the same logits). The model must be float32 on the CPU.

``images`` (calibration images; ``eval_images`` likewise for the accuracy report): a folder path (as
``--data``), a float32 array or tensor (N, 3, H, W) already normalised as the model expects (``labels``: an
optional (N,) int array), or a torch DataLoader yielding ``(images, labels)`` or ``images``; None: the
default (the digits).

Keyword options mirror the CLI's flags (``--calib-limit`` is ``calib_limit=``; ``--no-cache`` is
``use_cache=False``; ``--quiet`` is ``progress=False``; ``--device-opt K=V`` is ``device_opts={K: V}``).
Errors are the library's typed exceptions, the ones the CLI turns into one line and an exit code: a bad
argument raises ValueError (every error type below is one) naming the fix; BudgetNotMetError (exit 1 in the
CLI) is a RuntimeError; RuntimeMissingError / TFLiteUnavailableError name the package to install. The
messages of the deeper checks name the CLI flag; its keyword is the same name with underscores.

Caching is the CLI's: calibrations by model weights + images, latency tables by architecture + device
(``cache_dir=`` or ``$VITEDGE_CACHE``), so an in-memory model or array hits the cache as a file would.
"""
from __future__ import annotations

import difflib
import math
import os
import sys
from pathlib import Path

from . import token_score as token_scores

# Options fields that the API sets from its own arguments (not accepted as ``**options``)
_OWN_FIELDS = {"model", "data", "eval_data", "device", "device_settings", "profile_config", "model_config",
               "profile_partial", "resume", "search_knobs"}
# options the CLI has that are not Options fields
_EXTRA_OPTIONS = {"host", "serial", "devices_file", "device_opts", "warmup", "runs", "min_time", "search_grid",
                  "search_refine"}
# the CLI's bounds: smallest value of a number option (the ints must be ints)
_MINIMUM = {"threads": 0, "calib_limit": 1, "num_classes": 1, "img_size": 1, "num_candidates": 2, "warmup": 0,
            "runs": 1, "min_time": 0, "search_grid": 1, "search_refine": 0, "search_seconds": 1, "tokens_step": 1}
_FLOATS = {"min_time", "search_seconds"}
_CHOICES = {"objective": ("measured", "fisher"), "select_by": ("kl", "top1"), "importance": ("fisher_block", "fisher_raw", "cls_attention"),
            "token_score": token_scores.NAMES,
            "precision": ("fp32", "fp16", "int8"), "quantization": ("static", "dynamic")}
# options that say how a named model is loaded: meaningless for a model object
_LOADING = ("checkpoint", "pretrained", "num_classes", "img_size", "ema")


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr)


def _check_number(name: str, value, minimum: float) -> None:
    ok_type = (isinstance(value, (int, float)) if name in _FLOATS else isinstance(value, int)) and not isinstance(value, bool)
    if not ok_type or not math.isfinite(value) or value < minimum:
        kind = "a number" if name in _FLOATS else "an integer"
        raise ValueError(f"{name}= must be {kind} >= {minimum:g}, got {value!r}")


def _check_options(options: dict, allowed: set) -> None:
    """ValueError for an unknown keyword (with the nearest known one) or a value outside the CLI's bounds."""
    for name, value in options.items():
        if name not in allowed:
            near = difflib.get_close_matches(name, sorted(allowed), n=1)
            hint = f"did you mean {near[0]}=?" if near else f"use one of {', '.join(sorted(allowed))}"
            raise ValueError(f"unknown option {name}=: {hint}")
        if value is None:
            continue
        if name in _MINIMUM and not (name == "img_size" and isinstance(value, tuple)):
            _check_number(name, value, _MINIMUM[name])
        if name in _CHOICES and value not in _CHOICES[name]:
            raise ValueError(f"{name}= must be one of {', '.join(_CHOICES[name])}, got {value!r}")


def _amount(name: str, value, *, zero: bool = False) -> None:
    """ValueError unless ``value`` is None or a finite number > 0 (>= 0 with ``zero``)."""
    if value is None:
        return
    if (isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
            or value < 0 or (value == 0 and not zero)):
        raise ValueError(f"{name}= must be a {'number >= 0' if zero else 'positive number'}, got {value!r}")


# ------------------------------------------------------------------------------------------ images

def _as_array(x):
    """A numpy array of a numpy array or a torch tensor (None for anything else)."""
    import numpy as np

    if isinstance(x, np.ndarray):
        return x
    if "torch" in sys.modules:
        import torch

        if isinstance(x, torch.Tensor):
            return x.detach().cpu().numpy()
    return None


def _from_loader(loader, what: str, limit: int | None):
    """Images and labels (or None) of an iterable of batches: ``(images, labels, ...)`` or ``images``."""
    import numpy as np

    xs, ys = [], []
    for batch in loader:
        y = None
        if isinstance(batch, (tuple, list)):
            if not batch:
                raise ValueError(f"{what}: the DataLoader yielded an empty batch: yield (images, labels) or images")
            x, y = batch[0], batch[1] if len(batch) > 1 else None
        else:
            x = batch
        arr = _as_array(x)
        if arr is None:
            raise ValueError(f"{what}: the DataLoader yielded {type(x).__name__}: yield image tensors (B, 3, H, W), "
                             "or (images, labels) pairs")
        xs.append(arr)
        ys.append(None if y is None else _as_array(y))
        if limit is not None and sum(len(a) for a in xs) >= limit:
            break
    if not xs:
        raise ValueError(f"{what}: the DataLoader yielded no images: give it a non-empty dataset")
    if any(y is None for y in ys) != all(y is None for y in ys):
        raise ValueError(f"{what}: some batches carry labels and some do not: yield (images, labels) for every batch")
    labels = None if ys[0] is None else np.concatenate([np.asarray(y).reshape(-1) for y in ys])
    return np.concatenate(xs), labels


def _image_input(images, labels, what: str, limit: int | None):
    """``images`` as the Context takes it: a folder path (str), an in-memory ImageSet, or None (the default).

    Raises:
        ValueError: labels with a folder or the default; not an image array (N, 3, H, W) of finite floats;
            labels not (N,) integers.
    """
    import numpy as np

    if images is None or isinstance(images, (str, os.PathLike)):
        if labels is not None:
            raise ValueError(f"{what}: labels= goes with an image array: a folder's labels are its class sub-folders")
        return None if images is None else os.fspath(images)
    arr = _as_array(images)
    source = "array"
    if arr is None:
        if not hasattr(images, "__iter__"):
            raise ValueError(f"{what} must be a folder path, an array (N, 3, H, W) or a torch DataLoader, "
                             f"got {type(images).__name__}")
        if labels is not None:
            raise ValueError(f"{what}: a DataLoader brings its own labels: yield (images, labels) and drop labels=")
        arr, labels = _from_loader(images, what, limit)
        source = "DataLoader"
    if arr.ndim != 4 or len(arr) == 0:  # the channels and size are checked against the model's input
        raise ValueError(f"{what} must be a non-empty array (N, 3, H, W), got shape {tuple(arr.shape)}: "
                         "stack the images, channels first")
    if arr.dtype.kind != "f":
        raise ValueError(f"{what} must be float images normalised as the model expects (mean/std), got {arr.dtype}: "
                         "convert and normalise them, or pass a folder (read with the model's data config)")
    arr = np.ascontiguousarray(arr[:limit] if limit is not None else arr, dtype=np.float32)
    if not np.isfinite(arr).all():
        raise ValueError(f"{what} hold NaN or infinite values: pass finite, normalised images")
    if labels is not None:
        lab = _as_array(labels)
        lab = np.asarray(labels) if lab is None else lab
        lab = lab[:limit] if limit is not None else lab
        if lab.shape != (len(arr),) or lab.dtype.kind not in "iu":
            raise ValueError(f"labels for {what} must be {len(arr)} integers (class indices), got "
                             f"shape {tuple(lab.shape)} of {lab.dtype}")
        labels = lab.astype(np.int64)
    from .data.digits import ImageSet

    return ImageSet(images=arr, labels=labels, name=f"{source} ({len(arr)} images)")


def _check_input_size(ctx, ims, what: str) -> None:
    from .data.images import ImageSetError

    if ims is not None and tuple(ims.images.shape[1:]) != tuple(ctx.model.input_size):
        raise ImageSetError(f"{what} are {tuple(ims.images.shape[1:])} per image, the model takes {tuple(ctx.model.input_size)}: "
                            "resize them, or pass a folder (transformed with the model's data config)")


# ------------------------------------------------------------------------------------------ model

def adopt_model(vit):
    """A timm VisionTransformer object as :class:`~vitedge.models.adapter.PrunableViT`, in place (not copied).

    Raises:
        UnsupportedModelError: not a supported timm ViT. ValueError: weights not float32 on the CPU.
    """
    import torch

    from .models.adapter import PrunableViT

    if isinstance(vit, torch.nn.Module):
        bad = next((p for p in vit.parameters() if p.device.type != "cpu" or p.dtype != torch.float32), None)
        if bad is not None:
            raise ValueError(f"the model's weights are {bad.dtype} on {bad.device}: vitedge measures and exports a float32 "
                             "CPU model: pass model.float().cpu()")
    prunable = PrunableViT(vit)  # UnsupportedModelError before anything is changed
    prunable.model_name = (getattr(vit, "pretrained_cfg", None) or {}).get("architecture") or type(vit).__name__
    prunable.has_weights = True  # the caller's model: its weights are what it holds
    return prunable


# ------------------------------------------------------------------------------------------ context

def _context(model, options: dict, *, device: str = "local", images=None, labels=None, eval_images=None,
             eval_labels=None, log=None, **fields):
    """A :class:`~vitedge.context.Context` from the API's arguments. Every function takes every option (one
    settings dict serves them all; a step ignores those it does not use); ``fields``: Options set by the command."""
    import dataclasses

    from .context import Context, Options
    from .devices.presets import _check as check_setting  # how a preset file's values are checked
    from .devices.presets import measure_overrides, parse_setting

    allowed = {f.name for f in dataclasses.fields(Options)} - _OWN_FIELDS - set(fields) | _EXTRA_OPTIONS
    _check_options(options, allowed)
    if not isinstance(device, str) or not device:
        raise ValueError(f"device= must be a preset name, a URL (ssh://, adb://) or 'local', got {device!r}")
    if model is not None and not isinstance(model, str):
        given = [k for k in _LOADING if options.get(k) not in (None, False)]
        if given:
            raise ValueError(f"{given[0]}= loads a model by name: with a model object, load the weights into it "
                             "(model.load_state_dict) or pass its name instead")
    o = dict(options)
    extra = {k: o.pop(k, None) for k in _EXTRA_OPTIONS}
    if not isinstance(extra["device_opts"] or {}, dict):
        raise ValueError(f"device_opts= must be a dict of device settings, e.g. {{'identity': '~/.ssh/id_pi'}}, "
                         f"got {type(extra['device_opts']).__name__}")
    settings = {}
    for key, value in (extra["device_opts"] or {}).items():  # typed as --device-opt KEY=VALUE or a preset's key
        settings.update([parse_setting(f"{key}={value}")] if isinstance(value, str)
                        else {key: check_setting(key, value, "device_opts")})
    settings.update({k: extra[k] for k in ("host", "serial", "devices_file") if extra[k] is not None})
    limit = o.get("calib_limit")
    data = _image_input(images, labels, "images", limit)
    evaluation = _image_input(eval_images, eval_labels, "eval_images", None)
    opts = Options(model=model if isinstance(model, str) else None, device=device, device_settings=settings,
                   data=data if isinstance(data, str) else None,
                   eval_data=evaluation if isinstance(evaluation, str) else None,
                   search_knobs={k: extra[f"search_{k}"] for k in ("grid", "refine") if extra[f"search_{k}"] is not None},
                   **{k: v for k, v in o.items() if v is not None}, **fields)
    preset = measure_overrides(device, extra["devices_file"])  # the preset's protocol, then the keywords
    knobs = {k: extra[n] for k, n in (("warmup", "warmup"), ("min_runs", "runs"), ("min_time_s", "min_time"))
             if extra[n] is not None}
    opts.profile_config = dataclasses.replace(opts.profile_config, **{**preset["profile"], **knobs})
    opts.model_config = dataclasses.replace(opts.model_config, **{**preset["model"], **knobs})
    in_memory = [x if not isinstance(x, str) else None for x in (data, evaluation)]
    prunable = None if model is None or isinstance(model, str) else adopt_model(model)
    ctx = Context(opts, log=log or _stderr, model=prunable, images=in_memory[0], eval_images=in_memory[1])
    _check_input_size(ctx, in_memory[0], "images")
    _check_input_size(ctx, in_memory[1], "eval_images")
    return ctx


def _file_arg(name: str, value):
    """A calibration / latency table argument: a path (or a reference table's name), as the CLI takes it."""
    if value is None or isinstance(value, (str, os.PathLike)):
        return value
    raise ValueError(f"{name}= takes a file path: save the object first ({name}.save(path)), or omit it "
                     "(vitedge.calibrate / vitedge.profile results are cached and found again)")


# ------------------------------------------------------------------------------------------ commands

def export(model=None, budget_ms: float | None = None, *, images=None, labels=None, device: str = "local",
           out: str | os.PathLike = "vitedge-out", max_accuracy_drop: float | None = None, eval_images=None,
           eval_labels=None, calibration=None, latency_table=None, max_rounds: int = 5, log=None, **options) -> dict:
    """The main job (``vitedge export``): calibrate, profile, search, export, measure against the budget.

    Args:
        model: a timm name (None: the reference model) or a timm VisionTransformer object (changed in place:
            see :mod:`vitedge.api`).
        budget_ms: latency budget (median on the device, ms); and/or ``max_accuracy_drop`` (points).
        images, labels: calibration images (folder, array, DataLoader; see :mod:`vitedge.api`).
        device: a preset, ``ssh://...``, ``adb://...`` or ``"local"``.
        out: output folder: ``model.onnx`` (or ``.tflite``), ``schedule.json``, ``report.json``.
        eval_images, eval_labels: labelled images for the accuracy report (as ``--eval-data``).
        calibration, latency_table: files to use instead of the cached or computed ones.
        max_rounds: closed-loop rounds (1-20).
        log: called with each progress message (default: printed to stderr).
        **options: the CLI's options by keyword (checkpoint, pretrained, num_classes, img_size, ema, calib_limit,
            runtime, threads, host, serial, device_opts, devices_file, cache_dir, use_cache, progress, warmup, runs,
            min_time, format, mode, tflite_converter, package_token, token_score, tokens_step, objective, select_by,
            search_grid, search_refine, search_seconds).

    Returns:
        The report dict (also written to ``out/report.json``).

    Raises:
        ValueError (and its typed subclasses: ModelLoadError, UnsupportedModelError, ImageSetError,
        BudgetUnreachableError, AccuracyBudgetError, DeviceError, ...), BudgetNotMetError, RuntimeMissingError.
    """
    from .pipeline import run_export

    if budget_ms is None and max_accuracy_drop is None:
        raise ValueError("give budget_ms=, max_accuracy_drop=, or both")
    _amount("budget_ms", budget_ms)
    _amount("max_accuracy_drop", max_accuracy_drop, zero=True)
    if isinstance(max_rounds, bool) or not isinstance(max_rounds, int) or not 1 <= max_rounds <= 20:
        raise ValueError(f"max_rounds= must be an integer from 1 to 20, got {max_rounds!r}")
    ctx = _context(model, options, device=device, images=images, labels=labels, eval_images=eval_images,
                   eval_labels=eval_labels, log=log)
    return run_export(ctx, budget_ms, out, max_accuracy_drop=max_accuracy_drop,
                      calibration_path=_file_arg("calibration", calibration),
                      table_path=_file_arg("latency_table", latency_table), max_rounds=max_rounds, log=ctx.log)


def calibrate(model=None, *, images=None, labels=None, out: str | os.PathLike | None = None, log=None, **options):
    """RCTP stages 1-3 (``vitedge calibrate``): Fisher information, candidate thresholds, FI-loss table.

    Args:
        model, images, labels, log: as :func:`export`.
        out: also write the calibration there (``.npz``); None: only the cache.
        **options: num_candidates (M, default 201), importance, and the model/cache options of :func:`export`.

    Returns:
        :class:`~vitedge.calibration.Calibration` (cached by model weights + images).
    """
    ctx = _context(model, options, images=images, labels=labels, log=log)
    cal = ctx.calibration()
    if out is not None:
        cal.save(out)
    return cal


def profile(model=None, *, device: str = "local", out: str | os.PathLike | None = None, resume: bool = False,
            log=None, **options):
    """Latency of each block part for every token count on the device (``vitedge profile``).

    Args:
        model, device, log: as :func:`export`.
        out: also write the table there (JSON); while profiling, each point is appended to
            ``OUT.partial.jsonl``, which ``resume=True`` continues after an interruption. None: only the cache.
        **options: the model, device, runtime, threads, measurement and cache options of :func:`export`.

    Returns:
        :class:`~vitedge.tables.latency.LatencyTable` (cached by architecture + device + runtime + threads).
    """
    from .partial import partial_path, refuse_existing

    if resume and out is None:
        raise ValueError("resume=True continues OUT.partial.jsonl: give out= (the table file of the interrupted profile)")
    partial = None if out is None else str(partial_path(Path(out)))
    if partial is not None and not resume:
        refuse_existing(Path(partial))  # an interrupted profile's points are never thrown away silently
    ctx = _context(model, options, device=device, log=log, profile_partial=partial, resume=bool(resume))
    ctx.require_profiler()  # LiteRT parts are converted with litert-torch: missing -> one line, before any work
    table = ctx.latency_table()
    if out is not None:
        table.save(out)
    return table


def search(model=None, budget_ms: float | None = None, *, images=None, labels=None, device: str = "local",
           budget_flops: float | None = None, max_accuracy_drop: float | None = None, calibration=None,
           latency_table=None, out: str | os.PathLike | None = None, log=None, **options):
    """A schedule for a latency budget and/or an accuracy drop, or RCTP's FLOPs budget (``vitedge search``).

    Args:
        model, images, labels, device, log: as :func:`export`.
        budget_ms: latency budget (ms), searched over the device's latency table (``latency_table``: a file,
            or a paper's reference table name such as ``"zcu102-spvit-deit-s"``; default: cached or profiled).
        budget_flops: instead, a fraction of the unpruned blocks' FLOPs (RCTP's 1 - C); no table needed.
        max_accuracy_drop: points on the calibration images (alone: the fastest schedule within it).
        calibration: a calibration file (default: cached or computed).
        out: also write the schedule there (JSON).
        **options: the search options (objective, select_by, search_grid, search_refine, search_seconds) and those of
            :func:`export`.

    Returns:
        :class:`~vitedge.schedule.Schedule`.
    """
    from .pipeline import choose_schedule

    if budget_flops is not None and (budget_ms is not None or max_accuracy_drop is not None):
        raise ValueError("budget_flops= is RCTP's FLOPs search: give it alone, or use budget_ms= / max_accuracy_drop=")
    if budget_flops is None and budget_ms is None and max_accuracy_drop is None:
        raise ValueError("give budget_ms=, max_accuracy_drop= (or both), or budget_flops=")
    _amount("budget_ms", budget_ms)
    _amount("budget_flops", budget_flops)
    _amount("max_accuracy_drop", max_accuracy_drop, zero=True)
    ctx = _context(model, options, device=device, images=images, labels=labels, log=log)
    schedule, _ = choose_schedule(ctx, budget_ms=budget_ms, budget_flops=budget_flops, max_accuracy_drop=max_accuracy_drop,
                                  calibration_path=_file_arg("calibration", calibration),
                                  table_path=_file_arg("latency_table", latency_table), log=ctx.log)
    if out is not None:
        schedule.save(out)
    return schedule


__all__ = ["export", "calibrate", "profile", "search"]
