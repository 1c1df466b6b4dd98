"""``vitedge bench``: the latency gate for CI (thin: flags -> :mod:`vitedge.gate`).

Exit codes: 0 pass, 1 regression / over budget / speed-up not reached, 2 usage or bad input,
3 unstable measurement or inconclusive comparison. Errors are one line on stderr.
"""
from __future__ import annotations

import json
import sys

import click


class _OneLineErrors(click.Command):
    """Usage errors as one ``error: ...`` line on stderr, exit 2 (not click's three-line usage block)."""

    def make_context(self, info_name, args, parent=None, **extra):
        try:
            return super().make_context(info_name, args, parent=parent, **extra)
        except click.UsageError as e:
            _fail(e.format_message())


def _fail(msg: str, code: int = 2):
    click.echo(f"error: {' '.join(str(msg).split())}", err=True)
    sys.exit(code)


def _floats(text: str, what: str) -> tuple:
    try:
        vals = tuple(float(v) for v in text.split(","))
    except ValueError:
        _fail(f"{what} must be comma-separated numbers (e.g. 0.5,0.5,0.5), got {text!r}")
    return vals


@click.command("bench", cls=_OneLineErrors)
@click.argument("model")
@click.option("--device", default="local", show_default=True,
              help="target device: local, a preset (`vitedge devices list`), ssh://[USER@]HOST[:PORT] or adb://[SERIAL].")
@click.option("--host", default=None, help="ssh device: [USER@]HOST[:PORT].")
@click.option("--serial", default=None, help="adb device: the phone's serial.")
@click.option("--device-opt", multiple=True, metavar="KEY=VALUE", help="device setting overriding the preset.")
@click.option("--devices-file", default=None, help="TOML file adding or overriding device presets.")
@click.option("--runtime", default=None,
              help="runtime on the device (default: the preset's if it runs the file, else .onnx -> onnxruntime, .tflite -> litert).")
@click.option("--threads", type=int, default=0, show_default=True, help="runtime threads (0: the preset's, else all cores). Baselines record it.")
@click.option("--data", default=None, help="image folder (default: the digits calibration split, resized to the input).")
@click.option("--images", type=int, default=32, show_default=True, help="number of images cycled through.")
@click.option("--mean", default="0.5,0.5,0.5", show_default=True, help="normalisation mean of --data images.")
@click.option("--std", default="0.5,0.5,0.5", show_default=True, help="normalisation std of --data images.")
@click.option("--warmup", type=int, default=5, show_default=True, help="untimed runs per round.")
@click.option("--runs", type=int, default=20, show_default=True, help="at least this many timed runs per round.")
@click.option("--min-time", type=float, default=0.05, show_default=True, help="and at least this many timed seconds per round.")
@click.option("--rounds", type=int, default=None, help="rounds (single/baseline, default 10) or A/B pairs (default 30).")
@click.option("--max-rounds", type=int, default=None, help="A/B: add pairs while inconclusive, up to this many (default 3 x --rounds).")
@click.option("--against", default=None, help="A/B: interleave MODEL (new) with this model (base) on the same machine.")
@click.option("--baseline", default=None, help="compare with a baseline file saved by --save-baseline.")
@click.option("--save-baseline", default=None, help="write MODEL's samples as a baseline file (JSON).")
@click.option("--force", is_flag=True, help="compare with a baseline from another device/runtime/threads/CPU/images; save an unstable baseline.")
@click.option("--statistic", type=click.Choice(["median", "p25", "p10", "min"]), default="median", show_default=True,
              help="per-round statistic compared (p10/min: robust on contended machines; the budget always uses --quantile).")
@click.option("--max-regression", default=None, help="tolerated slow-down, '5%' or '0.05' [default: 5%].")
@click.option("--max-memory-regression", default=None,
              help="fail when MODEL's own memory (peak RSS while loading and running it, minus before) grows more than "
                   "this against --against/--baseline, '10%' or '0.1' (growth under 1 MiB is ignored).")
@click.option("--expect-faster", is_flag=True, help="pass only if MODEL is faster than the base with confidence (CI upper < 1).")
@click.option("--min-speedup", type=float, default=None, help="with --expect-faster: required speed-up factor (CI upper < 1/X).")
@click.option("--budget-ms", type=float, default=None, help="fail when MODEL's median (or --quantile) exceeds this (ms).")
@click.option("--quantile", type=float, default=0.5, show_default=True, help="quantile for --budget-ms (0.9: p90).")
@click.option("--max-cv", type=float, default=0.05, show_default=True,
              help="stability: limit of the round medians' robust CV (1.4826 MAD / median).")
@click.option("--drift-tolerance", type=float, default=0.10, show_default=True, help="stability: round medians may move this much.")
@click.option("--confidence", type=float, default=0.95, show_default=True, help="two-sided confidence of the intervals.")
@click.option("--seed", type=int, default=0, show_default=True, help="bootstrap and input seed.")
@click.option("--json", "as_json", is_flag=True, help="print the result as JSON on stdout.")
@click.option("--junit", default=None, help="write a JUnit XML report (one testcase per check).")
@click.option("-o", "--output", default=None, help="write the full result JSON (raw samples included).")
@click.option("--quiet", is_flag=True, help="no progress lines on stderr.")
@click.option("--precision", type=click.Choice(["fp32", "fp16", "int8"]), default=None,
              help="require MODEL to be an export of this precision (read from the file; a mismatch exits 2).")
@click.pass_context
def bench(ctx, model, device, host, serial, device_opt, devices_file, statistic, runtime, threads, data, images, mean, std, warmup, runs, min_time, rounds, max_rounds,
          against, baseline, save_baseline, force, max_regression, max_memory_regression, expect_faster, min_speedup, budget_ms, quantile,
          max_cv, drift_tolerance, confidence, seed, as_json, junit, output, quiet, precision=None):
    """Measure MODEL on a device and gate on latency: --budget-ms, --baseline FILE, or --against OTHER (A/B).

    \b
    vitedge bench new/model.onnx --against base/model.onnx --max-regression 5% --junit bench.xml
    vitedge bench out/model.onnx --save-baseline base.json
    vitedge bench out/model.onnx --baseline base.json --max-regression 5%
    vitedge bench out/model.onnx --budget-ms 2.5 --quantile 0.9

    Exit codes: 0 pass, 1 regression or over budget, 2 usage or bad input, 3 unstable or inconclusive.
    """
    from ..gate import (BenchError, BenchSettings, Gate, check_output_paths, format_text, make_baseline,
                        parse_fraction, result_json, write_json, write_junit)

    try:
        explicit = ctx.get_parameter_source("max_regression") == click.core.ParameterSource.COMMANDLINE
        expect_faster = expect_faster or min_speedup is not None
        if against is None and baseline is None and (expect_faster or explicit):
            raise BenchError("--max-regression / --expect-faster need something to compare with: "
                             "--against OTHER_MODEL or --baseline FILE")
        if max_memory_regression is not None and against is None and baseline is None:
            raise BenchError("--max-memory-regression needs something to compare with: --against OTHER_MODEL or --baseline FILE")
        if expect_faster and explicit:
            raise BenchError("give --max-regression (a tolerated slow-down) or --expect-faster (a required speed-up), not both")
        try:
            from ..devices.presets import parse_setting

            dev_settings = dict(parse_setting(o) for o in device_opt)
        except ValueError as e:  # PresetError is a DeviceError (ValueError)
            raise BenchError(str(e)) from None
        dev_settings.update({k: v for k, v in (("host", host), ("serial", serial), ("devices_file", devices_file))
                             if v is not None})
        settings = BenchSettings(
            device=device, device_settings=dev_settings, statistic=statistic, runtime=runtime, threads=threads,
            data=data, images=images, mean=_floats(mean, "--mean"), std=_floats(std, "--std"), warmup=warmup, runs=runs, min_time_s=min_time,
            rounds=rounds, max_rounds=max_rounds,
            max_regression=parse_fraction(max_regression if max_regression is not None else "5%"),
            max_memory_regression=(None if max_memory_regression is None
                                   else parse_fraction(max_memory_regression, "--max-memory-regression")),
            expect_faster=expect_faster, min_speedup=1.0 if min_speedup is None else min_speedup,
            budget_ms=budget_ms, quantile=quantile, max_cv=max_cv, drift_tolerance=drift_tolerance,
            confidence=confidence, seed=seed, force=force)
        check_output_paths(save_baseline, junit, output)
        if precision is not None:  # vitedge.precision: the file's own precision, before any timing
            from ..precision import check_file_precision

            check_file_precision(model, precision, error=BenchError)
        log = (lambda _m: None) if quiet else (lambda m: click.echo(m, err=True))
        gate = Gate(model, settings, against=against, baseline=baseline, log=log)
        result = gate.run(stability_gates=True if save_baseline else None)
        if save_baseline:
            if result["verdict"] == "unstable" and not force:
                result["notes"].append(f"baseline NOT written to {save_baseline}: the measurement is unstable "
                                       "(re-run, or --force to write it anyway)")
            else:
                write_json(save_baseline, make_baseline(result))
                result["notes"].append(f"baseline written to {save_baseline}")
        if junit:
            write_junit(junit, result)
        if output:
            write_json(output, result_json(result, samples=True))
    except BenchError as e:
        _fail(str(e))
    except OSError as e:  # e.g. an output file that cannot be written
        _fail(f"{type(e).__name__}: {e}")
    if as_json:
        click.echo(json.dumps(result_json(result), indent=1))
    else:
        click.echo(format_text(result))
    sys.exit(result["exit_code"])
