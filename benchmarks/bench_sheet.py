"""Contact sheet vs the decode floor and the matplotlib grid a user writes by hand: time and memory.

The fixture is 64 PNGs of 1024×1536 (8 seeds × 8 LoRA scales) in a temporary run directory. Each
contender runs in a fresh subprocess so neither inherits the other's caches or memory:

* zlab cold: `contact_sheet(df, x="lora1_scale", y="seed")` + `save`, empty thumbnail cache (the
  files themselves are in the OS page cache for both contenders);
* zlab warm: the same again, thumbnails read from the cache;
* decode floor: nothing but decoding the same 64 files in full (`Image.open(p).load()`), on all
  cores: a thread per core (Pillow's decoders release the GIL) and a process per core, the faster
  counts. A cold sheet must decode every image, so this is the floor for building the sheet;
  building plus saving it is measured against decode + one encode of the finished sheet (zlab's
  parallel PNG writer at level 1 with zlib's default strategy, as sheets were written before they
  switched to the run-length strategy) — issue 22's floor, target ≤ 1.3×;
* baseline: `plt.subplots(8, 8)`, `imshow` of every full image read from disk, `savefig` at the
  same output width in pixels as zlab's sheet.

Time is measured inside the subprocess after imports (fastest of 3 runs for zlab and the floor, run
in turn so that other load on the machine hits them alike; of 2 for the baseline); memory is the
growth of peak RSS (VmHWM) over the RSS after imports (largest run).
The baseline reads each image as a uint8 array (`np.asarray(Image.open(p))`); `plt.imread` would
be slower still and hold float32 copies (4× the memory).
Targets: zlab cold ≤ 1.3× the decode floor and ≥ 10× faster than the baseline; peak growth ≤ 300 MB.

Run alone: ``python benchmarks/bench_sheet.py [--quick]``.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SPEED_TARGET = 10.0
FLOOR_TARGET = 1.3
MEMORY_TARGET_MB = 300.0

_CHILD = r"""
import json, sys, time
from pathlib import Path

def rss_kb(field):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0

mode, run_dir, out, width = sys.argv[1], Path(sys.argv[2]), sys.argv[3], int(sys.argv[4])
import numpy as np, pandas as pd
from PIL import Image
if mode in ("floor-threads", "floor-processes"):
    import os
    from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor

    def decode(p):
        with Image.open(p) as im:
            im.load()
        return im.size

    paths = sorted((run_dir / "images").iterdir())
    pool = ThreadPoolExecutor if mode == "floor-threads" else ProcessPoolExecutor
    with pool(os.cpu_count() or 1) as ex:
        list(ex.map(decode, paths[:1]))  # start the workers before the clock
        t0 = time.perf_counter()
        list(ex.map(decode, paths))
        elapsed = time.perf_counter() - t0
    encode_s = 0.0
    if Path(out).is_file():  # the finished sheet, encoded once
        import zlib
        from zlab.sheet import png
        page = Image.open(out).convert("RGB")
        t0 = time.perf_counter()
        png.encode(page, strategy=zlib.Z_DEFAULT_STRATEGY)
        encode_s = time.perf_counter() - t0
    print(json.dumps({"seconds": elapsed, "encode": encode_s, "peak_mb": 0.0, "size": [0, 0]}))
    sys.exit(0)
if mode == "zlab":
    from zlab.sheet import contact_sheet
else:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
df = pd.read_parquet(run_dir / "results.parquet")
base = rss_kb("VmRSS")
t0 = time.perf_counter()
if mode == "zlab":
    sheet = contact_sheet(df, x="lora1_scale", y="seed", root=run_dir)
    built = time.perf_counter() - t0
    sheet.save(out)
    size = sheet.pages[0].size
else:
    xs, ys = sorted(df["lora1_scale"].unique()), sorted(df["seed"].unique())
    dpi = 100
    fig, axes = plt.subplots(len(ys), len(xs), figsize=(width / dpi, width / dpi * 1.5 * len(ys) / len(xs)))
    for _, row in df.iterrows():
        ax = axes[ys.index(row["seed"]), xs.index(row["lora1_scale"])]
        ax.imshow(np.asarray(Image.open(run_dir / row["image_path"])))
        ax.set_title(f"lora1_scale {row['lora1_scale']:g}", fontsize=8)
        ax.axis("off")
    fig.savefig(out, dpi=dpi)
    size = Image.open(out).size
elapsed = time.perf_counter() - t0
print(json.dumps({"seconds": elapsed, "build": built if mode == "zlab" else elapsed,
                  "peak_mb": (rss_kb("VmHWM") - base) / 1024, "size": size}))
"""


def make_run(root: Path, n: int = 8, width: int = 1024, height: int = 1536) -> Path:
    """n×n photo-like PNGs (smooth gradients, shapes and mild noise, so they compress like renders)."""
    import numpy as np
    import pandas as pd
    from PIL import Image, ImageDraw

    (root / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    rows = []
    for si in range(n):
        for ci in range(n):
            hue = np.array([40 + 25 * ci, 60 + 20 * si, 200 - 20 * ci], dtype=np.float32)
            base = hue[None, None, :] * (0.6 + 0.4 * (xx / width))[..., None] * (0.7 + 0.3 * (yy / height))[..., None]
            noise = rng.normal(0, 6, size=(height, width, 1)).astype(np.float32)
            im = Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8))
            d = ImageDraw.Draw(im)
            d.ellipse((200 + 40 * ci, 300 + 30 * si, 800, 1200), fill=(230, 200 - 10 * si, 90 + 15 * ci))
            key = f"s{si}c{ci}"
            path = f"images/{key}.png"
            im.save(root / path, compress_level=4)  # what ComfyUI writes
            rows.append({
                "key": key, "prompt": "benchmark", "width": width, "height": height, "seed": si,
                "lora1_path": "bench/lora", "lora1_scale": round(ci * 0.25, 2), "status": "succeeded",
                "error": None, "image_path": path,
            })
    pd.DataFrame(rows).to_parquet(root / "results.parquet")
    return root


def _child(mode: str, run_dir: Path, out: Path, width: int) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, mode, str(run_dir), str(out), str(width)],
        capture_output=True, text=True, check=True,
    )
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run(quick: bool) -> list[dict]:
    """Benchmark rows: figure, zlab, baseline, unit, ratio, target, met."""
    n, repeats = (4, 1) if quick else (8, 5)
    with tempfile.TemporaryDirectory(prefix="zlab-bench-sheet-") as tmp:
        tmp_path = Path(tmp)
        t0 = time.perf_counter()
        run_dir = make_run(tmp_path / "run", n=n)
        setup = time.perf_counter() - t0
        colds, warms, floors = [], [], []
        for _ in range(repeats):
            shutil.rmtree(run_dir / ".zlab", ignore_errors=True)
            colds.append(_child("zlab", run_dir, tmp_path / "zlab.png", 0))
            floor_runs = [_child(m, run_dir, tmp_path / "zlab.png", 0) for m in ("floor-threads", "floor-processes")]
            floors.append(min(floor_runs, key=lambda r: r["seconds"] + r["encode"]))
            warms.append(_child("zlab", run_dir, tmp_path / "zlab-warm.png", 0))
        bases = [_child("matplotlib", run_dir, tmp_path / "mpl.png", colds[0]["size"][0]) for _ in range(2)]
    # Fastest of several runs for time (least disturbed by other load), largest for memory.
    cold, warm, base = (
        {"seconds": min(r["seconds"] for r in runs), "build": min(r["build"] for r in runs),
         "peak_mb": max(r["peak_mb"] for r in runs), "size": runs[0]["size"]}
        for runs in (colds, warms, bases)
    )
    floor = min(r["seconds"] for r in floors)
    floor_encoded = min(r["seconds"] + r["encode"] for r in floors)
    grid = f"{n}x{n} grid of 1024x1536 PNG"
    rows = [
        _floor_row(f"cold sheet build vs parallel decode floor ({grid})", cold["build"], floor),
        _floor_row(f"cold sheet build + PNG save vs decode + one encode ({grid})", cold["seconds"], floor_encoded),
        _row(f"sheet time, cold cache ({grid})", cold["seconds"], base["seconds"], "s", SPEED_TARGET),
        _row(f"sheet time, warm cache ({grid})", warm["seconds"], base["seconds"], "s", None),
        {
            "figure": f"sheet peak memory growth, cold ({grid})", "zlab": round(cold["peak_mb"], 1),
            "baseline": round(base["peak_mb"], 1), "unit": "MB",
            "ratio": round(base["peak_mb"] / max(cold["peak_mb"], 1e-9), 2),
            "target": f"<= {MEMORY_TARGET_MB:g} MB", "met": cold["peak_mb"] <= MEMORY_TARGET_MB,
        },
    ]
    for r in rows:
        r["notes"] = (f"output {cold['size'][0]}x{cold['size'][1]} px (baseline same width); "
                      f"fixture written in {setup:.1f}s")
    return rows


def _floor_row(figure: str, zlab: float, floor: float) -> dict:
    ratio = zlab / max(floor, 1e-9)
    return {"figure": figure, "zlab": round(zlab, 3), "baseline": round(floor, 3), "unit": "s",
            "ratio": f"{ratio:.2f}× the floor", "target": f"<= {FLOOR_TARGET:g}× the floor",
            "met": ratio <= FLOOR_TARGET}


def _row(figure: str, zlab: float, baseline: float, unit: str, target: float | None) -> dict:
    ratio = baseline / max(zlab, 1e-9)
    return {
        "figure": figure, "zlab": round(zlab, 3), "baseline": round(baseline, 3), "unit": unit,
        "ratio": round(ratio, 1), "target": f">= {target:g}x faster" if target else "report",
        "met": ratio >= target if target else None,
    }


if __name__ == "__main__":
    for row in run(quick="--quick" in sys.argv):
        print(json.dumps(row))
