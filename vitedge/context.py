"""Shared setup of every command: the model, its images, its cached calibration and latency table."""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import cache
from . import token_score as token_scores
from .calibration import Calibration, CalibrationError, calibrate
from .data.digits import ImageSet, digits_split
from .data.images import image_set_hash, load_image_folder, resolve_images
from .devices import Device, MeasureConfig, get_device
from .devices.runtimes import FORMAT_RUNTIME, has_dynamic_shapes, profile_format, runtime_format
from .exporters.registry import Exporter, get_exporter
from .footprint import describe_table
from .models.adapter import PrunableViT
from .models.loading import load_prunable, model_hash
from .models.reference import REFERENCE_NAME
from .precision import check_precision, check_table_precision, precision_tag
from .profiling import model_shape, profile
from .tables.latency import LatencyTable, LatencyTableError

PROFILE_CONFIG = MeasureConfig(warmup=5, min_runs=20, min_time_s=0.05)
MODEL_CONFIG = MeasureConfig(warmup=10, min_runs=50, min_time_s=0.5)


@dataclass
class Options:
    """What a user chooses on the command line (defaults: reference model, digits, local CPU)."""

    model: str | None = None
    checkpoint: str | None = None
    pretrained: bool = False
    num_classes: int | None = None   # head classes (default: the checkpoint's, else the model's)
    img_size: int | None = None      # input size (default: the checkpoint's position embedding, else the model's)
    ema: bool = False                # a training checkpoint's EMA weights
    data: str | None = None
    eval_data: str | None = None
    measure_data: str | None = None  # images the closed loop is timed on (default: the calibration images)
    budget_quantile: float = 0.5     # the budget holds at this quantile of the per-image latency (vitedge.quantile)
    calib_limit: int | None = None
    device: str = "local"
    runtime: str | None = None      # None: the device preset's, else onnxruntime
    threads: int = 0
    device_settings: dict = field(default_factory=dict)  # host, serial, devices_file, preset keys
    num_candidates: int = 201
    objective: str = "measured"      # "measured" (quality of the pruned model) | "fisher" (RCTP eq. (7))
    select_by: str = "kl"            # the measured quality that ranks candidates: "kl" | "top1" (search/measured.py)
    search_knobs: dict = field(default_factory=dict)  # SearchKnobs overrides: grid, sweep, refine
    search_seconds: float = 240.0    # time budget of the measured search (sets the grid and the images it uses)
    importance: str = "fisher_block"
    mode: str | None = None          # "threshold" | "capacity" | "auto" (None: auto, every mode the format exports)
    format: str | None = None        # "onnx" | "tflite"; default: the device runtime's format
    tflite_converter: str = "litert-torch"  # "litert-torch" (static shapes) | "onnx2tf" (threshold mode)
    tokens_step: int | None = None   # token-count grid of static-shape profiles (LiteRT)
    package_token: bool = True       # SPViT eq. (8) + ToMe's proportional attention: pruned tokens merged into one sized token
    token_score: str = token_scores.DEFAULT  # how selectors score patch tokens (vitedge.token_score.NAMES)
    cache_dir: str | None = None
    use_cache: bool = True
    progress: bool = True
    profile_config: MeasureConfig = field(default_factory=lambda: PROFILE_CONFIG)
    model_config: MeasureConfig = field(default_factory=lambda: MODEL_CONFIG)
    profile_partial: str | None = None   # save profile points as measured (OUT.partial.jsonl)
    resume: bool = False                 # continue from profile_partial
    precision: str = "fp32"              # "fp32" | "fp16" | "int8" (vitedge.precision)
    quantization: str = "dynamic"        # int8: "dynamic" (measured faster and closer to fp32 here) | "static"


def _protocol_tag(cfg: MeasureConfig) -> str:
    return f"w{cfg.warmup}r{cfg.min_runs}s{cfg.min_time_s:g}"


def _planned_runtime(opts: Options) -> str | None:
    """The runtime the device will use, known without reaching it: --runtime, else the preset's or URL's."""
    if opts.runtime is not None:
        return opts.runtime
    if opts.device_settings.get("runtime"):
        return str(opts.device_settings["runtime"])
    try:
        from .devices.presets import from_url, load_presets

        spec = from_url(opts.device) if "://" in opts.device else load_presets(opts.device_settings.get("devices_file")).get(opts.device, {})
    except Exception:  # noqa: BLE001 - a bad preset or URL is reported when the device is opened
        return None
    return spec.get("runtime")


MODES = ("threshold", "capacity", "auto")  # --mode; auto: the measured search picks per schedule


def check_format_mode(fmt: str | None, mode: str | None, converter: str) -> None:
    """Refuse combinations no exporter supports (``fmt``/``mode`` None: not known yet); ``converter`` is the
    TFLite converter (the exporter registry's entries and the modes each exports).

    Raises:
        ValueError: threshold mode in TFLite without onnx2tf; onnx2tf outside TFLite or with capacity mode.
    """
    route = get_exporter("tflite", converter)  # an unknown converter: one line naming the choices
    if not route.default:  # a converter named on purpose: it writes TFLite, in its own modes
        if fmt not in (None, route.format):
            raise ValueError(f"--tflite-converter {converter} converts to TFLite: use it with --format tflite (or a LiteRT device)")
        if mode is not None and mode not in route.modes:
            raise ValueError(route.refusal)
    elif fmt == route.format and mode is not None and mode not in route.modes:
        raise ValueError(route.refusal)


def resolve_mode(opts: Options) -> None:
    """Check the format/runtime/mode/converter the user gave; an explicit --format picks its runtime.

    The device's runtime is looked up from its preset (or URL) without reaching it, so threshold
    mode on a static-shape runtime (LiteRT, benchmark_model) is refused before any work. The rest
    is settled once the device is open (:attr:`Context.format`, :attr:`Context.mode`).

    Raises:
        ValueError: unknown format/mode/converter, a runtime that does not read the format, or
            threshold mode with TFLite without ``--tflite-converter onnx2tf`` (NonZero: a dynamic
            token count, which litert-torch cannot convert and delegates reject).
    """
    if opts.format is not None:
        get_exporter(opts.format)  # an unknown format: one line naming the choices
    if opts.mode is not None and opts.mode not in MODES:
        raise ValueError(f"unknown mode {opts.mode!r}: use {', '.join(MODES)}")
    if opts.format is not None:
        if opts.runtime is None:
            opts.runtime = FORMAT_RUNTIME[opts.format]
        elif runtime_format(opts.runtime) not in (None, opts.format):
            raise ValueError(f"runtime {opts.runtime} does not run {opts.format} files: use --runtime {FORMAT_RUNTIME[opts.format]}")
    fmt = opts.format or runtime_format(_planned_runtime(opts))
    check_format_mode(fmt, None if opts.mode == "auto" else opts.mode, opts.tflite_converter)
    check_precision(opts.precision, opts.quantization, fmt=fmt, runtime=_planned_runtime(opts))


class Context:
    """Lazily loads and caches what the commands share. Raises the loaders' typed errors."""

    def __init__(self, opts: Options, log=print, *, model: PrunableViT | None = None, images: ImageSet | None = None,
                 eval_images: ImageSet | None = None):
        """``model``, ``images``, ``eval_images`` (the Python API, :mod:`vitedge.api`): a model the caller holds,
        already made prunable, used instead of ``opts.model``; in-memory image sets used instead of ``opts.data``
        and ``opts.eval_data``."""
        resolve_mode(opts)
        self.opts, self.log = opts, log
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            if model is not None:
                self.model = model
            else:
                self.model = load_prunable(opts.model, checkpoint=opts.checkpoint, pretrained=opts.pretrained,
                                           num_classes=opts.num_classes, img_size=opts.img_size, ema=opts.ema)
        for w in caught:
            if issubclass(w.category, UserWarning):
                log(f"warning: {w.message}")
        self.model.package_token = opts.package_token
        self.model.token_score = opts.token_score
        self.is_reference = model is None and opts.model in (None, REFERENCE_NAME)  # the digits architecture, any weights
        self.model_hash = model_hash(self.model.vit)
        self.shape = model_shape(self.model)
        self._images: ImageSet | None = images
        self._given_images, self._eval_images = images, eval_images
        self._measure_images: ImageSet | None = None
        self._device: Device | None = None
        self._table_device: Device | None = None
        self.searches: dict = {}  # measured searches by calibration, table and knobs (reused across budgets)

    # -- inputs -----------------------------------------------------------------------------------------
    @property
    def images(self) -> ImageSet:
        """Calibration images: --data, else the digits calibration split (resized for other models)."""
        if self._images is None:
            self._images = resolve_images(self.opts.data, self.model.vit, input_size=self.model.input_size,
                                          split="calib", limit=self.opts.calib_limit,
                                          reference=self.is_reference)
        return self._images

    def eval_images(self) -> tuple[ImageSet | None, str]:
        """Labelled evaluation images and where they come from, or (None, reason)."""
        if self._eval_images is not None:
            ims = self._eval_images
            return (ims, ims.name) if ims.labels is not None else (None, "the evaluation images have no labels")
        if self.opts.eval_data:
            ims = load_image_folder(self.opts.eval_data, self.model.vit)
            return (ims, ims.name) if ims.labels is not None else (None, "--eval-data has no class folders")
        if self.opts.data is None and self._given_images is None and self.is_reference:
            return digits_split("test"), "digits:test"
        if self.images.labels is not None:
            return self.images, f"{self.images.name} (the calibration images: optimistic)"
        return None, "no labelled images (give --eval-data DIR with class sub-folders)"

    @property
    def device(self) -> Device:
        if self._device is None:
            o = self.opts
            self._device = get_device(o.device, runtime=o.runtime, threads=o.threads, config=o.model_config,
                                      **o.device_settings)
        return self._device

    @property
    def format(self) -> str:
        """Export format: --format, else the device runtime's (onnxruntime -> onnx, litert -> tflite)."""
        return self.opts.format or runtime_format(self.device.runtime) or "onnx"

    @property
    def mode(self) -> str:
        """The default pruning mode: --mode, else (and with ``auto``) threshold for ONNX (and for TFLite
        through onnx2tf), capacity for TFLite. Raises ValueError for threshold mode on a static-shape
        runtime without onnx2tf."""
        fmt, conv = self.format, self.opts.tflite_converter
        mode = self.opts.mode if self.opts.mode not in (None, "auto") else get_exporter(fmt, self.tflite_converter).modes[0]
        check_format_mode(fmt, mode, conv)
        return mode

    @property
    def search_modes(self) -> tuple:
        """The pruning modes the measured search chooses from: ``--mode threshold|capacity`` alone, else
        (``auto``, the default) every mode the export route writes (ONNX: both), the default first."""
        if self.opts.mode not in (None, "auto"):
            return (self.mode,)
        return tuple(dict.fromkeys((self.mode, *self.exporter.modes)))

    @property
    def tflite_converter(self) -> str | None:
        """The TFLite converter ("litert-torch" or "onnx2tf"); None for ONNX."""
        return self.opts.tflite_converter if self.format == "tflite" else None

    @property
    def exporter(self) -> Exporter:
        """The export route (format and converter) in the exporter registry; refuses an impossible
        format/mode/converter first."""
        self.mode  # noqa: B018
        check_precision(self.opts.precision, self.opts.quantization, fmt=self.format,  # fp32: no device opened
                        runtime=self.device.runtime if self.opts.precision != "fp32" else None)
        return get_exporter(self.format, self.tflite_converter)

    def require_exporter(self) -> None:
        """Check, before any work, that the export route's packages are there.

        Raises:
            TFLiteUnavailableError: litert-torch (``vitedge[tflite]``) or onnx2tf (``vitedge[onnx2tf]``) missing.
        """
        self.exporter.require()

    def require_profiler(self) -> None:
        """Check, before any work, that the exporter of the table device's part files is there (LiteRT parts
        are converted with litert-torch: missing -> one line)."""
        fmt = profile_format(self.table_device.runtime)
        if fmt is not None:
            get_exporter(fmt).require()

    @property
    def profiled_apart(self) -> bool:
        """True when the exported model has dynamic shapes that its format's runtime cannot profile
        (threshold mode in TFLite through onnx2tf): its table is profiled with ONNX Runtime."""
        if has_dynamic_shapes(FORMAT_RUNTIME[self.format]):
            return False
        return not self.exporter.static_shapes

    @property
    def table_device(self) -> Device:
        """The device the latency table is profiled on: the device itself, except for threshold
        mode in TFLite (onnx2tf), whose parts have dynamic token counts that LiteRT's static
        per-n signatures cannot time: that table is measured with ONNX Runtime on the same device
        (the same NonZero graphs), and the closed loop measures the .tflite in LiteRT."""
        if self.profiled_apart:
            if self._table_device is None:
                o = self.opts
                self._table_device = get_device(o.device, runtime="onnxruntime", threads=o.threads,
                                                config=o.model_config, **o.device_settings)
            return self._table_device
        return self.device

    def cache_root(self) -> Path:
        return cache.cache_dir(self.opts.cache_dir)

    # -- artifacts ----------------------------------------------------------------------------------------
    def calibration(self, path: str | Path | None = None) -> Calibration:
        """Load ``path`` (checked against this model and images) or the cached one, else calibrate."""
        img_hash = image_set_hash(self.images)
        if path is not None:
            return Calibration.load(path, expect_model_hash=self.model_hash, expect_image_set_hash=img_hash,
                                    expect_token_score=self.model.token_score)
        o = self.opts
        cached = cache.calibration_path(self.cache_root(), model_hash=self.model_hash, image_set_hash=img_hash,
                                        num_candidates=o.num_candidates, importance=o.importance,
                                        token_score=self.model.token_score)
        if o.use_cache and cached.is_file():
            try:
                return Calibration.load(cached, expect_model_hash=self.model_hash, expect_image_set_hash=img_hash,
                                        expect_token_score=self.model.token_score)
            except CalibrationError as e:
                self.log(f"cache: ignoring {cached.name} ({e})")
        cal = calibrate(self.model, self.images, model_hash=self.model_hash, image_set_hash=img_hash,
                        num_candidates=o.num_candidates, importance=o.importance, progress=o.progress)
        cal.save(cached)
        self.log(f"calibrated on {len(self.images)} images ({self.images.name}) -> {cached}")
        return cal

    def latency_table(self, path: str | Path | None = None, *, allow_reference: bool = False) -> LatencyTable:
        """Load ``path`` (checked against this model and device) or the cached one, else profile.

        With ``allow_reference``, ``path`` may name a reference table published in a paper
        (``vitedge.tables.reference``, e.g. "zcu102-spvit-deit-s"), checked against this model only.
        """
        if path is not None and not Path(path).is_file():
            from .tables.reference import is_reference_name, load_reference

            if is_reference_name(str(path)):
                if not allow_reference:
                    raise LatencyTableError(f"{path} is a reference table from a paper: use it with `vitedge search`; "
                                            "this command measures on your device and needs a table profiled there")
                table = load_reference(str(path))
                table.check_model(self.shape, source=str(path))
                self.log(table.note())
                return table
        dev = self.table_device
        if path is not None:
            table = LatencyTable.load(path)
            table.check_model(self.shape, source=str(path))
            table.check_device(dev.name, dev.runtime, dev.threads, source=str(path))
            check_table_precision(table.meta, self.opts.precision, self.opts.quantization, source=str(path))
            return table
        cached = cache.table_path(self.cache_root(), arch_hash=self.shape["arch_hash"], device=dev.name,
                                  runtime=dev.runtime, runtime_version=dev.runtime_version(), threads=dev.threads,
                                  protocol=_protocol_tag(self.opts.profile_config)
                                  + (f"g{self.opts.tokens_step}" if self.opts.tokens_step else "")
                                  + precision_tag(self.opts.precision, self.opts.quantization))
        if self.opts.use_cache and cached.is_file():
            try:
                table = LatencyTable.load(cached)
                table.check_model(self.shape, source=str(cached))
                if not table.in_graph:
                    raise LatencyTableError("it predates the in-graph reference: profiling again")
                check_table_precision(table.meta, self.opts.precision, self.opts.quantization, source=str(cached))
                return table
            except LatencyTableError as e:
                self.log(f"cache: ignoring {cached.name} ({e})")
        profile_dev = dev.with_config(self.opts.profile_config)
        table = profile(self.model, profile_dev, model_name=self.model.model_name, progress=self.opts.progress,
                        partial=self.opts.profile_partial, resume=self.opts.resume, tokens_step=self.opts.tokens_step,
                        precision=self.opts.precision, quantization=self.opts.quantization)
        table.save(cached)
        if self.opts.profile_partial:  # the table is saved: its partial file has done its job
            Path(self.opts.profile_partial).unlink(missing_ok=True)
        self.log(f"profiled {table.meta['points']} points on {dev.name} in {table.meta['profile_seconds']:.1f} s -> {cached}")
        self.log(f"footprint on {dev.name}: {describe_table(table.meta.get('footprint'))}")
        if table.drift.get("detected"):
            self.log(f"warning: latency drift during profiling (reference moved {100 * table.drift['max_rel_dev']:.0f} %): "
                     "the machine is busy or throttling; re-profile with --no-cache when it is idle")
        return table

    @property
    def measure_images(self) -> ImageSet:
        """Images the closed loop times the model on: ``--measure-data``, else the calibration images."""
        if self.opts.measure_data is None:
            return self.images
        if self._measure_images is None:
            self._measure_images = load_image_folder(self.opts.measure_data, self.model.vit)
        return self._measure_images

    def feeds(self, count: int = 32) -> list[dict]:
        """Input dicts for whole-model timing: the first ``count`` measurement images (:attr:`measure_images`), batch 1."""
        ims = self.measure_images.images[:count]
        return [{"image": ims[i:i + 1]} for i in range(len(ims))]
