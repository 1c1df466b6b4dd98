"""Remote devices (issue 4): SSH transport overhead and agreement, resume after SIGKILL, and a search
on SPViT's ZCU102 reference table.

    python benchmarks/remote_devices.py              # ~5-10 min on 2 cores
    python benchmarks/remote_devices.py --quick      # smoke run

1. Loopback SSH vs local, same model (the reference architecture, ``vitedge-digits-vit``), same parts,
   same protocol (vitedge's default profile protocol): the device's ``run_plan`` is timed for the
   in-process local device and for a real OpenSSH server on 127.0.0.1 (copy to mktemp, runner, stream,
   read back, clean up), alternating L S L S ...; transport overhead = (ssh - local) / local wall time
   (target < 20 %), plus the one-time probe; agreement = per-point ratio of ssh to local medians
   (median of the ratios, target within +-5 %, and the 10th-90th percentile spread).
2. Resume: ``vitedge profile --device ssh://...`` as a separate client process, SIGKILLed at 5 random
   points of one profile (each session resumed with ``--resume``), then run to completion; rows lost =
   rows saved in the partial file at a kill that are missing or changed in the final table (target 0).
3. ``vitedge search`` on the SPViT Table 2 ZCU102 table for DeiT-S at the latency limits 24, 20 and 16 ms,
   the smallest the table covers, and 14 ms (below the table's coverage: refused), in threshold mode
   (kept tokens vary per image; candidates must keep every calibration image inside the table) and in
   capacity mode (exactly K tokens per block); schedules printed.

Writes results/remote_devices.{json,md,png}.
"""
from __future__ import annotations

import argparse
import json
import math
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from _common import RESULTS, environment, md_table, save_plot, write_results

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from _sshd import SSHDUnavailable, start_sshd, stop_sshd  # noqa: E402

from vitedge.context import PROFILE_CONFIG  # noqa: E402
from vitedge.devices import get_device  # noqa: E402
from vitedge.models.reference import ASSET_DIR, REFERENCE_NAME, build_reference  # noqa: E402


def reference_model():
    """The reference architecture; its trained weights when shipped (latency does not depend on them)."""
    import torch

    from vitedge.models.adapter import PrunableViT

    trained = (Path(ASSET_DIR) / "model.safetensors").is_file()
    torch.manual_seed(0)
    return PrunableViT(build_reference(weights=trained)), trained


# ------------------------------------------------------------------------------------------ part 1
def overhead_and_agreement(server, kh: Path, rounds: int, cfg) -> dict:
    from vitedge.exporters.graphs import export_parts
    from vitedge.profiling import build_plan, token_grid

    model, trained = reference_model()
    local = get_device("local", config=cfg)
    t0 = time.perf_counter()
    ssh = get_device(server.url, config=cfg, **server.settings(kh))
    probe_s = time.perf_counter() - t0
    assert ssh.threads == local.threads, (ssh.threads, local.threads)
    with tempfile.TemporaryDirectory() as work:
        tokens = token_grid(model, "onnxruntime")
        plan = build_plan(model, export_parts(model, work, tokens=tokens), tokens)
        runs = {"local": [], "ssh": []}
        for r in range(rounds):
            for name, dev in (("local", local), ("ssh", ssh)):
                t = time.perf_counter()
                res = dev.run_plan(plan)
                wall = time.perf_counter() - t
                runs[name].append({"wall_s": wall, "medians": {p["name"]: p["median_ms"] for p in res["points"]},
                                   "drift": res["drift"]["max_rel_dev"]})
                print(f"  round {r + 1}/{rounds} {name:5s}: {wall:6.2f} s for {len(plan['points'])} points "
                      f"(reference drift {100 * res['drift']['max_rel_dev']:.1f} %)", flush=True)
    names = [p["name"] for p in plan["points"]]
    med = {k: {n: float(np.median([r["medians"][n] for r in v])) for n in names} for k, v in runs.items()}
    ratios = np.array([med["ssh"][n] / med["local"][n] for n in names])
    round_ratios = [float(np.median([s["medians"][n] / l["medians"][n] for n in names]))
                    for l, s in zip(runs["local"], runs["ssh"])]
    wl, ws = (np.array([r["wall_s"] for r in runs[k]]) for k in ("local", "ssh"))
    pair_overhead = (ws - wl) / wl
    return {
        "model": REFERENCE_NAME, "trained_weights": trained, "points": len(names), "rounds": rounds,
        "protocol": {"warmup": cfg.warmup, "min_runs": cfg.min_runs, "min_time_s": cfg.min_time_s},
        "threads": local.threads, "probe_s": probe_s,
        "wall_local_s": wl.tolist(), "wall_ssh_s": ws.tolist(),
        "overhead_pct_median": 100 * float(np.median(pair_overhead)),
        "overhead_pct_per_round": (100 * pair_overhead).tolist(),
        "overhead_pct_with_probe": 100 * float((np.median(ws) + probe_s - np.median(wl)) / np.median(wl)),
        "overhead_abs_s_median": float(np.median(ws - wl)),
        "ratio_median": float(np.median(ratios)), "ratio_p10": float(np.percentile(ratios, 10)),
        "ratio_p90": float(np.percentile(ratios, 90)), "ratio_min": float(ratios.min()), "ratio_max": float(ratios.max()),
        "round_ratio_medians": round_ratios,
        "ratios_by_part": {part: float(np.median([med["ssh"][n] / med["local"][n] for n in names if n.startswith(part)]))
                           for part in sorted({n.split("@")[0] for n in names})},
        "per_point": {n: {"local_ms": med["local"][n], "ssh_ms": med["ssh"][n]} for n in names},
        "drift_local": [r["drift"] for r in runs["local"]], "drift_ssh": [r["drift"] for r in runs["ssh"]],
    }


# ------------------------------------------------------------------------------------------ part 2
def _rows(path: Path) -> dict:
    lines = path.read_text().splitlines()[1:] if path.exists() else []
    out = {}
    for ln in lines:
        try:
            r = json.loads(ln)["row"]
        except (ValueError, KeyError):
            continue
        out[(r["tags"]["part"], r["tags"].get("tokens"))] = r["samples_ms"]
    return out


def _table_rows(table: dict) -> dict:
    out = {(name, None): v["samples_ms"] for name, v in table["fixed"].items()}
    for part, entry in table["parts"].items():
        for n, samples in entry["samples_ms"].items():
            out[(part, int(n))] = samples
    return out


def resume_kills(server, kh: Path, kills: int, seed: int, work: Path, quick: bool) -> dict:
    from safetensors.torch import save_file

    model, trained = reference_model()
    ckpt = work / "ref.safetensors"
    save_file(model.vit.state_dict(), str(ckpt))
    out, partial = work / "table.json", work / "table.json.partial.jsonl"
    knobs = ["--warmup", "1", "--runs", "3", "--min-time", "0.01"] if quick else []
    base = [sys.executable, "-m", "vitedge.cli.main", "profile", "--checkpoint", str(ckpt), "--quiet", "--no-cache",
            "--cache-dir", str(work / "cache"), *knobs, *server.cli_options(kh), "-o", str(out)]
    rng = random.Random(seed)
    total = None
    sessions, lost_all = [], []
    saved_at_kills = {}
    for k in range(kills + 1):
        cmd = base + (["--resume"] if k else [])
        before = len(_rows(partial))
        t0 = time.time()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        killed = False
        if k < kills:
            # a random moment after this session has added a few rows (so each kill lands mid-profile)
            expected_left = (total or 261) - before
            target = before + rng.randint(1, max(2, expected_left // (kills - k + 1)))
            while proc.poll() is None:
                if len(_rows(partial)) >= target:
                    time.sleep(rng.uniform(0, 0.2))
                    proc.send_signal(signal.SIGKILL)
                    killed = True
                    break
                time.sleep(0.005)
        out_s, err_s = proc.communicate()
        if total is None and partial.exists():
            total = json.loads(partial.read_text().splitlines()[0]).get("points")
        rows = _rows(partial)
        if killed:
            saved_at_kills[k] = dict(rows)
        sessions.append({"session": k + 1, "killed": killed, "returncode": proc.returncode, "rows_before": before,
                         "rows_after": len(rows) if partial.exists() else None, "seconds": round(time.time() - t0, 2)})
        print(f"  session {k + 1}: {'SIGKILL' if killed else 'finished'} (rc {proc.returncode}), rows saved "
              f"{before} -> {len(rows) if partial.exists() else 'done'}", flush=True)
        if not killed:
            if proc.returncode != 0:
                raise RuntimeError(f"final resume failed: {err_s[-2000:]}")
            break
    table = json.loads(out.read_text())
    final = _table_rows(table)
    for k, rows in saved_at_kills.items():
        lost = [f"{p}@{n}" for (p, n), samples in rows.items() if final.get((p, n)) != samples]
        lost_all.append(len(lost))
    measured_points = table["meta"]["points"]
    return {"kills": len(saved_at_kills), "sessions": sessions, "rows_lost_per_kill": lost_all,
            "rows_lost_total": int(sum(lost_all)), "points": measured_points,
            "resumed_points_final": table["meta"].get("resumed_points"), "partial_left": partial.exists(),
            "protocol": "quick (--warmup 1 --runs 3 --min-time 0.01)" if quick else "vitedge default",
            "trained_weights": trained, "seed": seed}


# ------------------------------------------------------------------------------------------ part 3
def spvit_search(limits: list, calib_limit: int, work: Path, mode: str) -> dict:
    from vitedge.context import Context, Options
    from vitedge.search import BudgetUnreachableError
    from vitedge.search.reference import ReferencePlanner

    logs = []
    ctx = Context(Options(model="deit_small_patch16_224", calib_limit=calib_limit, cache_dir=str(work / "cache"),
                          progress=False), log=logs.append)
    table = ctx.latency_table("zcu102-spvit-deit-s", allow_reference=True)
    cal = ctx.calibration()
    planner = ReferencePlanner(cal, table, mode=mode, min_patch_tokens=ctx.model.min_patch_tokens)
    out = {"mode": mode, "model": "deit_small_patch16_224 (random weights: no download here; latency is what the table says, "
                    "the Fisher/attention statistics are a random model's)",
           "calibration_images": len(ctx.images), "table": table.name, "source": table.citation(),
           "note": table.note(), "unpruned_ms": planner.full, "smallest_covered_ms": planner.min_budget,
           "covered_fraction": float(planner.covered.mean()), "schedules": []}
    for limit in limits:  # "min": the smallest budget the table covers, rounded up to 0.01 ms
        limit = math.ceil(planner.min_budget * 100) / 100 if limit == "min" else float(limit)
        try:
            s = planner.solve(limit) if limit < planner.full else planner.keep_all(limit)
        except BudgetUnreachableError as e:
            print(f"  limit {limit:g} ms: refused: {e}", flush=True)
            out["schedules"].append({"limit_ms": limit, "refused": str(e)})
            continue
        lines = planner.explain(s)
        print(f"  limit {limit:g} ms: predicted {s.predicted:.3f} ms\n    " + "\n    ".join(lines), flush=True)
        out["schedules"].append({"limit_ms": limit, "predicted_ms": s.predicted, "candidates": s.candidates,
                                 "thresholds": s.thresholds, "capacities": s.capacities,
                                 "mean_kept_patches": s.predicted_kept,
                                 "fisher_loss": s.fisher_loss, "explain": lines})
    return out


# ------------------------------------------------------------------------------------------ main
def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--kills", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--limits", nargs="+", default=["24", "20", "16", "min", "14"],
                   help="latency limits (ms) for the DeiT-S search; 'min': the smallest the table covers")
    p.add_argument("--calib-limit", type=int, default=16)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--render", type=Path, default=None, help="only rewrite the .md/.png from this results JSON")
    args = p.parse_args()
    if args.render:
        return render(json.loads(args.render.read_text()), args.out)
    from dataclasses import replace

    cfg = replace(PROFILE_CONFIG, min_runs=3, warmup=1, min_time_s=0.0) if args.quick else PROFILE_CONFIG
    load_start = list(__import__("os").getloadavg())
    with tempfile.TemporaryDirectory(prefix="vitedge-bench-remote-") as tmp:
        tmp = Path(tmp)
        try:
            (tmp / "sshd").mkdir()
            server = start_sshd(tmp / "sshd")
        except SSHDUnavailable as e:
            sys.exit(f"cannot run the SSH parts: {e}")
        try:
            kh = server.known_hosts(tmp / "known_hosts")
            print("1. loopback SSH vs local", flush=True)
            part1 = overhead_and_agreement(server, kh, args.rounds, cfg)
            print(f"   overhead {part1['overhead_pct_median']:+.1f} % (probe {part1['probe_s']:.2f} s), "
                  f"median ratio {part1['ratio_median']:.4f} (p10-p90 {part1['ratio_p10']:.3f}-{part1['ratio_p90']:.3f})")
            print("2. resume after SIGKILL of the client", flush=True)
            (tmp / "resume").mkdir()
            part2 = resume_kills(server, kh, args.kills, args.seed, tmp / "resume", args.quick)
            print(f"   rows lost: {part2['rows_lost_total']} over {part2['kills']} kills")
        finally:
            stop_sshd(server)
        (tmp / "search").mkdir()
        part3 = {}
        for mode in ("threshold", "capacity"):
            print(f"3. search on SPViT's ZCU102 table (DeiT-S), {mode} mode", flush=True)
            part3[mode] = spvit_search(args.limits, args.calib_limit, tmp / "search", mode)

    data = {"environment": environment(), "ssh_vs_local": part1, "resume": part2, "spvit_search": part3,
            "targets": {"overhead_pct": 20, "ratio_within": 0.05, "rows_lost": 0},
            "load_average": {"start": load_start, "end": list(__import__("os").getloadavg()),
                             "note": "1/5/15-min load of this 2-core machine, shared with other jobs while measuring"}}
    render(data, args.out)


def render(data: dict, out: Path) -> None:
    """results/remote_devices.{json,md,png} from the measured data (``--render FILE`` redoes only this)."""
    o, r, part3 = data["ssh_vs_local"], data["resume"], data["spvit_search"]
    md = ["# Remote devices: SSH transport, resume, reference-table search\n",
          f"Machine: {data['environment'].get('cpu_model')} ({data['environment'].get('cpu_count')} cores), "
          f"{data['environment']['date']}; load average at start {data['load_average']['start'][0]:.1f}, at end "
          f"{data['load_average']['end'][0]:.1f} (shared machine).  Model {o['model']} ({'trained' if o['trained_weights'] else 'random'} "
          f"weights; latency does not depend on them), {o['points']} points, {o['threads']} threads, protocol "
          f"warmup {o['protocol']['warmup']} / runs >= {o['protocol']['min_runs']} / >= {o['protocol']['min_time_s']} s.\n",
          "## 1. Loopback SSH vs local (same parts, alternating rounds)\n",
          md_table(["round", "local s", "ssh s", "overhead"],
                   [[i + 1, a, b, f"{100 * (b - a) / a:+.1f} %"] for i, (a, b) in enumerate(zip(o["wall_local_s"], o["wall_ssh_s"]))]),
          f"\nTransport overhead: median {o['overhead_pct_median']:+.1f} % of the profile's device time "
          f"({o['overhead_abs_s_median']:+.2f} s); with the one-time probe ({o['probe_s']:.2f} s): "
          f"{o['overhead_pct_with_probe']:+.1f} %.  Target < 20 %: "
          f"{'met' if o['overhead_pct_median'] < 20 else 'MISSED'} per profile run; "
          f"{'met' if o['overhead_pct_with_probe'] < 20 else 'MISSED'} counting the one-time probe (one ssh connection "
          "that imports the runtime on the device).\n",
          f"\nMedians, ssh / local per point: median ratio {o['ratio_median']:.4f}, p10-p90 {o['ratio_p10']:.3f}-"
          f"{o['ratio_p90']:.3f} (min {o['ratio_min']:.3f}, max {o['ratio_max']:.3f}); per round "
          f"{', '.join(f'{x:.3f}' for x in o['round_ratio_medians'])}; by part "
          f"{', '.join(f'{k} {v:.3f}' for k, v in o['ratios_by_part'].items())}.  Target median within +-5 %: "
          f"{'met' if abs(o['ratio_median'] - 1) <= 0.05 else 'MISSED'}.\n",
          "\n## 2. Resume after SIGKILL of the client (one profile, killed at random points)\n",
          md_table(["session", "killed", "rc", "rows before", "rows after", "s"],
                   [[s["session"], s["killed"], s["returncode"], s["rows_before"], s["rows_after"] if s["rows_after"] is not None else "done",
                     s["seconds"]] for s in r["sessions"]]),
          f"\nKills: {r['kills']}; rows lost: {r['rows_lost_total']} (per kill {r['rows_lost_per_kill']}); final table "
          f"{r['points']} points, {r['resumed_points_final']} of them from the partial file; protocol {r['protocol']}.\n",
          "\n## 3. Search on SPViT Table 2 (ZCU102, DeiT-S)\n",
          f"{part3['threshold']['note']}.  Unpruned (12 blocks at rate 0): {part3['threshold']['unpruned_ms']:.3f} ms.  "
          f"Model: {part3['threshold']['model']}; {part3['threshold']['calibration_images']} calibration images.  "
          "Threshold mode: kept tokens vary per image, and a candidate is used only if it keeps EVERY calibration "
          "image inside the table; capacity mode: exactly K tokens per block (static shapes, as an FPGA wants), "
          "so the rate is exact and every K down to rate 0.5 is available.\n"]
    for mode, res in part3.items():
        md.append(f"\n### {mode} mode: smallest budget the table covers {res['smallest_covered_ms']:.3f} ms "
                  f"({100 * res['covered_fraction']:.0f} % of the candidates inside the table)\n")
        for s in res["schedules"]:
            if "refused" in s:
                md.append(f"\n**Limit {s['limit_ms']:g} ms**: refused -- {s['refused']}\n")
            else:
                md.append(f"\n**Limit {s['limit_ms']:g} ms**: predicted {s['predicted_ms']:.3f} ms\n\n```\n"
                          + "\n".join(s["explain"][1:]) + "\n```\n")
    write_results("remote_devices", data, "".join(md), out)

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 3, figsize=(15, 4))
    pts = o["per_point"]
    x = np.array([v["local_ms"] for v in pts.values()])
    y = np.array([v["ssh_ms"] for v in pts.values()])
    ax[0].loglog(x, y, ".", ms=3)
    lim = [min(x.min(), y.min()) * 0.9, max(x.max(), y.max()) * 1.1]
    ax[0].plot(lim, lim, "k-", lw=0.5)
    ax[0].plot(lim, [v * 1.05 for v in lim], "r--", lw=0.5)
    ax[0].plot(lim, [v * 0.95 for v in lim], "r--", lw=0.5)
    ax[0].set(xlabel="local median (ms)", ylabel="loopback ssh median (ms)",
              title=f"per-point medians (ratio {o['ratio_median']:.3f}; overhead {o['overhead_pct_median']:+.1f} %)")
    ses = r["sessions"]
    ax[1].bar([s["session"] for s in ses], [(s["rows_after"] if s["rows_after"] is not None else r["points"]) for s in ses],
              color=["tab:red" if s["killed"] else "tab:green" for s in ses])
    ax[1].set(xlabel="session (red: SIGKILLed)", ylabel="rows saved", title=f"resume: rows lost {r['rows_lost_total']}")
    for mode, style in (("threshold", "o-"), ("capacity", "s--")):
        for s in part3[mode]["schedules"]:
            if "refused" not in s:
                ax[2].plot(range(1, 13), s["mean_kept_patches"], style, ms=3,
                           label=f"{mode[:3]} {s['limit_ms']:g} ms -> {s['predicted_ms']:.2f}")
    ax[2].axhline(197 * 0.5 - 1, color="gray", ls=":", label="rate 0.5 (table edge)")
    ax[2].set(xlabel="block", ylabel="mean kept patch tokens", title="DeiT-S on SPViT ZCU102 table")
    ax[2].legend(fontsize=7)
    save_plot(fig, out / "remote_devices.png")
    print(f"wrote {out}/remote_devices.json, .md, .png")


if __name__ == "__main__":
    main()
