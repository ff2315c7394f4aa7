"""Run every zlab benchmark and write the results table: `python benchmarks/run.py [--quick] [--out FILE]`.

Each row is one figure for zlab next to its baseline measured in the same run, with the target and
whether zlab met it ("missed" rows are reported, never tuned away). Sections:

1. sweep wall time against the ideal ceil(N/C)·L           (bench_sweep)
2. polls per image and completion-detection lag          (bench_sweep)
3. the naive hand-written loop                           (bench_sweep)
4. contact sheet against a matplotlib grid               (bench_sheet)
5. rerunning a finished sweep                            (bench_sweep)
6. synthetic backend speed and client overhead           (bench_backend)
7. polling under every queue regime, simulated and on the local server (bench_polling), with the
   automatic concurrency beside concurrency = capacity and all queued, and auto at 2, 8, 32 slots
8. scale: a long sweep at zero latency, time and memory per 1,000 cells; the gallery's open time (bench_scale)

`--quick` runs smaller versions of everything (about a minute); the full run takes a few minutes.
See benchmarks/README.md for what each row measures and how.
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # the bench_* modules sit beside this file

import bench_backend  # noqa: E402
import bench_polling  # noqa: E402
import bench_scale  # noqa: E402
import bench_sheet  # noqa: E402
import bench_sweep  # noqa: E402

SECTIONS = {1: "sweep vs ideal", 2: "polling", 3: "naive loop", 4: "contact sheet", 5: "rerun", 6: "backend & overhead",
            7: "polling regimes", 8: "scale"}


def machine() -> dict[str, str]:
    """CPU model, cores, Python, OS and the zlab commit, for the report's header."""
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=HERE, capture_output=True, text=True,
                                timeout=10).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        commit = "unknown"
    return {
        "cpu": cpu,
        "cores": str(os.cpu_count()),
        "python": platform.python_version(),
        "os": f"{platform.system()} {platform.release()}",
        "commit": commit,
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }


def _num(value: Any) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "—"
        return f"{value:g}" if abs(value) >= 1e-3 or value == 0 else f"{value:.2e}"
    return str(value)


def _verdict(met: bool | None) -> str:
    return "—" if met is None else "met" if met else "**missed**"


def table_rows(rows: list[dict[str, Any]]) -> list[list[str]]:
    return [[str(r["section"]), r["figure"], _num(r["zlab"]), _num(r["baseline"]), r["unit"], str(r["ratio"]),
             r["target"], _verdict(r["met"]).strip("*"), r.get("notes", "")] for r in rows]


HEADER = ["#", "figure", "zlab", "baseline", "unit", "ratio", "target", "result", "notes"]


def print_table(rows: list[dict[str, Any]]) -> None:
    body = [[c for c in r[:8]] for r in table_rows(rows)]
    widths = [max(len(x[i]) for x in [HEADER[:8], *body]) for i in range(8)]
    for line in [HEADER[:8], ["-" * w for w in widths], *body]:
        print("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip())


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|")


def markdown(rows: list[dict[str, Any]], contenders: list[bench_sweep.Outcome], settings: dict[str, Any],
             info: dict[str, str], quick: bool, took_s: float, extra: Sequence[str] = ()) -> str:
    ideal, latency = settings["ideal_s"], settings["latency_s"]
    out = [
        "# zlab benchmark results",
        "",
        f"Machine: {info['cpu']}, {info['cores']} cores; Python {info['python']}; {info['os']}.  ",
        f"Date: {info['date']}; zlab commit {info['commit']}; {'quick' if quick else 'full'} run, "
        f"{took_s:.0f} s in all.  ",
        f"Command: `python benchmarks/run.py{' --quick' if quick else ''}` (what each row means: "
        "[README.md](README.md)).",
        "",
        f"Sweep settings: {settings['cells']} cells of {settings['size']}, local server capacity "
        f"C={settings['capacity']}, fixed latency L={latency:g} s, ideal ceil(N/C)·L = {ideal:g} s. "
        "The server runs in its own process; every contender downloads and saves every image.",
        "",
        "| " + " | ".join(HEADER) + " |",
        "|" + "|".join("---" for _ in HEADER) + "|",
    ]
    for r, cells in zip(rows, table_rows(rows), strict=True):
        cells[7] = _verdict(r["met"])
        out.append("| " + " | ".join(_md_cell(c) for c in cells) + " |")
    missed = [r for r in rows if r["met"] is False]
    out += ["", "## Targets missed", ""]
    out += [f"- {r['figure']}: zlab {_num(r['zlab'])} {r['unit']}, target {r['target']}; {r['ratio']}."
            for r in missed] or ["None."]
    out += [
        "",
        "## Every polling contender (sections 1–3)",
        "",
        "Lag: time from the server finishing a job to the client holding the /result answer that says "
        "`succeeded` (server `finished_mono` vs client `time.monotonic()`).",
        "",
        "| contender | wall s | × ideal | polls/image | calls (submit/status/result/file) | median lag ms "
        "| % of L | p90 lag ms | max lag ms |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for c in contenders:
        calls = "/".join(str(c.calls.get(k, 0)) for k in ("submit", "status", "result", "file"))
        lag = [_num(round(x * 1000, 1)) if not math.isnan(x) else "—" for x in (c.median_lag, c.p90_lag, c.max_lag)]
        pct = "—" if math.isnan(c.median_lag) else f"{100 * c.median_lag / latency:.1f}%"
        out.append(f"| {c.name} | {c.wall_s:.2f} | {c.wall_s / ideal:.2f} | {c.polls_per_image:.2f} | {calls} | "
                   f"{lag[0]} | {pct} | {lag[1]} | {lag[2]} |")
    return "\n".join([*out, *extra]) + "\n"


def regime_section(polling: dict[str, Any]) -> tuple[list[dict[str, Any]], list[str]]:
    """Section 7: a table row per regime and mode (local server where it ran, else simulated), and the
    two regime tables for RESULTS.md."""
    rows = []
    stand = "local server" if polling["server"] else "simulated"
    for reg in polling["regimes"]:
        for f in polling["figures"]:
            if f.regime != reg.name or f.contender != "zlab" or f.stand != stand:
                continue
            fixed = next((g for g in polling["figures"] if (g.regime, g.mode, g.stand, g.contender)
                          == (f.regime, f.mode, f.stand, "fixed 0.25 s")), None)
            if f.mode == "all queued":
                target = f"<= {reg.wall_target:g}× · <= {reg.calls_target:g} calls · <= 10% lag"
            else:
                target = "<= 1.05× · <= 4.5 calls" if f.mode == "auto" else "<= 1.25×"
            target = target if reg.targeted else "report"
            rows.append({
                "section": 7, "figure": f"{reg.name}, {f.mode} ({stand})", "zlab": round(f.wall_x, 3),
                "baseline": round(fixed.wall_x, 3) if fixed else math.nan, "unit": "× ideal",
                "ratio": f"{f.calls:.2f} calls/image, lag {f.lag_s * 1000:.0f} ms ({f.lag_pct:.1f}%)",
                "target": target, "met": bench_polling.verdict(reg, f),
                "notes": f"baseline: fixed 0.25 s poller ({fixed.calls:.1f} calls/image)" if fixed else "",
            })
    md = ["", "## Polling under every queue regime (section 7)", "",
          "Each cell: wall time as a multiple of the ideal · status+result calls per image · median detection lag "
          "(ms, % of the run time). Method: [bench_polling.py](bench_polling.py).", "",
          "### Simulated (`zlab.testing.queuesim`, 64 cells, 8 slots, 0.5 s jobs; means over seeds where random)", "",
          *polling["simulated"]]
    md += ["", "### The automatic concurrency at 2, 8 and 32 slots (simulated, 64 cells; × ideal and calls/image)", "",
           *polling["capacities"]]
    if polling["server"]:
        md += ["", f"### Local server ({polling['cells']} cells, the server in its own process)", "",
               *polling["server"]]
    return rows, md


def scale_section(quick: bool, say: Any) -> tuple[list[dict[str, Any]], list[str]]:
    """Section 8: a long sweep's cost per 1,000 cells, first block against the last (flat is the target)."""
    result = bench_scale.run(quick)
    blocks = [s for _, s, _ in result["blocks"]]
    mem = [mb for _, _, mb in result["blocks"]]
    say(f"    {result['cells']} cells in {result['run']['total']:.1f} s")
    # Flatness from the median block of the last quarter against the first quarter's: a cost that grows
    # with the cells done shows there, one block slowed by the shared machine does not.
    quarter = max(1, len(blocks) // 4)
    first, last = (statistics.median(b) if b else math.nan for b in (blocks[:quarter], blocks[-quarter:]))
    growth = last / first
    rows = [
        {"section": 8, "figure": f"seconds per 1,000 cells, last quarter vs first ({result['cells']:,} cells, "
                                 "latency 0, median block)",
         "zlab": round(last, 2), "baseline": round(first, 2),
         "unit": "s", "ratio": f"{growth:.2f}× the first quarter", "target": "<= 1.3× (flat)", "met": growth <= 1.3,
         "notes": f"baseline: the sweep's own first {quarter:,} blocks of 1,000 cells"},
        {"section": 8, "figure": f"resident memory at the last block vs the first ({result['cells']:,} cells)",
         "zlab": round(mem[-1]) if mem else math.nan, "baseline": round(mem[0]) if mem else math.nan, "unit": "MB",
         "ratio": f"{mem[-1] - mem[0]:+.0f} MB" if mem else "", "target": "<= +50 MB (flat)",
         "met": bool(mem) and mem[-1] - mem[0] <= 50, "notes": ""},
        {"section": 8, "figure": f"open the finished run ({result['cells']:,} cells) as a gallery model",
         "zlab": round(result["open"], 2), "baseline": math.nan, "unit": "s", "ratio": "", "target": "< 2 s",
         "met": result["open"] < 2, "notes": ""},
    ]
    md = ["", "## Scale (section 8)", "", "Method: [bench_scale.py](bench_scale.py).", "", *bench_scale.table(result)]
    return rows, md


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller versions of every benchmark (about a minute)")
    parser.add_argument("--out", type=Path, default=HERE / "RESULTS.md", help="where to write the Markdown table")
    args = parser.parse_args(argv)

    def say(line: str) -> None:
        print(f"[{time.perf_counter() - start:6.1f}s] {line}", flush=True)

    start = time.perf_counter()
    info = machine()
    say(f"zlab benchmarks ({'quick' if args.quick else 'full'}) on {info['cpu']}, {info['cores']} cores, "
        f"Python {info['python']}")
    say("[1-3, 5/8] sweeps against the local server ...")
    sweep_rows, contenders, settings = bench_sweep.run(args.quick, say=say)
    say("[4/8] contact sheet vs the decode floor and matplotlib (bench_sheet) ...")
    sheet_rows = [{"section": 4, **r} for r in bench_sheet.run(args.quick)]
    for r in sheet_rows:
        say(f"    {r['figure']}: zlab {r['zlab']} {r['unit']}, matplotlib {r['baseline']} {r['unit']}")
        if isinstance(r["ratio"], int | float):
            r["ratio"] = f"{r['ratio']:g}× (baseline / zlab)"
    say("[6/8] synthetic backend and client overhead ...")
    backend_rows = bench_backend.run(args.quick, say=say)
    say("[7/8] polling under every queue regime (bench_polling) ...")
    polling = bench_polling.run(args.quick, say=say)
    regime_rows, regime_md = regime_section(polling)
    say("[8/8] scale: a long sweep at zero latency (bench_scale) ...")
    scale_rows, scale_md = scale_section(args.quick, say)
    regime_md += scale_md
    rows = sorted(sweep_rows + sheet_rows + backend_rows + regime_rows + scale_rows, key=lambda r: r["section"])
    took = time.perf_counter() - start
    print()
    print_table(rows)
    missed = [r["figure"] for r in rows if r["met"] is False]
    print(f"\n{len(missed)} target(s) missed" + (": " + "; ".join(missed) if missed else ""))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(markdown(rows, contenders, settings, info, args.quick, took, regime_md), encoding="utf-8")
    say(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
