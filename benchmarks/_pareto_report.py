"""The reporting side of pareto.py: latency at equal accuracy and vitedge's savings (``summarise``), latency at
equal mean kept tokens, the latency table's plot and linearity, and the markdown report.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from _common import md_table
from _methods import latency_at_accuracy, linearity
from vitedge.plots import plot_table


LABELS = {
    "unpruned": "unpruned",
    "random": "random tokens, constant count",
    "topk": "constant Top-K (CLS attn., RCTP baseline)",
    "rctp_flops": "RCTP: Viterbi over FLOPs (threshold)",
    "vitedge_threshold": "vitedge: best measured quality within the budget (threshold)",
    "vitedge_capacity": "vitedge: best measured quality within the budget (capacity)",
    "fisher_threshold": "vitedge --objective fisher: RCTP Fisher-Viterbi over measured latency (threshold)",
    "fisher_capacity": "vitedge --objective fisher: RCTP Fisher-Viterbi over measured latency (capacity)",
    "pomt": "POMT-style: one site, K from latency sweep",
    "tome": "ToMe (from the paper), PyTorch eager, not sort-free",
    "topk_eager": "constant Top-K, PyTorch eager (same-runtime reference for ToMe)",
    "ablation_fisher_block": "normalised FI (fisher_block)",
    "ablation_fisher_raw": "raw FI (fisher_raw)",
    "ablation_cls_attention": "CLS attention (cls_attention)",
}
VITEDGE = ("vitedge_threshold", "vitedge_capacity")
BASELINES = ("topk", "rctp_flops", "pomt", "random", "fisher_threshold", "fisher_capacity")


# ------------------------------------------------------------------------------------------ summary
def summarise(methods: dict, unpruned: dict, vitedge=VITEDGE, baselines=BASELINES, relative: bool = False) -> dict:
    """Latency at equal accuracy (>= unpruned - 1 point) per method and the savings of vitedge."""
    target = unpruned["accuracy"] - 0.01
    x = "relative_latency" if relative else "measured_ms"
    # every curve may fall back to pruning nothing: the unpruned model is a point of each
    at = {m: latency_at_accuracy(pts + [unpruned], target, x=x) for m, pts in methods.items()}
    savings = {}
    for v in vitedge:
        if v not in at or at[v]["latency"] is None:
            continue
        for b in baselines:
            if b in at and at[b]["latency"] is not None:
                savings[f"{v} vs {b}"] = 1 - at[v]["latency"] / at[b]["latency"]
    return {"target_accuracy": target, "latency_at_target": at, "savings": savings,
            "unpruned_latency": unpruned.get(x, 1.0)}


# ------------------------------------------------------------------------------------------ latency table
def table_info(table, path: Path) -> dict:
    """Plot the table (vitedge.plots.plot_table) and say how linear attention + MLP is in n."""
    res = plot_table(table, path)
    n = np.array([m for m in table.parts["mlp"].get("measured_tokens") or table.measured_tokens if m >= 1])
    tot = np.array(table.parts["attention"]["median_ms"])[n - 1] + np.array(table.parts["mlp"]["median_ms"])[n - 1]
    sel = {k: float(np.median(table.parts[k]["median_ms"])) for k in ("selector", "capacity_selector") if k in table.parts}
    return {"plot": path.name, "plateaus": res["plateaus"], "linearity_attention_plus_mlp": linearity(n, tot),
            "measured_tokens": [int(v) for v in n], "attention_plus_mlp_ms": [float(v) for v in tot],
            "selector_median_ms": sel, "fixed_ms": {k: float(v["median_ms"]) for k, v in table.fixed.items()},
            "profile_seconds": table.meta.get("profile_seconds"), "drift": table.drift,
            "device": {k: table.device.get(k) for k in ("name", "runtime", "runtime_version", "threads")}}


# ------------------------------------------------------------------------------------------ relative latency, kept tokens
def relative_summary(out: dict) -> dict:
    """Latency at the accuracy target as a fraction of the same runtime's unpruned latency, for every
    method in every runtime (the only fair way to put ToMe's eager numbers next to exported models)."""
    rows = {}
    for rt, res in out["runtimes"].items():
        s = summarise(res["methods"], res["unpruned"], relative=True)
        for m, v in s["latency_at_target"].items():
            rows[f"{m} ({rt})"] = v
    if "torch_eager" in out:
        for m, v in out["torch_eager"]["summary"]["latency_at_target"].items():
            rows[f"{m} (torch eager)"] = v
    return {"target_accuracy": out["target_accuracy"], "relative_latency_at_target": rows}


def latency_at_kept(pts: list[dict], kept: float) -> float | None:
    xs = sorted((r["mean_kept_avg"], r["measured_ms"]) for r in pts)
    if not xs or kept < xs[0][0] or kept > xs[-1][0]:
        return None
    return float(np.interp(kept, [x[0] for x in xs], [x[1] for x in xs]))


# ------------------------------------------------------------------------------------------ report
def pct(v) -> str:
    return "-" if v is None else f"{100 * v:.1f}"


def fmt_param(r: dict) -> str:
    m = r["method"]
    if m in ("topk", "random", "topk_eager"):
        return f"r={r['param']:.3g}"
    if m == "rctp_flops":
        return f"FLOPs {r['param']:.3f}"
    if m.startswith("vitedge") or m.startswith("ablation"):
        return f"{r['param']:.3f} ms"
    if m == "pomt":
        return f"site {r['site']}, K={r['K']}"
    if m == "tome":
        return f"r={int(r['param'])}"
    return ""


def report(data: dict, args) -> str:
    ref = data.get("reference")
    md = ["# Accuracy vs measured latency (pareto.py)\n\n"]
    env = data["environment"]
    md.append(f"CPU: {env.get('cpu_model')} ({env.get('cpu_count')} cores), threads {data['threads']}, "
              f"onnxruntime {env.get('runtime_version')}, LiteRT {data['runtime_versions'].get('litert')}, torch {env.get('torch')}, "
              f"timm {env.get('timm')}. Command: `{env.get('command')}`. Measured in {args.rounds} interleaved rounds"
              f"{' (QUICK: short protocol, few points; not a result)' if args.quick else ''}.\n")
    if ref:
        md.append(f"\nReference model `{ref['model']}` ({ref['checkpoint']}); test: {ref['test_images']} ({ref['num_test']} images, "
                  f"real labels); calibration: {ref['calibration_images']} ({ref['num_calibration']}). Unpruned top-1 "
                  f"{pct(ref['unpruned_accuracy'])} %, accuracy target (unpruned - 1 point) {pct(ref['target_accuracy'])} %.\n")
        for rt, res in ref["runtimes"].items():
            u = res["unpruned"]
            md.append(f"\n## {rt}: unpruned {u['measured_ms']:.3f} ms (p90 {u['p90_ms']:.3f}; per-round medians "
                      f"{', '.join(f'{v:.3f}' for v in u['round_medians_ms'])})\n\n")
            rows = []
            for m, pts in res["methods"].items():
                for r in sorted(pts, key=lambda r: -r["mean_kept_avg"]):
                    rows.append([LABELS.get(m, m), fmt_param(r), r["measured_ms"], r["p90_ms"], f"{r['relative_latency']:.3f}",
                                 r.get("predicted_ms", "-"), pct(r["accuracy"]), pct(r["agreement"]), f"{r['mean_kept_avg']:.1f}",
                                 " ".join(f"{k:.0f}" for k in r["mean_kept"])])
            md.append(md_table(["method", "setting", "median ms", "p90 ms", "/ unpruned", "table-predicted ms", "top-1 %",
                                "agrees w/ unpruned %", "mean kept", "kept per block"], rows))
            if res.get("not_available"):
                md.append("\nNot in this runtime: " + "; ".join(f"{k}: {v}" for k, v in res["not_available"].items()) + "\n")
            md.append(summary_md(res["summary"], rt, res["table"]))
            t = res["table"]
            lin = t["linearity_attention_plus_mlp"]
            md.append(f"\nLatency table ({t['plot']}): attention + MLP vs n is {linear_words(lin)}: "
                      f"R² = {lin['r2']:.4f}, slope {1000 * lin['slope_ms_per_token']:.2f} µs/token, max residual "
                      f"{100 * lin['max_rel_residual']:.1f} % of the largest latency, largest rise {100 * lin['max_rel_step']:.1f} % at n = {lin['max_step_at_tokens']}; "
                      f"plateaus (within 2 %): {t['plateaus'] or 'none'}; selector medians {t['selector_median_ms']}.\n")
            pk = res["pomt_grid"]["pick"]
            md.append(f"\nPOMT grid: {res['pomt_grid']['points']} (site, K) points; global utility optimum (what POMT deploys): "
                      f"site {pk['site']}, K = {pk['K']}, predicted {pk['predicted_ms']:.3f} ms, calibration top-1 {pct(pk['calib_accuracy'])} %.\n")
            if "ablation" in res:
                md.append("\n### RCTP ablation (Fig. 4): importance criterion, same latency Viterbi (threshold mode)\n\n")
                rows = []
                for imp, pts in res["ablation"].items():
                    for r in pts:
                        rows.append([imp, f"{r['param']:.3f}", r["measured_ms"], r["p90_ms"], pct(r["accuracy"]), pct(r["agreement"]),
                                     f"{r['mean_kept_avg']:.1f}", " ".join(f"{k:.0f}" for k in r["mean_kept"])])
                md.append(md_table(["importance", "budget ms", "median ms", "p90 ms", "top-1 %", "agrees %", "mean kept", "kept per block"], rows))
                s = res["ablation_summary"]
                md.append("\n" + "; ".join(f"{k.replace('ablation_', '')}: {fmt_at(v)}" for k, v in s["latency_at_target"].items()) + "\n")
                md.append(ablation_verdict(res["ablation"], ref["target_accuracy"]) + "\n")
        if "torch_eager" in ref:
            md.append(eager_md(ref["torch_eager"]))
            if data.get("remeasured", {}).get("torch_eager"):
                md.append(remeasured_note(data["remeasured"]["torch_eager"]))
        rs = ref["relative_summary"]
        md.append(f"\n## Latency at the accuracy target ({pct(rs['target_accuracy'])} %), relative to the same runtime's unpruned model\n\n")
        md.append(md_table(["method (runtime)", "latency / unpruned", "how"],
                           [[k, "-" if v["latency"] is None else f"{v['latency']:.3f}", v["how"]] for k, v in rs["relative_latency_at_target"].items()]))
    if data.get("large"):
        lg = data["large"]
        md.append(f"\n## Larger models, latency only ({lg['note']}; {lg['cuda']})\n")
        for name, r in lg["models"].items():
            md.append(f"\n### {name}: unpruned {r['unpruned_ms']:.2f} ms, P = {r['num_patches']}, {r['depth']} blocks\n\n")
            rows = [[LABELS.get(f, f), f"{x['target_fraction']:.2f}", f"{x['mean_kept_avg']:.1f}", x["measured_ms"], x["p90_ms"],
                     x.get("predicted_ms", "-"), fmt_param(x) if f == "pomt" else ""] for f, pts in r["families"].items() for x in pts]
            md.append(md_table(["family", "kept target / P", "measured mean kept", "median ms", "p90 ms", "table-predicted ms", "note"], rows))
            at = r["latency_at_mean_kept"]
            fr = list(next(iter(at.values())).keys()) if at else []
            md.append("\nLatency (ms, interpolated) at equal mean kept tokens:\n\n")
            md.append(md_table(["family", *[f"kept = {f} P" for f in fr]],
                               [[LABELS.get(f, f), *["-" if v[k] is None else f"{v[k]:.2f}" for k in fr]] for f, v in at.items()]))
            lin = r["table"]["linearity_attention_plus_mlp"]
            md.append(f"\nTable ({r['table']['plot']}): attention + MLP linear fit R² = {lin['r2']:.4f}, max residual "
                      f"{100 * lin['max_rel_residual']:.1f} % of the largest latency, largest rise {100 * lin['max_rel_step']:.1f} % at n = {lin['max_step_at_tokens']}; "
                      f"plateaus: {r['table']['plateaus'] or 'none'}.\n")
    return "".join(md)


EAGER_HEADING = "\n## PyTorch eager"


def eager_md(e: dict) -> str:
    """The PyTorch eager section (ToMe, constant Top-K, unpruned), as in pareto.md and tome.md."""
    head = (f"{EAGER_HEADING} ({e['threads']} threads, torch {e['torch']}): ToMe (written from the paper, benchmarks/_tome.py; "
            f"proportional attention {'on' if e['tome_prop_attn'] else 'off'}) — not exportable without sort\n\n"
            f"unpruned eager {e['unpruned']['measured_ms']:.3f} ms (p90 {e['unpruned']['p90_ms']:.3f})\n\n")
    rows = [[LABELS.get(m, m), fmt_param(r), r["measured_ms"], r["p90_ms"], f"{r['relative_latency']:.3f}", pct(r["accuracy"]),
             pct(r["agreement"]), f"{r['mean_kept_avg']:.1f}", " ".join(f"{k:.0f}" for k in r["mean_kept"])]
            for m, pts in e["methods"].items() for r in pts]
    return head + md_table(["method", "setting", "median ms", "p90 ms", "/ eager unpruned", "top-1 %", "agrees %", "mean kept",
                            "kept per block"], rows)


def remeasured_note(again: dict) -> str:
    """Says that the PyTorch eager section was re-measured on its own (``pareto.py --tome-only``), when and how."""
    return (f"\nThis section was re-measured on its own ({again['environment']['date']}, "
            f"`{again['environment']['command']}`): {again['timing_note']}.\n")


def splice_section(md: str, heading: str, section: str) -> str:
    """``md`` with the section that starts at ``heading`` (up to the next ``## `` heading) replaced by
    ``section``, or ``section`` appended when there is none."""
    start = md.find(heading)
    if start < 0:
        return md + section
    end = md.find("\n## ", start + len(heading))
    return md[:start] + section + (md[end:] if end >= 0 else "")


def fmt_at(v: dict) -> str:
    return "not reached" if v["latency"] is None else f"{v['latency']:.3f} ({v['how']})"


def linear_words(lin: dict) -> str:
    return "nearly linear" if lin["r2"] >= 0.98 and lin["max_rel_residual"] < 0.05 else "not linear"


def summary_md(s: dict, rt: str, table: dict | None = None) -> str:
    md = [f"\n**Latency at equal accuracy ({rt}; top-1 >= {pct(s['target_accuracy'])} %, interpolated on each Pareto front):** "]
    md.append("; ".join(f"{LABELS.get(k, k)}: {fmt_at(v)}" for k, v in s["latency_at_target"].items()) + ".\n\n")
    if s["savings"]:
        md.append(md_table(["vitedge vs baseline", "latency saved at equal accuracy"],
                           [[k, f"{100 * v:+.1f} %"] for k, v in s["savings"].items()]))
    for v, b, goal in (("vitedge_threshold", "rctp_flops", 0.09), ("vitedge_threshold", "topk", 0.15),
                       ("vitedge_capacity", "rctp_flops", 0.09), ("vitedge_capacity", "topk", 0.15),
                       ("vitedge_threshold", "pomt", 0.0), ("vitedge_capacity", "pomt", 0.0)):
        key = f"{v} vs {b}"
        if key in s["savings"]:
            got = s["savings"][key]
            md.append(f"\n- {key}: {100 * got:+.1f} % (goal >= {100 * goal:.0f} %): "
                      + ("met" if got >= goal else f"short by {100 * (goal - got):.1f} points") + "\n")
    short = [k for k, g in (("vitedge_threshold vs rctp_flops", 0.09), ("vitedge_threshold vs topk", 0.15))
             if k in s["savings"] and s["savings"][k] < g]
    if short and table is not None:
        lin = table["linearity_attention_plus_mlp"]
        md.append(f"\nWhy short: on this device the block cost is {linear_words(lin)} in the token count (attention + MLP: "
                  f"R² = {lin['r2']:.4f} against a straight line, max residual {100 * lin['max_rel_residual']:.1f} % of the largest latency, "
                  f"plateaus {table['plateaus'] or 'none'}), so a latency cost ranks the candidates almost as FLOPs do and "
                  "there are few plateaus/cliffs to exploit; the selector costs "
                  f"{table['selector_median_ms']} ms per block, which a FLOPs model ignores.\n")
    return "".join(md)


def ablation_verdict(abl: dict, target: float) -> str:
    at = {k: latency_at_accuracy(v, target)["latency"] for k, v in abl.items()}
    ok = {k: v for k, v in at.items() if v is not None}
    if not ok:
        return "No importance criterion reaches the accuracy target below the unpruned latency."
    best = min(ok, key=ok.get)
    others = ", ".join(f"{k} {'not reached' if v is None else f'{v:.3f} ms'}" for k, v in at.items() if k != best)
    return f"Winner at the accuracy target: **{best}** ({ok[best]:.3f} ms); {others}."
