"""ai-edge-litert vs tflite-runtime 2.14 on the same .tflite files (issue 3): latency, parity, XNNPACK.

    taskset -c 1 python benchmarks/tflite_runtimes.py                  # both models, core 1, 1 thread
    python benchmarks/tflite_runtimes.py --threads 1 2 --cpus 0,1       # an idle 2-core machine
    python benchmarks/tflite_runtimes.py --quick --models vitedge-digits-vit   # smoke (seconds)

For each model (the reference ``vitedge-digits-vit`` with its shipped weights; timm names with seeded
**random weights**, labelled so) two files are exported with vitedge's own TFLite path
(``get_exporter("tflite")``: litert-torch, op audit, XNNPACK count): the unpruned model, and capacity mode
keeping K = round(``--keep`` x P) patch tokens from block 1 on (block 0 keeps all P).

Both interpreters run the same files through the on-device runner (``devices/runner.py``, runtime
"litert", ``runtime_options.interpreter`` set explicitly) as a subprocess: ai-edge-litert under
``--litert-python`` (default: this Python), tflite-runtime under ``--tflite-runtime-python`` (default
``$VITEDGE_TFLITE_RUNTIME_PYTHON``, else /work/venv-tflrt/bin/python: python3 + numpy < 2 +
tflite-runtime 2.14, what a Raspberry Pi user installs; when absent that side is skipped with a
message).  Every run is pinned with ``taskset -c --cpus`` (default core 1) at ``--threads`` (default 1).

Timing: ``--rounds`` rounds; in each round one runner process per interpreter times every file on the
same ``--images`` images (cycled), the two processes in alternating order (A B, B A, ...) so that
machine drift cancels.  Per file and interpreter: the median over rounds of the round medians and of
the round p90s, and the ratio tflite-runtime / ai-edge-litert as the median (p10-p90) of the
per-round ratios of medians.

Parity (first round): the runner saves each interpreter's outputs for the images (``outputs_npz``);
compared with PyTorch at batch 1: max |logit difference| against ``ATOL`` (stated per model), top-1
agreement, kept tokens (capacity mode), and the digits labels' top-1 for the reference model.
XNNPACK: the runner's count of nodes the default delegate took, per interpreter.

Writes ``tflite_runtimes.{json,md,png}`` in ``--out`` (default benchmarks/results).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np

from _common import RESULTS, environment, md_table, save_plot, write_results
from vitedge.devices import runner
from vitedge.models.reference import REFERENCE_NAME

LITERT, TFLRT = "ai-edge-litert", "tflite-runtime"
DEFAULT_TFLRT_PYTHON = "/work/venv-tflrt/bin/python"
INSTALL_TFLRT = "python3 -m venv /work/venv-tflrt && /work/venv-tflrt/bin/pip install tflite-runtime==2.14.0 'numpy<2'"
# max |logit diff| allowed against PyTorch (float32; ViT-S is 12 blocks of width 384 with random weights)
ATOL = {REFERENCE_NAME: 1e-4}
ATOL_OTHER = 1e-3


class BenchError(RuntimeError):
    """A runner subprocess failed (one line: which interpreter, exit code, last stderr line)."""


# ------------------------------------------------------------------ models, files, PyTorch references
def load_model(name: str):
    """PrunableViT; timm models get seeded random weights (latency and parity are meaningful, accuracy is not)."""
    import torch

    from vitedge.models.loading import load_prunable

    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the random-weights warning: recorded as "weights" instead
        return load_prunable(name)


def load_images(model, name: str, n: int):
    """(images float32 (n, 3, H, W), labels int64 (n,) or None): the digits test split, resized for other models."""
    from vitedge.data.digits import digits_split
    from vitedge.data.images import resized_digits

    s = digits_split("test") if name == REFERENCE_NAME else resized_digits("test", model.input_size)
    return s.images[:n], None if s.labels is None else s.labels[:n]


def capacity_schedule(model, keep: float) -> list:
    """[None, K, K, ...]: K = round(keep x P) patch tokens kept from block 1 on."""
    k = max(model.min_patch_tokens, min(model.num_patches, round(keep * model.num_patches)))
    return [None] + [k] * (model.depth - 1)


def torch_reference(model, images: np.ndarray, pruned: bool) -> dict:
    """{"logits": (n, classes), "kept": (n, depth) or None}, one image at a time (batch 1, as exported)."""
    import torch

    logits, kept = [], []
    with torch.no_grad():
        for i in range(len(images)):
            x = torch.from_numpy(images[i:i + 1])
            if pruned:
                out = model.forward_with_info(x)
                logits.append(out.logits.numpy()[0])
                kept.append([int(k) for k in out.kept])
            else:
                logits.append(model.vit(x).numpy()[0])
    return {"logits": np.stack(logits), "kept": np.array(kept) if pruned else None}


def export_variants(name: str, args, work: Path) -> list[dict]:
    """Export the unpruned and capacity files of ``name``; their PyTorch references and input files."""
    from vitedge.exporters.registry import get_exporter

    model, art = load_model(name), get_exporter("tflite")
    images, labels = load_images(model, name, args.images)
    caps = capacity_schedule(model, args.keep)
    out = []
    for variant, pruned in (("unpruned", False), ("capacity", True)):
        model.set_capacities(caps if pruned else [None] * model.depth)
        path = work / f"{name}-{variant}.tflite"
        print(f"[{name}] exporting {variant} ...", flush=True)
        art.export(model, path, pruned=pruned)
        audit = art.audit(path)
        input_name = runner.open_session("litert", str(path), 1).input_specs[0]["name"]
        npz = []
        for i in range(len(images)):
            f = work / f"{name}-{variant}-img{i}.npz"
            np.savez(f, **{input_name: images[i:i + 1]})
            npz.append(f.name)
        out.append({"model": name, "variant": variant, "file": path.name, "inputs_npz": npz,
                    "capacities": caps if pruned else None, "patches": model.num_patches, "depth": model.depth,
                    "weights": "shipped (trained)" if name == REFERENCE_NAME else "random (seed 0): latency/parity only",
                    "size_mb": path.stat().st_size / 1e6, "ops": sum(audit["op_types"].values()),
                    "xnnpack_host": audit["xnnpack"], "labels": labels, "torch": torch_reference(model, images, pruned)})
    return out


def code_version() -> dict | None:
    """The commit the files were exported from, and the model/exporter sources that differed from it (the
    working tree is shared), or None without git."""
    root = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=30)
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "vitedge", "exporters", "devices"], cwd=root,
                               capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if head.returncode != 0:
        return None
    return {"commit": head.stdout.strip(), "uncommitted": [ln[3:] for ln in dirty.stdout.splitlines() if ln.strip()]}


# ------------------------------------------------------------------ runner subprocesses
def pin_prefix(cpus: str) -> list[str]:
    """["taskset", "-c", cpus], or [] where taskset is missing (recorded in the JSON)."""
    return ["taskset", "-c", cpus] if cpus and shutil.which("taskset") else []


def write_plan(work: Path, variants: list[dict], interpreter: str, threads: int, cfg: dict, rnd: int) -> Path:
    """The runner plan of one round: every file, the images cycled; outputs saved in round 0."""
    points = []
    for v in variants:
        key = f"{v['model']}/{v['variant']}"
        p = {"name": key, "model": v["file"], "inputs_npz": v["inputs_npz"]}
        if rnd == 0:
            p["outputs_npz"] = f"out-{interpreter}-t{threads}-{v['model']}-{v['variant']}.npz"
        points.append(p)
    plan = {"runtime": "litert", "threads": threads, "config": dict(cfg, seed=rnd),
            "runtime_options": {"interpreter": interpreter}, "points": points}
    path = work / f"plan-{interpreter}-t{threads}-r{rnd}.json"
    runner.write_json_atomic(str(path), plan)
    return path


def run_runner(python: str, plan: Path, pin: list[str], timeout_s: float) -> dict:
    """Run ``devices/runner.py`` under ``python`` (isolated: -I, as copied to a device); its result dict."""
    result = plan.with_name(plan.stem + "-result.json")
    argv = [*pin, python, "-I", str(Path(runner.__file__).resolve()), str(plan), str(result)]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s, cwd=plan.parent)
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise BenchError(f"{python} runner.py {plan.name} exited {proc.returncode}: {tail}")
    res = json.loads(result.read_text())
    bad = [p for p in res["points"] if p["error_code"] != 0 or p.get("outputs_error")]
    if bad:
        raise BenchError(f"{python}: {bad[0]['name']}: {bad[0]['error'] or bad[0]['outputs_error']}")
    return res


def measure(variants: list[dict], pythons: dict, args, work: Path, threads: int) -> dict:
    """Interleaved rounds; {interpreter: {"environment", "runtime_info", "rows": {key: round rows}}}."""
    cfg = ({"warmup": 1, "min_runs": 3, "min_time_s": 0.0} if args.quick else
           {"warmup": args.warmup, "min_runs": args.min_runs, "min_time_s": args.min_time})
    pin = pin_prefix(args.cpus)
    got = {rt: {"rows": {}} for rt in pythons}
    order = list(pythons)
    for rnd in range(args.rounds):
        for rt in (order if rnd % 2 == 0 else order[::-1]):
            res = run_runner(pythons[rt], write_plan(work, variants, rt, threads, cfg, rnd), pin, args.timeout)
            if rnd == 0:
                got[rt].update(environment=res["environment"], runtime_info=res.get("runtime_info", {}))
            for p in res["points"]:
                got[rt]["rows"].setdefault(p["name"], []).append(p)
            print(f"  round {rnd + 1}/{args.rounds} {rt:<15} " + "  ".join(
                f"{p['name']} {p['median_ms']:.2f}" for p in res["points"]) + " ms", flush=True)
    return got


# ------------------------------------------------------------------ statistics
def latency_stats(rows: list[dict]) -> dict:
    """One file in one interpreter over the rounds (ms): ``median_ms``/``p90_ms`` are the median over rounds of
    each round's median/p90, so that every round weighs the same (a round's sample count depends on how fast
    it ran: --min-time); ``pooled_*`` over all samples."""
    pooled = np.concatenate([np.asarray(r["samples_ms"], float) for r in rows])
    return {"median_ms": float(np.median([r["median_ms"] for r in rows])),
            "p90_ms": float(np.median([r["p90_ms"] for r in rows])),
            "pooled_median_ms": float(np.median(pooled)), "pooled_p90_ms": float(np.percentile(pooled, 90)),
            "round_medians_ms": [r["median_ms"] for r in rows], "samples": int(pooled.size)}


def ratio_stats(a_rows: list[dict], b_rows: list[dict]) -> dict:
    """B/A per round (same round = adjacent processes): median and p10-p90."""
    r = np.array([b["median_ms"] for b in b_rows]) / np.array([a["median_ms"] for a in a_rows])
    return {"median": float(np.median(r)), "p10": float(np.percentile(r, 10)), "p90": float(np.percentile(r, 90)),
            "per_round": r.tolist()}


def parity(v: dict, outputs: Path) -> dict:
    """One interpreter's saved outputs vs PyTorch (see the module docstring)."""
    with np.load(outputs, allow_pickle=False) as z:
        logits = z["out0"].reshape(len(v["torch"]["logits"]), -1)
        kept = z["out1"].reshape(len(logits), -1).astype(np.int64) if "out1" in z.files else None
    ref = v["torch"]
    atol = ATOL.get(v["model"], ATOL_OTHER)
    diff = float(np.abs(logits - ref["logits"]).max())
    top1 = float(np.mean(logits.argmax(1) == ref["logits"].argmax(1)))
    out = {"images": len(logits), "max_abs_logit_diff": diff, "atol": atol, "top1_agreement": top1,
           "max_abs_logit": float(np.abs(ref["logits"]).max())}
    if ref["kept"] is not None:
        out["kept_match"] = float(np.mean(np.all(kept == ref["kept"], axis=1))) if kept is not None else 0.0
    if v["labels"] is not None:
        out["top1_accuracy"] = float(np.mean(logits.argmax(1) == v["labels"]))
        out["torch_top1_accuracy"] = float(np.mean(ref["logits"].argmax(1) == v["labels"]))
    out["ok"] = bool(diff <= atol and top1 == 1.0 and out.get("kept_match", 1.0) == 1.0)
    out["logits"] = logits
    return out


def summarize(variants: list[dict], got: dict, work: Path, threads: int) -> list[dict]:
    rows = []
    for v in variants:
        key = f"{v['model']}/{v['variant']}"
        row = {"model": v["model"], "variant": v["variant"], "threads": threads, "runtimes": {}}
        for rt, g in got.items():
            p = parity(v, work / f"out-{rt}-t{threads}-{v['model']}-{v['variant']}.npz")
            row["runtimes"][rt] = {**latency_stats(g["rows"][key]), "version": g["environment"]["runtime_version"],
                                   "parity": {k: x for k, x in p.items() if k != "logits"},
                                   "xnnpack": g["runtime_info"].get(v["file"], {}).get("delegation")}
            row.setdefault("_logits", {})[rt] = p["logits"]
        if len(got) == 2:
            row["ratio_tflrt_over_litert"] = ratio_stats(got[LITERT]["rows"][key], got[TFLRT]["rows"][key])
            row["max_abs_logit_diff_between_runtimes"] = float(np.abs(row["_logits"][LITERT] - row["_logits"][TFLRT]).max())
        del row["_logits"]
        rows.append(row)
    return rows


# ------------------------------------------------------------------ report
def _fmt_x(x: dict | None) -> str:
    if not x or "error" in x:
        return "-" if not x else f"error: {x['error']}"
    left = ", ".join(f"{k} {n}" for k, n in x["not_delegated"].items())
    return f"{x['delegated']}/{x['nodes']} in {x['delegate_partitions']} partition(s)" + (f"; left: {left}" if left else "")


def report(data: dict) -> str:
    rows, env, skipped = data["rows"], data["environment"], data.get("skipped")
    md = ["# ai-edge-litert vs tflite-runtime 2.14 (same .tflite files, local CPU)\n\n",
          f"Pinned: `{' '.join(env['pinning']['prefix']) or 'not pinned (no taskset)'}`; "
          f"{data['rounds']} interleaved rounds; {data['images']} images cycled; load average at the end "
          f"{env['load_average_1_5_15min']}; CPU {env['cpu_model']}.\n\n"]
    code = env.get("code") or {}
    if code:
        md.append(f"Exported from commit {code['commit'][:10]}" + (
            f" with uncommitted changes in {', '.join(code['uncommitted'])}" if code["uncommitted"] else "") + ".\n\n")
    if skipped:
        md.append(f"**tflite-runtime side skipped**: {skipped}\n\n")
    md.append("## Latency (ms; median and p90: the median over rounds of each round's median and p90)\n\n")
    lat = []
    for r in rows:
        a, b = r["runtimes"].get(LITERT, {}), r["runtimes"].get(TFLRT, {})
        q = r.get("ratio_tflrt_over_litert")
        lat.append([r["model"], r["variant"], r["threads"], a.get("median_ms", "-"), a.get("p90_ms", "-"),
                    b.get("median_ms", "-"), b.get("p90_ms", "-"),
                    f"{q['median']:.2f} ({q['p10']:.2f}-{q['p90']:.2f})" if q else "-"])
    md.append(md_table(["model", "variant", "threads", f"{LITERT} median", "p90", f"{TFLRT} median", "p90",
                        "ratio tflite-runtime / ai-edge-litert (p10-p90 of rounds)"], lat))
    md.append("\n## Parity with PyTorch (batch 1, first round's outputs)\n\n")
    par = []
    for r in rows:
        for rt, d in r["runtimes"].items():
            p = d["parity"]
            par.append([r["model"], r["variant"], r["threads"], d["version"], f"{p['max_abs_logit_diff']:.2e}",
                        f"{p['atol']:.0e}", f"{p['top1_agreement'] * p['images']:.0f}/{p['images']}",
                        "-" if "kept_match" not in p else f"{p['kept_match'] * p['images']:.0f}/{p['images']}",
                        "-" if "top1_accuracy" not in p else f"{100 * p['top1_accuracy']:.1f} % (torch {100 * p['torch_top1_accuracy']:.1f} %)",
                        "yes" if p["ok"] else "**NO**"])
    md.append(md_table(["model", "variant", "threads", "interpreter", "max abs logit diff", "tolerance", "same top-1",
                        "same kept tokens", "top-1 vs labels", "parity"], par))
    between = [f"{r['model']}/{r['variant']}: {r['max_abs_logit_diff_between_runtimes']:.2e}"
               for r in rows if "max_abs_logit_diff_between_runtimes" in r]
    if between:
        md.append("\nmax |logit difference| between the two interpreters: " + "; ".join(between) + "\n")
    md.append("\n## XNNPACK (default delegate) coverage, primary subgraph\n\n")
    md.append(md_table(["model", "variant", "interpreter", "nodes delegated"],
                       [[r["model"], r["variant"], rt, _fmt_x(d["xnnpack"])] for r in rows if r["threads"] == rows[0]["threads"]
                        for rt, d in r["runtimes"].items()]))
    md.append("\nWeights: " + "; ".join(f"{m}: {w}" for m, w in data["weights"].items()) + ".\n")
    return "".join(md)


def plot(data: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = data["rows"]
    models = list(dict.fromkeys(r["model"] for r in rows))
    fig, axes = plt.subplots(1, len(models), figsize=(5.5 * len(models), 4), squeeze=False)
    for ax, m in zip(axes[0], models):
        mine = [r for r in rows if r["model"] == m]
        x = np.arange(len(mine))
        for j, (rt, color) in enumerate(((LITERT, "tab:blue"), (TFLRT, "tab:orange"))):
            d = [r["runtimes"].get(rt) for r in mine]
            if not any(d):
                continue
            med = np.array([e["median_ms"] if e else np.nan for e in d])
            p90 = np.array([e["p90_ms"] if e else np.nan for e in d])
            ax.bar(x + (j - 0.5) * 0.38, med, 0.38, yerr=[np.zeros_like(med), p90 - med], capsize=3, color=color, label=rt)
        for xi, r in zip(x, mine):
            q = r.get("ratio_tflrt_over_litert")
            if q:
                top = max(e["p90_ms"] for e in r["runtimes"].values())
                ax.annotate(f"{q['median']:.2f}x", (xi, top), ha="center", va="bottom", fontsize=9)
        ax.set_xticks(x, [f"{r['variant']}\n{r['threads']} thread(s)" for r in mine])
        ax.set(ylabel="median latency (ms), bar to p90", title=m)
        ax.grid(axis="y", alpha=0.3)
        ax.legend()
    fig.suptitle("TFLite interpreters on the same files (ratio: tflite-runtime / ai-edge-litert)")
    save_plot(fig, path)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=[REFERENCE_NAME, "vit_small_patch16_224"])
    p.add_argument("--keep", type=float, default=0.6, help="capacity mode: fraction of patch tokens kept from block 1 on")
    p.add_argument("--images", type=int, default=16, help="digits test images (cycled when timing; parity on all)")
    p.add_argument("--threads", nargs="+", type=int, default=[1])
    p.add_argument("--cpus", default="1", help="taskset -c list for the runner processes ('' = no pinning)")
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--min-runs", type=int, default=20)
    p.add_argument("--min-time", type=float, default=0.5, help="seconds of timed runs per file and round, at least")
    p.add_argument("--timeout", type=float, default=3600, help="seconds per runner process")
    p.add_argument("--litert-python", default=sys.executable)
    p.add_argument("--tflite-runtime-python", default=os.environ.get("VITEDGE_TFLITE_RUNTIME_PYTHON") or DEFAULT_TFLRT_PYTHON)
    p.add_argument("--work", type=Path, default=None, help="keep the exported files and runner plans here")
    p.add_argument("--quick", action="store_true", help="smoke: 4 images, 1 round, 3 timed runs")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args()
    if args.quick:
        args.images, args.rounds = min(args.images, 4), 1
    pythons, skipped = {LITERT: args.litert_python}, None
    if os.path.isfile(args.tflite_runtime_python) and os.access(args.tflite_runtime_python, os.X_OK):
        pythons[TFLRT] = args.tflite_runtime_python
    else:
        skipped = f"no Python at {args.tflite_runtime_python} (create it: `{INSTALL_TFLRT}`)"
        print(f"tflite-runtime side skipped: {skipped}", file=sys.stderr)
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        code = code_version()
        variants = [v for m in args.models for v in export_variants(m, args, work)]
        rows = []
        try:
            for t in args.threads:
                got = measure(variants, pythons, args, work, t)
                rows += summarize(variants, got, work, t)
        except (BenchError, subprocess.TimeoutExpired) as e:
            print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
            return 1
    env = environment()
    env["pinning"] = {"cpus": args.cpus, "prefix": pin_prefix(args.cpus), "runner_threads": args.threads}
    env["code"] = code
    env["interpreters"] = {rt: {"python": pythons[rt], "runner_environment": g["environment"]} for rt, g in got.items()}
    data = {"environment": env, "args": {k: str(v) for k, v in vars(args).items()}, "rounds": args.rounds,
            "images": args.images, "skipped": skipped, "atol": {**ATOL, "other models": ATOL_OTHER},
            "weights": {v["model"]: v["weights"] for v in variants},
            "files": [{k: v[k] for k in ("model", "variant", "file", "capacities", "patches", "depth", "size_mb", "ops",
                                         "xnnpack_host")} for v in variants],
            "rows": rows}
    md = report(data)
    write_results("tflite_runtimes", data, md, args.out)
    plot(data, args.out / "tflite_runtimes.png")
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
