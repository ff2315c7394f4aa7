"""The `zlab` command's subcommands (run, find-scale, sheet, report, export, serve), each a function of its
parsed arguments that returns the exit code; `generate` has its own module."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from zlab import errors

REACH_TIMEOUT_S = 10.0


def run(args: argparse.Namespace) -> int:
    from zlab.client import AsyncClient
    from zlab.runs.sweep import Sweep

    sweep = Sweep.from_file(args.spec, max_cells=args.max_cells)
    out = Path(args.out or Path("runs") / Path(args.spec).stem)
    if out.exists() and not out.is_dir():
        raise errors.ValidationError("--out", str(out), "a directory (this is a file)")

    async def main() -> int:
        async with AsyncClient() as client:
            await asyncio.to_thread(reach, client.base_url, client.builtin)
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

    return run_interruptible(main)


def find_scale(args: argparse.Namespace) -> int:
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

    return run_interruptible(main)


def run_interruptible(main: Callable[[], Coroutine[Any, Any, int]]) -> int:
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


def sheet(args: argparse.Namespace) -> int:
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


def report(args: argparse.Namespace) -> int:
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


def export(args: argparse.Namespace) -> int:
    from zlab.export import to_mlflow

    run_id = to_mlflow(
        args.dir, tracking_uri=args.tracking_uri, experiment=args.experiment, run_name=args.run_name,
        reports=args.report,
    )  # fmt: skip
    print(f"zlab export: {args.dir} → MLflow run {run_id} (experiment {args.experiment!r})")
    return 0


def serve(args: argparse.Namespace) -> int:
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
            attention=args.attention,
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


def reach(base_url: str, builtin: bool) -> None:
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
