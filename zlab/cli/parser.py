"""The `zlab` command's arguments: the parser and the argparse types that check values as they are read."""

from __future__ import annotations

import argparse
import math

from zlab import errors
from zlab.core.concurrency import parse_concurrency

MAX_CELLS = 100_000  # as zlab.runs.sweep.MAX_CELLS (not imported: `zlab --help` stays light)


def _seconds(text: str) -> float:
    """An argparse type: a finite number of seconds > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: give a number of seconds > 0")
    return value


def _usd(text: str) -> float:
    """An argparse type: a finite number of USD >= 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of USD") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: give a finite number of USD >= 0")
    return value


def _concurrency(text: str) -> int | str:
    """An argparse type: "auto" or an integer from 1 to 256."""
    try:
        return parse_concurrency(text)
    except errors.ValidationError:
        raise argparse.ArgumentTypeError(f"{text!r}: give auto or an integer from 1 to 256") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="zlab", description="Sweep, compare and report Z-Image Turbo LoRAs.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser("run", help="run (or resume) a sweep file into a run directory")
    run.add_argument("spec", help="the sweep file (YAML)")
    run.add_argument("--out", help="run directory (default: runs/<spec name>); rerunning into it resumes")
    run.add_argument(
        "--concurrency",
        type=_concurrency,
        default="auto",
        help="jobs in flight: a number (a hard cap) or auto (default: those running at the service + as many queued)",
    )
    run.add_argument("--budget", type=_usd, help="refuse to start if the estimate exceeds this many USD")
    run.add_argument("--dry-run", action="store_true", help="print the plan and send nothing")
    run.add_argument(
        "--retry-unknown",
        action="store_true",
        help="resend cells whose earlier submit had an unknown outcome (they may be paid twice)",
    )
    run.add_argument(
        "--resend-lost",
        action="store_true",
        help="pay again for cells whose paid job's image could not be collected (marked lost)",
    )
    run.add_argument(
        "--cell-timeout",
        type=_seconds,
        default=1800.0,
        help="seconds a cell may take from its submit (default 1800); a job still queued then is cancelled",
    )
    run.add_argument(
        "--wait",
        type=_seconds,
        nargs="?",
        const=3600.0,
        default=0.0,
        metavar="SECONDS",
        help="if another run holds the directory, wait for it (default: say who holds it and exit)",
    )
    run.add_argument(
        "--max-cells", type=int, default=MAX_CELLS, help=f"refuse sweeps of more cells (default {MAX_CELLS:,})"
    )
    run.add_argument("--no-cache", action="store_true", help="do not reuse images from other run directories")
    run.add_argument("--no-progress", action="store_true", help="no progress bar (the summary line remains)")

    sheet = commands.add_parser("sheet", help="draw a contact sheet from a run directory")
    sheet.add_argument("dir", help="a run directory (with results.parquet)")
    sheet.add_argument("--x", required=True, help="column across")
    sheet.add_argument("--y", help="column down")
    sheet.add_argument("--page", help="one page per value of this column")
    sheet.add_argument("--out", help="output file (.png, .jpg, .webp; default DIR/sheet.png)")
    sheet.add_argument("--html", action="store_true", help="also write a self-contained HTML sheet")
    sheet.add_argument(
        "--portable",
        action="store_true",
        help="with --html: copy the full images into a folder beside the HTML file, so both move together",
    )
    sheet.add_argument(
        "--stack",
        action="store_true",
        help="cells that share a grid slot side by side (else: refused, with the reason)",
    )
    sheet.add_argument("--cell-width", type=int, default=256, help="thumbnail width in pixels (default 256)")

    report = commands.add_parser(
        "report", help="run a notebook with papermill and render it to one self-contained HTML page"
    )
    report.add_argument("notebook")
    report.add_argument(
        "-p",
        "--parameter",
        nargs=2,
        action="append",
        default=[],
        metavar=("NAME", "VALUE"),
        help="a parameter (VALUE parsed as YAML: -p seeds '[5, 6]')",
    )
    report.add_argument("--out", help="output directory (default reports/<name>-<time>)")
    report.add_argument("--hide-code", action="store_true", help="leave code cells out of the HTML")
    report.add_argument("--timeout", type=float, default=1800.0, help="seconds the whole notebook may take")

    serve = commands.add_parser("serve", help="the local RunComfy-compatible server (synthetic or real images)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8188)
    serve.add_argument("--token", help="require this bearer token (the local server's, not your RunComfy key)")
    serve.add_argument("--latency", default="1.0", help='seconds per job: "1.5" or base+per-megapixel "0.5+0.8/mp"')
    serve.add_argument(
        "--capacity", default="4", help='jobs running at once (the rest queue), or a schedule "4,8@5,16@10"'
    )
    serve.add_argument("--expire-after", type=float, help="request ids older than this many seconds answer 404")
    serve.add_argument(
        "--backend",
        choices=["synthetic", "diffusers"],
        default="synthetic",
        help="who makes the images: synthetic, or diffusers (Z-Image Turbo on this machine; needs zlab[local])",
    )
    serve.add_argument(
        "--model", help="diffusers: a Z-Image Turbo folder or Hugging Face id (Tongyi-MAI/Z-Image-Turbo)"
    )
    serve.add_argument("--device", choices=["cuda", "cpu", "mps"], help="diffusers: default cuda, else mps, else cpu")
    serve.add_argument("--devices", default="", help="diffusers: GPU indices, one pipeline each, e.g. 0,1")
    serve.add_argument("--dtype", choices=["bf16", "fp16", "fp32"], default="bf16", help="diffusers: default bf16")
    serve.add_argument("--offload", action="store_true", help="diffusers: text encoder on the CPU (fits 24 GB cards)")
    serve.add_argument("--compile", action="store_true", help="diffusers: torch.compile the transformer (slow start)")
    serve.add_argument(
        "--attention", metavar="NAME", help="diffusers: an attention backend, e.g. flash, _flash_3, sage, xformers"
    )
    serve.add_argument(
        "--quirk",
        action="append",
        default=[],
        metavar="NAME[=VALUE]",
        help="speak a protocol variant (repeatable): not_ready_400, position_1based, output_list, strict, ...",
    )
    serve.add_argument("--other-load", type=float, default=0.0, help="other users' jobs, a fraction of capacity")
    serve.add_argument("--burst", default="", metavar="N/S", help="besides, N of their jobs at once every S seconds")
    serve.add_argument("--other-seconds", type=float, help="their jobs' run time (default: the latency at 1 MP)")
    serve.add_argument("--jitter", type=float, default=0.0, help="run times vary lognormally with this sigma")
    serve.add_argument("--cold-factor", type=float, default=1.0, help="the first jobs run this many times slower")
    serve.add_argument("--cold-jobs", type=int, help="how many jobs start cold (default: the first wave)")
    serve.add_argument("--seed", type=int, default=0, help="seed for the queue regime's draws")

    find = commands.add_parser("find-scale", help="find each LoRA's onset, saturation and overcook with few images")
    find.add_argument("spec", help="the find-scale file (YAML; see zlab.strength.driver)")
    find.add_argument("--out", help="run directory (default: runs/<spec name>); rerunning into it resumes")
    find.add_argument("--budget", type=_usd, help="stop before the images would cost more than this many USD")
    export = commands.add_parser("export", help="export a run directory to an experiment tracker")
    trackers = export.add_subparsers(dest="tracker", required=True, metavar="TRACKER")
    mlflow = trackers.add_parser("mlflow", help="one MLflow run per run directory (needs zlab[mlflow])")
    mlflow.add_argument("dir", help="a run directory (with results.parquet)")
    mlflow.add_argument("--tracking-uri", help="where MLflow keeps runs, e.g. sqlite:///mlflow.db (default: MLflow's)")
    mlflow.add_argument("--experiment", default="zlab", help="the MLflow experiment (default zlab)")
    mlflow.add_argument("--run-name", help="the MLflow run's name (default: the directory's name)")
    mlflow.add_argument("--report", action="append", default=[], metavar="HTML", help="attach a report (repeatable)")

    generate = commands.add_parser("generate", help="generate one image to a file (or --collect a paid one)")
    generate.add_argument("prompt", nargs="?")
    generate.add_argument(
        "--collect", metavar="REQUEST_ID", help="collect the image of a job sent earlier by its request id (no new job)"
    )
    generate.add_argument(
        "--lora",
        action="append",
        default=[],
        metavar="PATH:SCALE",
        help="a LoRA and its scale (repeat up to 3 times); default: the schema's default LoRA",
    )
    generate.add_argument("--no-lora", action="store_true", help="send no LoRA at all")
    generate.add_argument("--width", type=int, default=1024)
    generate.add_argument("--height", type=int, default=1536)
    generate.add_argument("--seed", type=int, default=-1)
    generate.add_argument(
        "--out",
        required=True,
        help="image file to write (.png, .jpg, .webp: converted if served otherwise), or a directory",
    )
    generate.add_argument("--timeout", type=_seconds, default=600.0, help="seconds to wait (default 600)")
    return parser


def parse_lora(text: str) -> tuple[str, float]:
    """`owner/name:0.8` → (path, 0.8); a path without `:SCALE` gets scale 1 (URLs keep their colons)."""
    path, sep, scale = text.rpartition(":")
    if sep and path and not scale.startswith("//"):
        try:
            return path, float(scale)
        except ValueError:
            raise errors.ValidationError("--lora", text, "PATH:SCALE with SCALE a number from 0 to 4") from None
    return text, 1.0
