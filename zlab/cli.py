"""The `zlab` command: run, sheet, report, serve, generate.

Exit codes: 0 success; 1 some cells failed (results are still written) or the work failed;
2 bad input (nothing was sent); 3 the token was refused; 4 the balance ran out (3 and 4: sending
stopped at once, accepted jobs were still collected); 5 the run directory is busy (another run holds
it); 130 interrupted (Ctrl-C; rerun the same command to resume).
The API token comes only from the environment (RUNCOMFY_TOKEN / RUNCOMFY_API_KEY), never a flag.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import signal
import sys
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

from zlab import errors

BAD_INPUT = (errors.ValidationError, errors.ConfigError, errors.BudgetExceeded)
BUSY = 5


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


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="zlab", description="Sweep, compare and report Z-Image Turbo LoRAs.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser("run", help="run (or resume) a sweep file into a run directory")
    run.add_argument("spec", help="the sweep file (YAML)")
    run.add_argument("--out", help="run directory (default: runs/<spec name>); rerunning into it resumes")
    run.add_argument("--concurrency", type=int, default=8, help="jobs in flight at once (default 8)")
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
    run.add_argument("--no-cache", action="store_true", help="do not reuse images from other run directories")
    run.add_argument("--no-progress", action="store_true", help="no progress bar (the summary line remains)")

    sheet = commands.add_parser("sheet", help="draw a contact sheet from a run directory")
    sheet.add_argument("dir", help="a run directory (with results.parquet)")
    sheet.add_argument("--x", required=True, help="column across")
    sheet.add_argument("--y", help="column down")
    sheet.add_argument("--page", help="one page per value of this column")
    sheet.add_argument("--out", help="output file (.png, .jpg, .webp; default DIR/sheet.png)")
    sheet.add_argument("--html", action="store_true", help="also write a self-contained HTML sheet")
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
    serve.add_argument("--offload", action="store_true", help="diffusers: CPU offload for 16-24 GB cards (slower)")
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
    generate.add_argument("--out", required=True, help="image file to write")
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


def _run(args: argparse.Namespace) -> int:
    from zlab.client import AsyncClient
    from zlab.runs.sweep import Sweep

    sweep = Sweep.from_file(args.spec)
    out = Path(args.out or Path("runs") / Path(args.spec).stem)
    if out.exists() and not out.is_dir():
        raise errors.ValidationError("--out", str(out), "a directory (this is a file)")

    async def main() -> int:
        async with AsyncClient() as client:
            result = await client.run(
                sweep,
                out,
                concurrency=args.concurrency,
                budget=args.budget,
                dry_run=args.dry_run,
                retry_unknown=args.retry_unknown,
                resend_lost=args.resend_lost,
                cache=not args.no_cache,
                progress=not args.no_progress and sys.stderr.isatty(),
                cell_timeout=args.cell_timeout,
                wait=args.wait,
                on_interrupt="return",
            )
        return 0 if args.dry_run else result.exit_code

    return _run_interruptible(main)


def _run_interruptible(main: Callable[[], Coroutine[Any, Any, int]]) -> int:
    """Run `main` on a fresh loop where Ctrl-C cancels it once; more presses while it cleans up (cancelling
    queued jobs, writing results: a few seconds, bounded) only say so, so the ledger and summary stay whole.
    A third press stops at once: the ledger is consistent at every instant, so a rerun still resumes."""
    loop = asyncio.new_event_loop()
    task = loop.create_task(main())
    presses = 0

    def on_sigint() -> None:
        nonlocal presses
        presses += 1
        if presses == 1:
            task.cancel()
        elif presses == 2:
            print("zlab: finishing the clean-up (a few seconds); Ctrl-C again stops at once", file=sys.stderr)
        else:
            print("zlab: stopped at once; run the same command again to resume", file=sys.stderr, flush=True)
            os._exit(130)

    # On Windows, or off the main thread, Python's own Ctrl-C handling stays.
    with contextlib.suppress(NotImplementedError, RuntimeError):
        loop.add_signal_handler(signal.SIGINT, on_sigint)
    try:
        return loop.run_until_complete(task)
    except asyncio.CancelledError:
        raise KeyboardInterrupt from None
    finally:
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.remove_signal_handler(signal.SIGINT)
            if presses:  # the run is over and recorded: a late press must not turn the exit into a traceback
                signal.signal(signal.SIGINT, signal.SIG_IGN)
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


def _sheet(args: argparse.Namespace) -> int:
    from zlab.sheet import sheet_from_run_dir

    try:
        paths = sheet_from_run_dir(
            args.dir, x=args.x, y=args.y, page=args.page, out=args.out, html=args.html, cell_width=args.cell_width
        )
    except (OSError, ValueError) as exc:  # a missing or unreadable results.parquet (pyarrow's errors are ValueErrors)
        if isinstance(exc, errors.ZlabError):
            raise
        raise errors.ValidationError(
            "dir", args.dir, f"a run directory with a readable results.parquet ({type(exc).__name__}: {exc})"
        ) from None
    for path in paths:
        print(path)
    return 0


def _report(args: argparse.Namespace) -> int:
    """0: the notebook ran; 1: it failed (the executed notebook and HTML are still written); 2: bad input."""
    import time
    import warnings

    from zlab.report import parse_param_pairs, report

    started = time.monotonic()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rep = report(
            args.notebook,
            parse_param_pairs(tuple(p) for p in args.parameter),
            args.out,
            timeout=args.timeout,
            hide_code=args.hide_code,
        )
    for warning in caught:
        print(f"zlab report: warning: {warning.message}", file=sys.stderr)
    if not rep.ok:
        print(f"zlab report: {args.notebook} failed: {rep.error}", file=sys.stderr)
        print(f"  executed notebook: {rep.notebook}" + (f"\n  html: {rep.html}" if rep.html else ""), file=sys.stderr)
        return 1
    print(f"zlab report: {args.notebook} ran in {time.monotonic() - started:.1f} s")
    print(f"  html: {rep.html}\n  executed notebook: {rep.notebook}")
    return 0


def _serve(args: argparse.Namespace) -> int:
    from zlab.server import serve
    from zlab.server.regime import Regime, parse_burst

    burst_size, burst_every = parse_burst(args.burst)
    regime = Regime(
        other_load=args.other_load,
        burst_size=burst_size,
        burst_every=burst_every,
        other_seconds=args.other_seconds,
        jitter=args.jitter,
        cold_factor=args.cold_factor,
        cold_jobs=args.cold_jobs,
        seed=args.seed,
    )
    renderer = None
    if args.backend == "diffusers":
        from zlab.server import diffusers_backend as db

        problem = db.missing_local_extra()
        if problem:
            raise errors.ConfigError(problem)
        settings = db.DiffusersSettings(
            args.model or db.DEFAULT_MODEL, args.device, db.parse_devices(args.devices), args.dtype, args.offload
        )
        renderer = db.load_renderer(settings, say=lambda line: print(line, file=sys.stderr, flush=True))
    serve(
        renderer=renderer,
        host=args.host,
        port=args.port,
        token=args.token or None,
        latency=args.latency,
        capacity=args.capacity,
        expire_after=args.expire_after,
        quirks=args.quirk,
        regime=regime,
    )
    return 0


def _generate(args: argparse.Namespace) -> int:
    from zlab.client import Client
    from zlab.core.request import DEFAULT_LORAS, LoRA, Request

    if (args.prompt is None) == (args.collect is None):
        raise errors.ValidationError("prompt", args.prompt, "a prompt, or --collect REQUEST_ID (not both)")
    out = _check_out_file(Path(args.out))  # before anything is paid for
    try:
        with Client() as client:
            if args.collect is not None:  # a job paid for earlier: fetched by its id, never sent again
                generation = client.job(args.collect).download(args.timeout)
            else:
                loras = () if args.no_lora else [LoRA(*parse_lora(text)) for text in args.lora] or DEFAULT_LORAS
                request = Request(args.prompt, loras=loras, width=args.width, height=args.height, seed=args.seed)
                generation = client.generate(request, timeout=args.timeout)
    except KeyboardInterrupt:  # the client said what was paid and how to collect it; never "run again"
        print("zlab: interrupted", file=sys.stderr)
        return 130
    path = (
        out if out.suffix.lower().replace(".jpeg", ".jpg") == generation.suffix else out.with_suffix(generation.suffix)
    )
    try:
        generation.save(path)
    except OSError as exc:
        raise errors.ZlabError(
            f"could not write {path} ({exc.strerror}); the image is paid for: collect it again with "
            f"`zlab.Client().job({generation.request_id!r}).download()`"
        ) from None
    note = f"; saved as {path.suffix[1:].upper()} as served" if path != out else ""
    size = f"{generation.image.width}x{generation.image.height}"
    print(
        f"{path} ({size}, request {generation.request_id}{note})"
        + (f"\nzlab: {generation.note}" if generation.note else "")
    )
    return 0


def _check_out_file(out: Path) -> Path:
    """`generate --out`: a file we can write, checked before the job is sent (and paid for)."""
    if out.is_dir():
        raise errors.ValidationError("--out", str(out), "a file name (this is a directory)")
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        raise errors.ValidationError("--out", str(out), f"a file in an existing directory ({parent} does not exist)")
    if not os.access(parent, os.W_OK) or (out.exists() and not os.access(out, os.W_OK)):
        raise errors.ValidationError("--out", str(out), "a file you may write")
    return out


COMMANDS = {"run": _run, "sheet": _sheet, "report": _report, "serve": _serve, "generate": _generate}


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except errors.RunDirBusy as exc:
        print(f"zlab: error: {exc}", file=sys.stderr)
        return BUSY
    except BAD_INPUT as exc:
        print(f"zlab: error: {exc}", file=sys.stderr)
        return 2
    except errors.ZlabError as exc:
        print(f"zlab: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("zlab: interrupted; run the same command again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
