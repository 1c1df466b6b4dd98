"""``vitedge`` command line: thin wrappers over the library. Errors: one line on stderr, exit 2
(bad input), 1 (budget not met after the closed loop), 3 (runtime missing), 4 (device or link failure),
5 (export validation failure; :mod:`vitedge.errors`); any other exception is a bug: traceback, exit 70."""
from __future__ import annotations

import functools
import json
import os
import sys
from pathlib import Path

import click

from .. import token_score as token_scores

from ..context import Context, Options
from ..exporters.registry import converters, formats
from ..footprint import export_footprint_lines
from ..precision import precision_line


def _fail(msg: str, code: int = 2):
    click.echo(f"error: {msg}", err=True)
    sys.exit(code)


def _handle_errors(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from ..calibration import CalibrationError
        from ..data.images import ImageSetError
        from ..devices import DeviceError, PlanError, RuntimeMissingError
        from ..exporters.onnx import ExportError
        from ..exporters.tflite import TFLiteUnavailableError
        from ..models.adapter import UnsupportedModelError
        from ..models.loading import ModelLoadError
        from ..pipeline import BudgetNotMetError
        from ..profiling import ProfileError
        from ..schedule import ScheduleError
        from ..search import BudgetUnreachableError
        from ..errors import VitedgeError
        from ..tables.latency import LatencyTableError

        try:
            return fn(*args, **kwargs)
        except (RuntimeMissingError, TFLiteUnavailableError) as e:  # a missing package (or extra)
            _fail(" ".join(str(e).split()), 3)
        except BudgetNotMetError as e:
            _fail(str(e), 1)
        except VitedgeError as e:  # vitedge.errors: 2 bad input, 3 missing extra, 4 device, 5 export validation
            _fail(" ".join(str(e).split()), e.exit_code)
        except (ModelLoadError, UnsupportedModelError, ImageSetError, CalibrationError, LatencyTableError,
                ScheduleError, BudgetUnreachableError, DeviceError, PlanError, ExportError, ProfileError) as e:
            _fail(" ".join(str(e).split()))
        except ValueError as e:
            if not _raised_by_vitedge(e):  # e.g. numpy or torch rejecting what vitedge handed them: a bug
                _bug(e)
            _fail(" ".join(str(e).split()))  # a bad argument, named by vitedge's own check
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except Exception as e:  # noqa: BLE001 - anything else is a bug
            _bug(e)
    return wrapper


BUG_EXIT = 70  # sysexits EX_SOFTWARE: an internal error (distinct from every documented code)


def _raised_by_vitedge(e: BaseException) -> bool:
    """Whether the innermost frame of ``e`` is vitedge's own code (vitedge, vitedge.exporters, vitedge.devices)."""
    import traceback

    import vitedge
    from .. import devices, exporters

    roots = [str(Path(p).resolve()) for p in (*vitedge.__path__, *exporters.__path__, *devices.__path__)]
    frames = traceback.extract_tb(e.__traceback__)
    return bool(frames) and any(str(Path(frames[-1].filename).resolve()).startswith(r + os.sep) for r in roots)


def _bug(e: BaseException):
    """An unexpected error: its traceback, one line asking for a report, exit :data:`BUG_EXIT`."""
    import traceback

    click.echo("".join(traceback.format_exception(e)).rstrip(), err=True)
    click.echo(f"error: internal error ({type(e).__name__}): this is a bug in vitedge, please report it with the "
               "traceback above", err=True)
    sys.exit(BUG_EXIT)


def model_options(fn):
    opts = [
        click.option("--model", default=None,
                     help="timm model name (a pretrained tag allowed), local-dir:DIR or hf-hub:ORG/NAME "
                          "(default: the shipped reference ViT on digits)."),
        click.option("--checkpoint", type=click.Path(path_type=Path), default=None,
                     help="weights: .safetensors, .pth or a timm training checkpoint .pth.tar (read with weights_only=True); "
                          "its head's classes and input size are used."),
        click.option("--pretrained", is_flag=True, help="download timm's pretrained weights (needs internet)."),
        click.option("--num-classes", type=click.IntRange(min=1), default=None,
                     help="head classes (default: the checkpoint's head, else the model's)."),
        click.option("--img-size", type=click.IntRange(min=1), default=None,
                     help="input size in pixels (default: the checkpoint's position embedding, else the model's)."),
        click.option("--ema", is_flag=True, help="use the EMA weights of a timm training checkpoint."),
        click.option("--data", default=None, help="calibration images: ImageFolder layout or a flat folder (default: digits calibration split)."),
        click.option("--calib-limit", type=click.IntRange(min=1), default=None, help="use at most this many calibration images."),
        click.option("--device", default="local", show_default=True,
                     help="target device: a preset (`vitedge devices list`), ssh://[USER@]HOST[:PORT] or adb://[SERIAL]."),
        click.option("--host", default=None, help="ssh device: [USER@]HOST[:PORT] (e.g. --device rpi4 --host pi@raspberrypi.local)."),
        click.option("--serial", default=None, help="adb device: the phone's serial (default: the one attached)."),
        click.option("--device-opt", multiple=True, metavar="KEY=VALUE",
                     help="device setting overriding the preset (python, identity, ssh_options, affinity, benchmark_model, command, ...)."),
        click.option("--devices-file", default=None, help="TOML file adding or overriding device presets (default ~/.config/vitedge/devices.toml)."),
        click.option("--runtime", default=None, help="runtime on the device (default: the preset's, else onnxruntime)."),
        click.option("--threads", type=click.IntRange(min=0), default=0, help="runtime threads (0: the preset's, else all cores)."),
        click.option("--cache-dir", default=None, help="artifact cache (default $VITEDGE_CACHE or ~/.cache/vitedge)."),
        click.option("--no-cache", is_flag=True, help="recompute calibration and latency table."),
        click.option("--quiet", is_flag=True, help="no progress bars."),
        click.option("--warmup", type=click.IntRange(min=0), default=None, help="untimed runs before timing (default: 5 per profile point, 10 per model)."),
        click.option("--runs", type=click.IntRange(min=1), default=None, help="at least this many timed runs (default: 20 per point, 50 per model)."),
        click.option("--min-time", type=click.FloatRange(min=0), default=None, help="and at least this many timed seconds (default: 0.05 per point, 0.5 per model)."),
        click.option("--format", "fmt", type=click.Choice(formats()), default=None,
                     help="export format (default: the runtime's: onnxruntime -> onnx, litert -> tflite)."),
        click.option("--mode", type=click.Choice(["threshold", "capacity", "auto"]), default=None,
                     help="pruning: threshold (NonZero, dynamic count) or capacity (exactly K_l tokens, static shapes). "
                          "Default auto: the measured search picks the mode the format exports (onnx: either; tflite: "
                          "capacity) that keeps more accuracy; --objective fisher uses threshold for onnx."),
        click.option("--tflite-converter", type=click.Choice(converters("tflite")), default="litert-torch",
                     show_default=True,
                     help="TFLite route: litert-torch (static shapes) or onnx2tf (threshold mode only; needs "
                          "vitedge[onnx2tf] or $VITEDGE_ONNX2TF; every file parity-checked; dynamic shapes run on "
                          "reference kernels where delegates refuse them)."),
        click.option("--package-token/--no-package-token", default=True, show_default=True,
                     help="merge the pruned tokens into one extra token that stands for them: their mean, with log(count) added "
                          "to its attention logits in later blocks (SPViT eq. 8's package token, ToMe's proportional "
                          "attention; no training; measured to keep more accuracy for the milliseconds). "
                          "--no-package-token drops them."),
        click.option("--token-score", type=click.Choice(token_scores.NAMES), default=token_scores.DEFAULT,
                     show_default=True,
                     help="how selectors rank patch tokens: significance (CLS attention x value norm, ATS token scoring; measured "
                          "to keep more accuracy), cls-attention (RCTP's and POMT's head-averaged CLS attention) or "
                          "cumulative-significance (significance averaged over the blocks since the previous selector)."),
        click.option("--tokens-step", type=click.IntRange(min=1), default=None,
                     help="static-shape runtimes (LiteRT): profile every k-th token count (default: ~33 points)."),
    ]
    for o in reversed(opts):
        fn = o(fn)
    return fn


def _options(kw: dict, **extra) -> Options:
    from dataclasses import replace

    from ..devices.presets import measure_overrides, parse_setting

    settings = dict(parse_setting(o) for o in kw.get("device_opt") or ())
    settings.update({k: kw[k] for k in ("host", "serial", "devices_file") if kw.get(k) is not None})
    opts = Options(model=kw["model"], checkpoint=kw["checkpoint"], pretrained=kw["pretrained"], data=kw["data"],
                   num_classes=kw.get("num_classes"), img_size=kw.get("img_size"), ema=bool(kw.get("ema")),
                   calib_limit=kw["calib_limit"], device=kw["device"], runtime=kw["runtime"], threads=kw["threads"],
                   cache_dir=kw["cache_dir"], use_cache=not kw["no_cache"], progress=not kw["quiet"],
                   device_settings=settings, mode=kw.get("mode"), format=kw.get("fmt"), tokens_step=kw.get("tokens_step"),
                   package_token=kw.get("package_token", Options.package_token), token_score=kw.get("token_score") or token_scores.DEFAULT,
                   tflite_converter=kw.get("tflite_converter") or "litert-torch",
                   precision=kw.get("precision") or "fp32", quantization=kw.get("quantization") or "dynamic", **extra)
    preset = measure_overrides(kw["device"], kw.get("devices_file"))  # the preset's protocol, then the flags
    opts.profile_config = replace(opts.profile_config, **preset["profile"])
    opts.model_config = replace(opts.model_config, **preset["model"])
    knobs = {k: v for k, v in (("warmup", kw["warmup"]), ("min_runs", kw["runs"]), ("min_time_s", kw["min_time"])) if v is not None}
    if knobs:
        opts.profile_config = replace(opts.profile_config, **knobs)
        opts.model_config = replace(opts.model_config, **knobs)
    return opts


def precision_options(fn):
    """``--precision`` and ``--quantization`` (vitedge.precision), shared by ``profile``, ``search`` and ``export``."""
    from ..precision import PRECISIONS, QUANTIZATIONS

    opts = [
        click.option("--precision", type=click.Choice(PRECISIONS), default="fp32", show_default=True,
                     help="numeric precision of the exported model and of the latency table's parts: int8 (ONNX Runtime "
                          "or ai-edge-quantizer, calibrated with the pruning active), fp16 (TFLite weights, GPU/NNAPI)."),
        click.option("--quantization", type=click.Choice(QUANTIZATIONS), default="dynamic", show_default=True,
                     help="int8: dynamic (int8 weights, activations quantized at run time; measured faster and closer to "
                          "fp32 here) or static (ONNX: QDQ with activation ranges calibrated on the calibration images)."),
    ]
    for o in reversed(opts):
        fn = o(fn)
    return fn


def search_options(fn):
    """Flags of the schedule search, shared by ``search`` and ``export``."""
    opts = [
        click.option("--objective", type=click.Choice(["measured", "fisher"]), default="measured", show_default=True,
                     help="measured: the best quality measured on the pruned model over the calibration images among "
                          "Fisher-Viterbi, single-cut, constant-rate, measured-loss Viterbi and refined candidates; "
                          "fisher: RCTP's Fisher-loss Viterbi (eq. 7-8)."),
        click.option("--select-by", type=click.Choice(["kl", "top1"]), default="kl", show_default=True,
                     help="the measured quality that ranks candidates: kl, the KL divergence from the unpruned model's "
                          "outputs (continuous: least flattered by calibration noise); top1, the accuracy when labelled, "
                          "else the agreement with the unpruned top-1."),
        click.option("--max-accuracy-drop", type=float, default=None,
                     help="points on the calibration images (accuracy when labelled, else agreement with the unpruned "
                          "top-1), held with 90 % confidence: alone, the fastest schedule within it; with --budget-ms, "
                          "the most accurate within the budget, which must keep it."),
        click.option("--search-grid", type=click.IntRange(min=1), default=None,
                     help="candidates per block the measured search evaluates (default 24; cost ~ depth x grid evaluations)."),
        click.option("--search-refine", type=click.IntRange(min=0), default=None,
                     help="local refinement rounds per budget (default 2; each <= 2 x depth evaluations)."),
        click.option("--search-seconds", type=click.FloatRange(min=1), default=240.0, show_default=True,
                     help="time budget of the measured search: when the default grid does not fit, fewer candidates "
                          "per block (down to 8), then fewer calibration images (down to 32) are used."),
    ]
    for o in reversed(opts):
        fn = o(fn)
    return fn


def _search_options(opts: Options, kw: dict) -> Options:
    opts.objective = kw["objective"]
    opts.select_by = kw["select_by"]
    opts.search_knobs = {k: kw[f"search_{k}"] for k in ("grid", "refine") if kw.get(f"search_{k}") is not None}
    opts.search_seconds = kw["search_seconds"]
    return opts


def _log(msg: str):
    click.echo(msg, err=True)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="vitedge")
def main():
    """vitedge: make timm Vision Transformers meet a latency budget on an edge device, without retraining."""


@main.command()
@model_options
@click.option("--num-candidates", "-M", type=click.IntRange(min=2), default=201, show_default=True, help="thresholds per block (RCTP: 201).")
@click.option("--importance", type=click.Choice(["fisher_block", "fisher_raw", "cls_attention"]), default="fisher_block", show_default=True)
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True, help="calibration file (.npz).")
@_handle_errors
def calibrate(output, num_candidates, importance, **kw):
    """RCTP stages 1-3: Fisher information, candidate thresholds, FI-loss table."""
    ctx = Context(_options(kw, num_candidates=num_candidates, importance=importance), log=_log)
    cal = ctx.calibration()
    cal.save(output)
    click.echo(f"calibration: {cal.num_layers} blocks x {cal.num_candidates} candidates over {cal.num_images} images -> {output}")


@main.command()
@model_options
@precision_options
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True, help="latency table (.json).")
@click.option("--resume", is_flag=True, help="continue an interrupted profile from OUTPUT.partial.jsonl (points measured so far are kept).")
@_handle_errors
def profile(output, resume, **kw):
    """Measure latency vs. kept tokens of each block part on the device (points saved as measured)."""
    from ..partial import partial_path, refuse_existing

    if not resume:
        refuse_existing(partial_path(output))  # an interrupted profile's points are never thrown away silently
    ctx = Context(_options(kw, profile_partial=str(partial_path(output)), resume=resume), log=_log)
    ctx.require_profiler()  # LiteRT parts are converted with litert-torch: missing -> one line, before any work
    table = ctx.latency_table()
    table.save(output)
    N, fit = table.num_tokens, table.in_graph_fit()
    click.echo(f"latency table ({table.device['name']}, {table.device['runtime']} {table.device['runtime_version']}, "
               f"{table.device['threads']} threads): attention {table.parts['attention']['median_ms'][-1]:.3f} ms, "
               f"mlp {table.parts['mlp']['median_ms'][-1]:.3f} ms at N={N} (timed alone; inside the model measured "
               f"x{fit['beta']:.3f} + {fit['gamma']:.3f} ms per block); predicted unpruned "
               f"{table.predict_ms([N - table.model['num_prefix']] * table.model['depth'], [False] * table.model['depth']):.3f} ms -> {output}")


@main.command()
@model_options
@precision_options
@search_options
@click.option("--budget-ms", type=float, default=None, help="latency budget for the whole model (ms).")
@click.option("--budget-flops", type=float, default=None, help="FLOPs budget as a fraction of the unpruned blocks' FLOPs (RCTP's 1 - C).")
@click.option("--calibration", type=click.Path(path_type=Path), default=None, help="calibration file (default: cached or computed).")
@click.option("--latency-table", type=click.Path(path_type=Path), default=None, help="latency table (default: cached or profiled).")
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True, help="schedule (.json).")
@_handle_errors
def search(output, budget_ms, budget_flops, calibration, latency_table, max_accuracy_drop, **kw):
    """Schedule for a latency budget (and/or an accuracy drop) or RCTP's FLOPs budget: writes a schedule.

    Latency budgets use the measured objective by default (best quality measured on the pruned model
    among Viterbi, single-cut and constant-rate candidates); --objective fisher is RCTP's eq. (7)-(8).
    """
    from ..pipeline import choose_schedule

    if budget_flops is not None and (budget_ms is not None or max_accuracy_drop is not None):
        raise click.UsageError("--budget-flops is RCTP's FLOPs search: give it alone, or use --budget-ms / --max-accuracy-drop")
    if budget_flops is None and budget_ms is None and max_accuracy_drop is None:
        raise click.UsageError("give --budget-ms, --max-accuracy-drop (or both), or --budget-flops")
    ctx = Context(_search_options(_options(kw), kw), log=_log)
    schedule, planner = choose_schedule(ctx, budget_ms=budget_ms, budget_flops=budget_flops, max_accuracy_drop=max_accuracy_drop,
                                        calibration_path=calibration, table_path=latency_table, log=_log)
    schedule.save(output)
    unit = "of FLOPs" if budget_flops is not None else "ms"
    if hasattr(planner, "explain"):
        click.echo("\n".join(planner.explain(schedule)))
    quality = schedule.meta.get("calibration_quality")
    est = "" if quality is None else (f", calibration {'accuracy' if quality['accuracy'] is not None else 'agreement'} "
                                      f"{100 * (quality['accuracy'] if quality['accuracy'] is not None else quality['agreement']):.1f} % "
                                      f"(drop {quality['drop_points']:.1f} points; {schedule.meta['family']})")
    click.echo(f"schedule: predicted {schedule.predicted:.3f} {unit}{est}, mean kept tokens per block "
               f"{[round(k, 1) for k in schedule.predicted_kept]} -> {output}")


@main.command("export")
@model_options
@precision_options
@search_options
@click.option("--budget-ms", type=float, default=None, help="latency budget (ms, median on the device).")
@click.option("--eval-data", default=None, help="labelled images (class sub-folders) for the accuracy report.")
@click.option("--budget-quantile", type=float, default=0.5, show_default=True,
              help="the budget holds at this quantile of the per-image latency (0.5: median; 0.9: nine images in ten).")
@click.option("--measure-data", default=None,
              help="images the closed loop times the model on (ImageFolder or flat folder; default: the calibration images).")
@click.option("--calibration", type=click.Path(path_type=Path), default=None)
@click.option("--latency-table", type=click.Path(path_type=Path), default=None)
@click.option("--max-rounds", type=click.IntRange(min=1, max=20), default=5, show_default=True, help="closed-loop rounds.")
@click.option("-o", "--output", type=click.Path(path_type=Path), default=Path("vitedge-out"), show_default=True, help="output folder.")
@click.option("--json", "as_json", is_flag=True, help="print the report as JSON.")
@_handle_errors
def export_cmd(output, budget_ms, eval_data, budget_quantile, measure_data, calibration, latency_table, max_rounds, as_json, max_accuracy_drop, **kw):
    """The main job: calibrate, profile, search, export (ONNX or TFLite), and measure it against the budget."""
    from ..pipeline import run_export

    if budget_ms is None and max_accuracy_drop is None:
        raise click.UsageError("give --budget-ms, --max-accuracy-drop, or both")
    if budget_ms is not None and budget_ms <= 0:
        raise ValueError(f"--budget-ms must be > 0, got {budget_ms}")
    if max_accuracy_drop is not None and not max_accuracy_drop >= 0:
        raise ValueError(f"--max-accuracy-drop must be >= 0 points, got {max_accuracy_drop}")
    opts = _search_options(_options(kw), kw)
    opts.eval_data, opts.measure_data, opts.budget_quantile = eval_data, measure_data, budget_quantile
    ctx = Context(opts, log=_log)
    report = run_export(ctx, budget_ms, output, max_accuracy_drop=max_accuracy_drop, calibration_path=calibration,
                        table_path=latency_table, max_rounds=max_rounds, log=_log)
    if as_json:
        click.echo(json.dumps(report, indent=1, default=float))
        return
    m, u = report["measured_ms"], report["unpruned_ms"]
    kept = [round(b["mean_kept_tokens"], 1) for b in report["schedule"]["blocks"]]
    lines = [
        f"model     {report['model']['name']} ({report['model']['num_tokens']} tokens, {report['model']['depth']} blocks)",
        ("budget    " + (f"{budget_ms:.3f} ms" if budget_ms is not None else f"accuracy drop <= {max_accuracy_drop:g} points")
         + f"   measured {m['median']:.3f} ms median (p90 {m['p90']:.3f}, {m['runs']} runs)   "
         f"unpruned {u['median']:.3f} ms   speed-up x{report['speedup']:.2f}   predicted {report['predicted_ms']:.3f} ms"),
        f"kept      mean patch tokens per block {kept} ({report['mode']} mode, {report['format']}"
        + (f" via {report['tflite_converter']}" if report.get("tflite_converter") else "") + ")",
        f"parity    max |logit diff| {report['parity']['max_abs_diff']:.1e}, top-1 agreement {report['parity']['top1_agreement']:.3f}",
        export_footprint_lines(report),
    ]
    if "xnnpack" in report:
        x = report["xnnpack"]
        lines.append(f"xnnpack   {x['delegated']}/{x['nodes']} nodes delegated in {x['partitions']} partition(s)")
    est = report.get("calibration_estimate")
    if est is not None:
        what = ("accuracy", est["accuracy"]) if est["accuracy"] is not None else ("agreement with unpruned", est["agreement"])
        lines.append(f"estimate  calibration {what[0]} {100 * what[1]:.1f} % on {est['images']} images, drop {est['drop_points']:.1f} points, "
                     f"KL {est['kl']:.3f} ({report['objective']} objective)")
    acc = report["accuracy"]
    if acc.get("available"):
        lines.append(f"accuracy  unpruned {100 * acc['unpruned']:.1f} %  pruned {100 * acc['pruned']:.1f} %  on {acc['count']} images ({acc['images']})")
    else:
        lines.append(f"accuracy  not reported: {acc.get('reason')}")
    if "precision" in report:
        lines.append(precision_line(report))
    lines += [f"note      {n}" for n in report["notes"]]
    lines.append(f"wrote     {output}/model.{report['format']}, schedule.json, report.json ({report['seconds']:.0f} s)")
    click.echo("\n".join(lines))


@main.group()
def tables():
    """Latency tables: plot them."""


@tables.command("plot")
@click.argument("table_path", type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True, help="image (.png).")
@_handle_errors
def tables_plot(table_path, output):
    """Latency vs kept tokens per part (median, p90 band), plateaus shaded."""
    from ..plots import plot_table
    from ..tables.latency import LatencyTable

    info = plot_table(LatencyTable.load(table_path), output)
    spans = ", ".join(f"{a}-{b}" for a, b in info["plateaus"]) or "none"
    click.echo(f"plateaus (attention + mlp within 2 %) at n = {spans} -> {output}")


@main.command("report")
@click.argument("report_path", type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True, help="image (.png).")
@_handle_errors
def report_cmd(report_path, output):
    """Plot an export report: kept tokens per block; predicted vs measured latency."""
    from ..plots import plot_report

    try:
        report = json.loads(Path(report_path).read_text())
        report["schedule"]["blocks"], report["budget_ms"], report["unpruned_ms"]["median"]
    except FileNotFoundError:
        raise ValueError(f"report {report_path} does not exist: run `vitedge export` first") from None
    except (json.JSONDecodeError, KeyError, TypeError):
        raise ValueError(f"{report_path} is not a vitedge export report (report.json)") from None
    plot_report(report, output)
    click.echo(f"-> {output}")


from .bench import bench  # noqa: E402  (the latency gate, vitedge/cli/bench.py)
main.add_command(bench)

from .devices import devices as _devices_group  # noqa: E402  (vitedge devices list|show|check)
main.add_command(_devices_group)

if __name__ == "__main__":
    main()
