"""Model footprint (issue 14): load time, first inference, peak memory and file size of unpruned FP32
exports, as TFLite's benchmark_model reports them, measured by vitedge's runner in a fresh process per
repeat (``LocalDevice.process_footprint``); with ``--emulated``, a profile and an export of the shipped
model on the emulated Raspberry Pi (scripts/emulated_pi.py; root) with ARM-vs-x86 parity and the
latency table's plot, marked emulated (qemu-user: its latencies mean nothing).

    python benchmarks/footprint.py --threads 1                 # footprint.json/.md/.png
    sudo python benchmarks/footprint.py --threads 1 --emulated # also the emulated-board section
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, environment, md_table, save_plot, write_results  # noqa: E402

REF = "vitedge-digits-vit"
ROOT = Path(__file__).resolve().parents[1]


def export_unpruned(name: str, fmt: str, folder: Path) -> tuple:
    """(model file, one input dict) of ``name``'s unpruned FP32 export in ``fmt``."""
    from vitedge.exporters.registry import get_exporter
    from vitedge.models.loading import load_prunable

    model = load_prunable(None if name == REF else name)
    path = folder / f"{name}.{fmt}"
    with model.pruning():
        get_exporter(fmt).export(model, path, pruned=False, feeds=None)
    x = np.random.default_rng(0).standard_normal((1, *model.input_size)).astype(np.float32)
    return path, {"image": x}


def local_footprints(models: list, runtimes: list, threads: int, repeats: int, log) -> list:
    from vitedge.devices import MeasureConfig, get_device
    from vitedge.devices.runtimes import runtime_format

    rows = []
    with tempfile.TemporaryDirectory(prefix="vitedge-footprint-") as tmp:
        for name in models:
            for runtime in runtimes:
                fmt = runtime_format(runtime)
                path, feeds = export_unpruned(name, fmt, Path(tmp))
                dev = get_device("local", runtime=runtime, threads=threads,
                                 config=MeasureConfig(warmup=5, min_runs=20, min_time_s=0.2))
                fps = []
                for _ in range(repeats):  # each one a fresh runner process
                    fps.append(dev.process_footprint(path, feeds, cached=False))
                steady = dev.measure_model(path, [feeds])
                med = lambda k: float(np.median([f[k] for f in fps]))  # noqa: E731
                row = {"model": name, "runtime": runtime, "format": fmt, "file_bytes": fps[0]["file_bytes"],
                       "load_ms": med("load_ms"), "first_inference_ms": med("first_inference_ms"),
                       "steady_median_ms": steady["median_ms"], "peak_rss_mib": med("peak_rss_mib"),
                       "model_rss_mib": med("model_rss_mib"), "rss_before_mib": med("rss_before_mib"),
                       "memory_source": fps[0]["memory_source"], "repeats": fps}
                log(f"{name} {runtime}: {row['file_bytes'] / 2 ** 20:.1f} MiB file, load {row['load_ms']:.1f} ms, first "
                    f"{row['first_inference_ms']:.2f} ms, steady {row['steady_median_ms']:.2f} ms, peak RSS "
                    f"{row['peak_rss_mib']:.1f} MiB (model +{row['model_rss_mib']:.1f})")
                rows.append(row)
    return rows


# ------------------------------------------------------------------------------------------ emulated board
def emulated_section(out: Path, threads: int, log) -> dict:
    """Profile and export the shipped model on the emulated board with the unchanged CLI; parity of the
    exported file between the board's ONNX Runtime (aarch64) and this machine's, on 32 test digits."""
    spec = importlib.util.spec_from_file_location("emulated_pi", ROOT / "scripts" / "emulated_pi.py")
    emu = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(emu)
    manifest = emu.build(log=log)
    state = emu.start(log=log)
    try:
        dev = ["--device", "rpi4", "--host", "pi-emu", "--device-opt", f"ssh_config={state['ssh_config']}",
               "--device-opt", f"python={state['python']}", "--threads", str(threads), "--warmup", "1", "--runs", "3",
               "--min-time", "0", "--quiet"]
        with tempfile.TemporaryDirectory(prefix="vitedge-emu-bench-") as tmp:
            cache = ["--cache-dir", f"{tmp}/cache"]
            t0 = time.time()
            _cli(["profile", *dev, *cache, "--tokens-step", "8", "-o", f"{tmp}/table.json"])
            profile_s = time.time() - t0
            table = json.loads(Path(f"{tmp}/table.json").read_text())
            from vitedge.plots import plot_table
            from vitedge.tables.latency import LatencyTable

            plot_table(LatencyTable.load(f"{tmp}/table.json"), out / "footprint_emulated_table.png",
                       title="EMULATED Raspberry Pi (qemu-user aarch64): ONNX Runtime latency table of the shipped "
                             "model; timings are the emulator's, not a Pi's")
            t0 = time.time()
            _cli(["export", *dev, *cache, "--tokens-step", "8", "--max-accuracy-drop", "2", "--search-grid", "8",
                  "-o", f"{tmp}/export"])
            export_s = time.time() - t0
            report = json.loads(Path(f"{tmp}/export/report.json").read_text())
            parity = _parity(state, Path(f"{tmp}/export/model.onnx"))
    finally:
        emu.stop(state["run"], log=log)
    return {"manifest": manifest, "profile_seconds": round(profile_s, 1), "export_seconds": round(export_s, 1),
            "table": {"points": table["meta"]["points"], "environment": table["device"]["environment"],
                      "footprint": table["meta"]["footprint"],
                      "unpruned_attention_ms": table["parts"]["attention"]["median_ms"][-1]},
            "export": {k: report.get(k) for k in ("mode", "measured_ms", "unpruned_ms", "speedup", "parity", "footprint",
                                                   "budget_quantile", "images")},
            "arm_vs_x86": parity}


def _cli(args: list) -> None:
    p = subprocess.run([str(Path(sys.executable).parent / "vitedge"), *args], capture_output=True, text=True)
    if p.returncode != 0:
        raise SystemExit(f"vitedge {' '.join(args[:1])} failed ({p.returncode}): {p.stderr[-1500:]}")


def _parity(state: dict, model: Path) -> dict:
    from vitedge.data.digits import digits_split
    from vitedge.devices.runner import open_session

    images = np.asarray(digits_split("test").images[:32], np.float32)
    d = Path(state["root"]) / "tmp" / "parity-bench"
    d.mkdir(parents=True, exist_ok=True)
    try:
        (d / "m.onnx").write_bytes(model.read_bytes())
        np.save(d / "x.npy", images.astype(np.float32))
        code = ("import numpy as np, onnxruntime as o; s = o.InferenceSession(\"/tmp/parity-bench/m.onnx\"); "
                "x = np.load(\"/tmp/parity-bench/x.npy\"); n = s.get_inputs()[0].name; "
                "np.save(\"/tmp/parity-bench/y.npy\", np.concatenate([s.run(None, {n: x[i:i+1]})[0] for i in range(len(x))]))")
        subprocess.run(["ssh", "-F", state["ssh_config"], "pi-emu", state["python"], "-c", f"'{code}'"], check=True,
                       capture_output=True, timeout=1800)
        arm = np.load(d / "y.npy")
    finally:
        shutil.rmtree(d, ignore_errors=True)
    s = open_session("onnxruntime", str(model), 1)
    x86 = np.concatenate([s.run({s.input_specs[0]["name"]: images[i:i + 1].astype(np.float32)})[0] for i in range(len(images))])
    return {"images": len(images), "max_abs_logit_diff": float(np.abs(arm - x86).max()),
            "top1_agreement": float((arm.argmax(1) == x86.argmax(1)).mean())}


# ------------------------------------------------------------------------------------------ report
def report_md(rows: list, emulated: dict | None, env: dict) -> str:
    lines = ["# Model footprint: load time, first inference, memory (unpruned FP32 exports)", "",
             f"vitedge's runner in a fresh process per repeat, {env.get('cpu_model')}, "
             f"{rows[0]['repeats'][0].get('memory_source') if rows else ''}; medians over repeats. Peak RSS: the whole runner "
             "process (Python, numpy, the runtime, the model); model RSS: what loading and running the model added.", "",
             md_table(["model", "runtime", "file (MiB)", "load (ms)", "first inference (ms)", "steady median (ms)",
                       "peak RSS (MiB)", "model RSS (MiB)"],
                      [[r["model"], r["runtime"], r["file_bytes"] / 2 ** 20, r["load_ms"], r["first_inference_ms"],
                        r["steady_median_ms"], r["peak_rss_mib"], r["model_rss_mib"]] for r in rows])]
    if emulated:
        p, e = emulated["arm_vs_x86"], emulated["export"]
        lines += ["", "## Emulated Raspberry Pi (qemu-user aarch64: timings are the emulator's, not a Pi's)", "",
                  f"- board: {emulated['manifest']['versions']}", f"- `vitedge profile --device rpi4`: "
                  f"{emulated['table']['points']} points in {emulated['profile_seconds']} s "
                  "(`footprint_emulated_table.png`)",
                  f"- `vitedge export --device rpi4 --max-accuracy-drop 2`: {emulated['export_seconds']} s, {e['mode']} mode, "
                  f"parity with PyTorch {e['parity'].get('max_abs_diff'):.2e} (top-1 {e['parity'].get('top1_agreement'):.3f})",
                  f"- the exported file in ONNX Runtime on the board vs on this machine ({p['images']} test digits): max |logit "
                  f"diff| {p['max_abs_logit_diff']:.2e}, top-1 agreement {p['top1_agreement']:.3f}"]
    return "\n".join(lines) + "\n"


def plot(rows: list, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    short = {REF: "shipped", "vit_small_patch16_224": "ViT-S/16"}
    labels = [f"{short.get(r['model'], r['model'])}\n{r['runtime']}" for r in rows]
    titles = {"load_ms": "session creation", "first_inference_ms": "first inference", "peak_rss_mib": "peak RSS of the runner"}
    for ax, key, unit in zip(axes, ("load_ms", "first_inference_ms", "peak_rss_mib"), ("ms", "ms", "MiB")):
        ax.bar(range(len(rows)), [r[key] for r in rows], color="tab:blue")
        if key == "peak_rss_mib":
            ax.bar(range(len(rows)), [r["model_rss_mib"] for r in rows], color="tab:orange", label="added by the model")
            ax.legend(fontsize=8)
        ax.set_xticks(range(len(rows)), labels, fontsize=7)
        ax.set_title(f"{titles[key]} ({unit})", fontsize=9)
    save_plot(fig, path)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=[REF, "vit_small_patch16_224"])
    ap.add_argument("--runtimes", nargs="+", default=["onnxruntime", "litert"])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--emulated", action="store_true", help="also the emulated Raspberry Pi section (root)")
    ap.add_argument("--quick", action="store_true", help="the shipped model, ONNX Runtime, 1 repeat")
    ap.add_argument("--out", type=Path, default=RESULTS)
    a = ap.parse_args(argv)
    if a.quick:
        a.models, a.runtimes, a.repeats = [REF], ["onnxruntime"], 1
    if "litert" in a.runtimes and importlib.util.find_spec("litert_torch") is None:
        a.runtimes = [r for r in a.runtimes if r != "litert"]
        print("litert skipped: the tflite extra is not installed", file=sys.stderr)
    log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    a.out.mkdir(parents=True, exist_ok=True)
    rows = local_footprints(a.models, a.runtimes, a.threads, a.repeats, log)
    emulated = emulated_section(a.out, a.threads, log) if a.emulated else None
    env = environment()
    data = {"environment": env, "threads": a.threads, "repeats": a.repeats, "rows": rows, "emulated": emulated}
    write_results("footprint", data, report_md(rows, emulated, env), a.out)
    plot(rows, a.out / "footprint.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
