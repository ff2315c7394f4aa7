"""The `zlab` command: run, sheet, report, serve, generate, find-scale.

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
import re
import signal
import sys
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

from zlab import errors
from zlab.core.concurrency import parse_concurrency

BAD_INPUT = (errors.ValidationError, errors.ConfigError, errors.BudgetExceeded)
BUSY = 5
MAX_CELLS = 100_000  # as zlab.runs.sweep.MAX_CELLS (not imported: `zlab --help` stays light)

# The library's messages name its Python keywords; the command's name its flags.
_FLAGS = (
    (re.compile(r"\bpass stack=True\b"), "add --stack"),
    (re.compile(r"\bpass max_cells=…"), "pass --max-cells N"),
    (re.compile(r"\b(x|y|page)=('[^']*'|\"[^\"]*\")"), lambda m: f"--{m[1]} {m[2][1:-1]}"),
    (re.compile(r"\bcell_timeout=\b"), "--cell-timeout "),
    (re.compile(r", filter the DataFrame,"), ","),
    (re.compile(r"^(concurrency|budget|cell_timeout|max_cells): "), lambda m: f"--{m[1].replace('_', '-')}: "),
)


def in_flags(message: str) -> str:
    """A library message as the command says it: `pass stack=True` → `add --stack`, `y='seed'` → `--y seed`."""
    for pattern, replacement in _FLAGS:
        message = pattern.sub(replacement, message)
    return message


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


def _parser() -> argparse.ArgumentParser:
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

    generate = commands.add_parser("generate", help="generate one image to a file")
    generate.add_argument("prompt")
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


def _run(args: argparse.Namespace) -> int:
    from zlab.client import AsyncClient
    from zlab.runs.sweep import Sweep

    sweep = Sweep.from_file(args.spec, max_cells=args.max_cells)
    out = Path(args.out or Path("runs") / Path(args.spec).stem)
    if out.exists() and not out.is_dir():
        raise errors.ValidationError("--out", str(out), "a directory (this is a file)")

    async def main() -> int:
        async with AsyncClient() as client:
            await asyncio.to_thread(_reach, client.base_url, client.builtin)
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


def _find_scale(args: argparse.Namespace) -> int:
    from zlab.client import AsyncClient
    from zlab.strength.driver import ScaleSpec

    spec = ScaleSpec.from_file(args.spec)
    out = Path(args.out or Path("runs") / Path(args.spec).stem)
    if out.exists() and not out.is_dir():
        raise errors.ValidationError("--out", str(out), "a directory (this is a file)")

    async def main() -> int:
        async with AsyncClient() as client:
            found = await client.find_scale(
                spec, out, budget=args.budget, echo=lambda line: print(line, file=sys.stderr)
            )
        print(found)
        return 1 if any(a.unfinished for a in found.answers) else 0  # 1: rerun to finish

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
            args.dir, x=args.x, y=args.y, page=args.page, out=args.out, html=args.html, cell_width=args.cell_width,
            stack=args.stack, portable=args.portable,
        )  # fmt: skip
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


def _export(args: argparse.Namespace) -> int:
    from zlab.export import to_mlflow

    run_id = to_mlflow(
        args.dir, tracking_uri=args.tracking_uri, experiment=args.experiment, run_name=args.run_name,
        reports=args.report,
    )  # fmt: skip
    print(f"zlab export: {args.dir} → MLflow run {run_id} (experiment {args.experiment!r})")
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
            args.model or db.DEFAULT_MODEL,
            args.device,
            db.parse_devices(args.devices),
            args.dtype,
            args.offload,
            compile=args.compile,
        )
        _check_model(args.model)  # after the settings' own checks, before a load that takes seconds to minutes
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


def _check_model(model: str | None) -> None:
    """`serve --model`: a folder on this machine must exist; anything that is not a Hugging Face id
    (`owner/name`) is taken for a folder."""
    from zlab.core.request import is_local_path

    if model is None or Path(model).expanduser().is_dir():
        return
    if is_local_path(model) or model.count("/") != 1 or Path(model).expanduser().exists():
        raise errors.ValidationError(
            "--model", model, "a Z-Image Turbo folder on this machine or a Hugging Face id (Tongyi-MAI/Z-Image-Turbo)",
            f"there is no folder {Path(model).expanduser()}",
        )  # fmt: skip


def _generate(args: argparse.Namespace) -> int:
    from zlab.api.download import write_image_as
    from zlab.client import Client
    from zlab.core.request import DEFAULT_LORAS, LoRA, Request

    loras = () if args.no_lora else [LoRA(*parse_lora(text)) for text in args.lora] or DEFAULT_LORAS
    request = Request(args.prompt, loras=loras, width=args.width, height=args.height, seed=args.seed)
    out = _check_out_file(args.out)  # before anything is paid for
    with Client() as client:
        _reach(client.base_url, client.aclient.builtin)
        generation = client.generate(request, timeout=args.timeout)
    path = out / f"{_safe_name(generation.request_id)}{generation.suffix}" if out.is_dir() else out
    try:
        converted = write_image_as(path, generation.data, generation.image)
    except OSError as exc:
        raise errors.ZlabError(
            f"could not write {path} ({exc.strerror}); the image is paid for: collect it again with "
            f"`zlab.Client().job({generation.request_id!r}).download()`"
        ) from None
    note = f"; converted from {generation.suffix[1:].upper()} as served" if converted else ""
    size = f"{generation.image.width}x{generation.image.height}"
    print(
        f"{path} ({size}, request {generation.request_id}{note})"
        + (f"\nzlab: {generation.note}" if generation.note else "")
    )
    return 0


def _check_out_file(text: str) -> Path:
    """`generate --out`: checked before the job is sent (and paid for). A name with an image suffix is that
    file (written in that format); an existing directory, a name ending in a separator or a name without a
    suffix is a directory (made if needed) that gets ``<request id>.<served suffix>``."""
    out = Path(text)
    if out.is_dir() or text.endswith(("/", os.sep)) or (not out.suffix and not out.exists()):
        if out.exists() and not out.is_dir():
            raise errors.ValidationError("--out", text, "a directory (this is a file)")
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise errors.ValidationError("--out", text, "a directory you may create", exc.strerror or "") from None
        if not os.access(out, os.W_OK):
            raise errors.ValidationError("--out", text, "a directory you may write")
        return out
    if out.suffix.lower() not in (".png", ".jpg", ".jpeg", ".webp"):  # what write_image_as writes
        raise errors.ValidationError(
            "--out", text, "a file ending in .png, .jpg, .jpeg or .webp, or a directory", "nothing was sent"
        )
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        raise errors.ValidationError("--out", text, f"a file in an existing directory ({parent} does not exist)")
    if not os.access(parent, os.W_OK) or (out.exists() and not os.access(out, os.W_OK)):
        raise errors.ValidationError("--out", text, "a file you may write")
    return out


def _safe_name(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in text).strip(".") or "image"


def _reach(base_url: str, builtin: bool) -> None:
    """Say which API this command talks to, and fail at once, with the reason, when it cannot be reached
    (instead of retrying a refused connection for half a minute). No token is sent with this probe."""
    if builtin:
        return  # the built-in server says where it is itself
    import httpx

    print(f"zlab: API at {base_url}", file=sys.stderr)
    try:
        httpx.get(base_url, timeout=REACH_TIMEOUT_S)  # any answer, even 404, means someone listens there
    except httpx.TransportError as exc:
        raise errors.ConfigError(
            f"cannot reach the API at {base_url} ({type(exc).__name__}: {exc or 'no answer'}): check "
            "ZLAB_BASE_URL (start the server with `zlab serve`, or unset it to use the built-in local server)"
        ) from None


REACH_TIMEOUT_S = 10.0


INTERRUPTED = {  # what Ctrl-C means depends on the command: only a run has something to resume
    "run": "zlab: interrupted; run the same command again to resume",
    "serve": "zlab serve: stopped",
}
COMMANDS = {
    "run": _run, "sheet": _sheet, "report": _report, "serve": _serve, "generate": _generate, "export": _export,
    "find-scale": _find_scale,
}  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except errors.RunDirBusy as exc:
        print(f"zlab: error: {in_flags(str(exc))}", file=sys.stderr)
        return BUSY
    except BAD_INPUT as exc:
        print(f"zlab: error: {in_flags(str(exc))}", file=sys.stderr)
        return 2
    except errors.ZlabError as exc:
        print(f"zlab: error: {in_flags(str(exc))}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(INTERRUPTED.get(args.command, "zlab: interrupted"), file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
