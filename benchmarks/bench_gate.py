"""The latency gate (`vitedge bench`): false alarms, sensitivity, and the time one gate run takes.

    python benchmarks/bench_gate.py                 # reference model, 20 repetitions
    python benchmarks/bench_gate.py --reps 3        # smoke run

On the reference model's exports (this machine's CPU, ONNX Runtime):
  * unpruned: ``vitedge export --budget-ms 100000`` (every token kept);
  * pruned: ``vitedge export --budget-ms B`` with B = 70 % of the unpruned median (as in .ci/run);
  * slowed: the pruned schedule with one (or two) more blocks keeping every token, the variant whose
    slow-down, measured by a long interleaved run (the ground truth), is the smallest >= 5 %.

(1) False alarms: the pruned model against an identical copy, ``--reps`` gate runs while a busy-loop
    process loads one core (started with an argument list, self-terminating, killed after).
(2) Sensitivity: the slowed model (new) against the pruned one (base), ``--reps`` gate runs.
(3) Time of one gate run with default settings (CLI wall clock, Python start-up included).
Each gate configuration is run at --max-regression 5 % (the default) and 2 %, with ``--threads``
(default 1, what docs/latency-gate.md recommends on shared machines) and, for (1), also with all
cores (the device default). Repetitions of the configurations are interleaved.

Writes benchmarks/results/bench_gate.{json,md,png}.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from _common import RESULTS, environment, md_table, save_plot, write_results
from vitedge.bench import BenchSettings, Gate

CLI = [sys.executable, "-m", "vitedge.cli.main"]


def sh(args: list, **kw) -> subprocess.CompletedProcess:
    print("$", " ".join(str(a) for a in args), flush=True)
    return subprocess.run([str(a) for a in args], check=True, **kw)


def exports(work: Path, threads: int, checkpoint: str | None, cache: str | None, fraction: float) -> dict:
    """Unpruned + pruned (``fraction`` of the unpruned median as budget) exports, and their reports."""
    extra = (["--checkpoint", checkpoint] if checkpoint else []) + (["--cache-dir", cache] if cache else [])
    common = ["--quiet", "--threads", str(threads), *extra]
    if not (work / "unpruned" / "model.onnx").is_file():
        sh([*CLI, "export", *common, "--budget-ms", "100000", "-o", work / "unpruned"])
    unpruned = json.loads((work / "unpruned" / "report.json").read_text())
    budget = round(fraction * unpruned["unpruned_ms"]["median"], 4)
    if not (work / "pruned" / "model.onnx").is_file():
        sh([*CLI, "export", *common, "--budget-ms", str(budget), "-o", work / "pruned"])
    pruned = json.loads((work / "pruned" / "report.json").read_text())
    return {"budget_ms": pruned["budget_ms"], "unpruned": unpruned, "pruned": pruned}


def slowed_variants(work: Path, checkpoint: str | None, blocks_at_once: int) -> list[dict]:
    """The pruned schedule with ``blocks_at_once`` adjacent pruning blocks keeping every token (ONNX)."""
    from vitedge.exporters.graphs import export_pruned
    from vitedge.models.loading import load_prunable
    from vitedge.schedule import Schedule

    sched = Schedule.load(work / "pruned" / "schedule.json")
    model = load_prunable(None, checkpoint=checkpoint)
    pruning = [l for l, t in enumerate(sched.thresholds) if t is not None]
    sets = [list(range(l, l + blocks_at_once)) for l in pruning if l + blocks_at_once - 1 in pruning]
    out = []
    for keep in sets:
        path = work / f"slowed_keep{'_'.join(map(str, keep))}.onnx"
        if not path.is_file():
            model.set_thresholds([None if l in keep else t for l, t in enumerate(sched.thresholds)])
            export_pruned(model, path)
        out.append({"keep_all_in_blocks": keep, "path": path})
    return out


def gate(new: Path, base: Path, **kw) -> dict:
    """One gate run (the library behind `vitedge bench NEW --against BASE`); a compact record."""
    t = time.perf_counter()
    r = Gate(new, BenchSettings(**kw), against=base).run()
    c = next(c for c in r["checks"] if c["name"] in ("regression", "speedup"))
    return {"verdict": r["verdict"], "exit_code": r["exit_code"], "ratio": c["values"]["ratio"],
            "ci": c["values"]["ci"], "pairs": c["values"]["pairs"], "ratio_cv": c["values"]["ratio_cv"],
            "new_median_ms": r["new"]["stats"]["median_ms"], "base_median_ms": r["base"]["stats"]["median_ms"],
            "seconds": time.perf_counter() - t}


class BusyCore:
    """A process spinning on one core for at most ``limit_s`` (it stops itself), killed on exit."""

    def __init__(self, limit_s: float):
        self.limit_s = limit_s

    def __enter__(self):
        code = f"import time\nend = time.time() + {self.limit_s}\nwhile time.time() < end:\n    pass\n"
        self.proc = subprocess.Popen([sys.executable, "-c", code])
        return self

    def __exit__(self, *exc):
        self.proc.kill()
        self.proc.wait(timeout=10)


def loadavg() -> list:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def summarize(runs: list[dict]) -> dict:
    v = [r["verdict"] for r in runs]
    return {"n": len(runs), "pass": v.count("pass"), "fail": v.count("fail"), "inconclusive": v.count("inconclusive"),
            "unstable": v.count("unstable"), "median_ratio": float(np.median([r["ratio"] for r in runs])),
            "median_ci_halfwidth": float(np.median([(r["ci"][1] - r["ci"][0]) / 2 for r in runs])),
            "median_pairs": float(np.median([r["pairs"] for r in runs])),
            "median_seconds": float(np.median([r["seconds"] for r in runs])),
            "max_seconds": float(max(r["seconds"] for r in runs))}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reps", type=int, default=20)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--checkpoint", default=None, help="reference-architecture weights (default: the shipped ones)")
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--work", type=Path, default=Path.home() / ".cache" / "vitedge" / "bench_gate")
    p.add_argument("--fraction", type=float, default=0.7, help="pruned budget / unpruned median (as .ci/run)")
    p.add_argument("--truth-pairs", type=int, default=100, help="pairs of the ground-truth A/B runs")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    t_start = time.time()
    ex = exports(args.work, args.threads, args.checkpoint, args.cache_dir, args.fraction)
    unpruned, pruned = args.work / "unpruned" / "model.onnx", args.work / "pruned" / "model.onnx"
    copy = args.work / "pruned_copy.onnx"
    shutil.copy(pruned, copy)

    # ground truth: long interleaved runs of each slowed variant against the pruned model
    truth_kw = dict(threads=args.threads, rounds=args.truth_pairs, max_rounds=args.truth_pairs)
    variants = []
    for blocks_at_once in (1, 2):  # one more block keeping its tokens; two if none is >= 5 % slower
        for v in slowed_variants(args.work, args.checkpoint, blocks_at_once):
            v.update(gate(v["path"], pruned, **truth_kw))
            variants.append(v)
            print(f"truth: keep all tokens in blocks {v['keep_all_in_blocks']}: x{v['ratio']:.4f} "
                  f"CI [{v['ci'][0]:.4f}, {v['ci'][1]:.4f}]", flush=True)
        if any(v["ratio"] >= 1.05 for v in variants):
            break
    ok = [v for v in variants if v["ratio"] >= 1.05]
    slowed = min(ok, key=lambda v: v["ratio"]) if ok else max(variants, key=lambda v: v["ratio"])

    configs = {  # name -> (new, base, settings, busy core)
        "identical, 5 %": (pruned, copy, dict(threads=args.threads), True),
        "identical, 2 %": (pruned, copy, dict(threads=args.threads, max_regression=0.02), True),
        "identical, 5 %, all cores": (pruned, copy, dict(threads=0), True),
        "slowed, 5 %": (slowed["path"], pruned, dict(threads=args.threads), False),
        "slowed, 2 %": (slowed["path"], pruned, dict(threads=args.threads, max_regression=0.02), False),
    }
    runs: dict[str, list] = {k: [] for k in configs}
    load: dict[str, list] = {k: [] for k in configs}
    for rep in range(args.reps):
        for name, (new, base, kw, busy) in configs.items():
            if busy:
                with BusyCore(limit_s=600):
                    time.sleep(0.2)
                    r = gate(new, base, **kw)
            else:
                r = gate(new, base, **kw)
            runs[name].append(r)
            load[name].append(loadavg())
            print(f"[{rep + 1}/{args.reps}] {name:<28} {r['verdict']:<12} x{r['ratio']:.4f} "
                  f"CI [{r['ci'][0]:.4f}, {r['ci'][1]:.4f}] {r['pairs']} pairs {r['seconds']:.1f} s", flush=True)

    # (3) one gate run with default settings, as CI runs it (CLI, Python start-up included)
    timing = []
    for _ in range(3):
        t = time.perf_counter()
        proc = subprocess.run([*CLI, "bench", str(pruned), "--against", str(unpruned), "--quiet", "--json"],
                              capture_output=True, text=True)
        wall = time.perf_counter() - t
        res = json.loads(proc.stdout) if proc.stdout.strip().startswith("{") else {}
        timing.append({"wall_s": wall, "exit_code": proc.returncode, "in_process_s": res.get("seconds"),
                       "pairs": (res.get("checks") or [{}])[0].get("values", {}).get("pairs")})
    t = time.perf_counter()
    subprocess.run([*CLI, "--help"], capture_output=True, check=True)
    startup = time.perf_counter() - t

    summary = {k: summarize(v) for k, v in runs.items()}
    data = {"environment": environment(), "threads": args.threads, "reps": args.reps,
            "budget_ms": ex["budget_ms"], "unpruned_ms": ex["unpruned"]["unpruned_ms"],
            "pruned_measured_ms": ex["pruned"]["measured_ms"], "pruned_kept": [
                round(b["mean_kept_tokens"], 1) for b in ex["pruned"]["schedule"]["blocks"]],
            "variants": [{k: (str(x) if isinstance(x, Path) else x) for k, x in v.items()} for v in variants],
            "slowed": {"keep_all_in_blocks": slowed["keep_all_in_blocks"], "true_ratio": slowed["ratio"],
                       "true_ci": slowed["ci"], "truth_pairs": args.truth_pairs},
            "summary": summary, "runs": runs, "loadavg": load, "timing_default_gate": timing,
            "cli_startup_s": startup, "total_s": time.time() - t_start}

    rows = []
    for name, s in summary.items():
        rows.append([name, f"{s['pass']}/{s['n']}", f"{s['fail']}/{s['n']}", f"{s['inconclusive'] + s['unstable']}/{s['n']}",
                     f"{s['median_ratio']:.4f}", f"±{100 * s['median_ci_halfwidth']:.2f} %", f"{s['median_pairs']:.0f}",
                     f"{s['median_seconds']:.1f} s (max {s['max_seconds']:.1f})"])
    tim = [[f"{x['wall_s']:.1f} s", f"{x['in_process_s']}", x["pairs"], x["exit_code"]] for x in timing]
    env = data["environment"]
    md = (f"# Latency gate (`vitedge bench --against`): false alarms, sensitivity, time\n\n"
          f"Reference model; unpruned {ex['unpruned']['unpruned_ms']['median']:.3f} ms, pruned export at a "
          f"{ex['budget_ms']:.4f} ms budget ({100 * args.fraction:g} %) measured {ex['pruned']['measured_ms']['median']:.3f} ms, "
          f"mean kept tokens per block {data['pruned_kept']}. {env.get('cpu_model')}, {env.get('cpu_count')} CPUs, "
          f"ONNX Runtime {env.get('runtime_version')}, `--threads {args.threads}` unless 'all cores'. "
          f"Load average during the runs: {min(min(l[0] for l in v) for v in load.values()):.1f}-"
          f"{max(max(l[0] for l in v) for v in load.values()):.1f} (other jobs shared this machine).\n\n"
          f"Slowed model: the pruned schedule keeping every token in block(s) {slowed['keep_all_in_blocks']}; "
          f"true slow-down x{slowed['ratio']:.4f} (CI [{slowed['ci'][0]:.4f}, {slowed['ci'][1]:.4f}], "
          f"{args.truth_pairs} interleaved pairs). Candidates: "
          + ", ".join(f"{v['keep_all_in_blocks']}: x{v['ratio']:.3f}" for v in variants) + ".\n\n"
          "'identical' runs had a busy-loop process on one core. pass = exit 0, fail = exit 1 (regression), "
          "inconclusive = exit 3. A false alarm is anything but pass on 'identical'; a catch is fail on 'slowed'.\n\n"
          + md_table(["gate", "pass", "fail (regression)", "inconclusive", "median ratio", "median CI half-width",
                      "median pairs", "time per gate"], rows)
          + "\n## One gate run with default settings (`vitedge bench pruned --against unpruned`, CLI)\n\n"
          + md_table(["wall clock", "in-process s", "pairs", "exit"], tim)
          + f"\nPython start-up of the `vitedge` CLI alone (`vitedge --help`): {startup:.1f} s.\n")
    write_results("bench_gate", data, md, args.out)
    plot(runs, slowed["ratio"], args.out / "bench_gate.png")
    print(md)


def plot(runs: dict, true_slow: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 4.8))
    colors = {"pass": "tab:green", "fail": "tab:red", "inconclusive": "tab:orange", "unstable": "tab:purple"}
    for i, (name, rs) in enumerate(runs.items()):
        for j, r in enumerate(rs):
            x = i + (j - len(rs) / 2) * 0.6 / max(len(rs), 1)
            ax.plot([x, x], r["ci"], color=colors[r["verdict"]], lw=1.5)
            ax.plot(x, r["ratio"], "o", color=colors[r["verdict"]], ms=3)
    for y, ls, lab in ((1.0, "-", "1 (identical)"), (1.02, ":", "threshold 2 %"), (1.05, "--", "threshold 5 %"),
                       (true_slow, "-.", f"true slow-down x{true_slow:.3f}")):
        ax.axhline(y, color="gray", ls=ls, lw=0.8, label=lab)
    ax.set_xticks(range(len(runs)), list(runs), rotation=12, fontsize=8)
    ax.set_ylabel("ratio new/base, 95 % CI")
    ax.set_title("vitedge bench --against: each bar one gate run (green pass, red regression, orange inconclusive)")
    ax.legend(fontsize=7, loc="upper left")
    save_plot(fig, path)


if __name__ == "__main__":
    main()
