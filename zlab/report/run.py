"""Running a report: papermill in a child process with a deadline, then the HTML, then the secret scan.

What happens, in order:

1. Parameter names are checked against the notebook's cell tagged `parameters` (`zlab.report.params`).
2. The notebook runs in a kernel for *this* interpreter (`zlab.report.kernel`), in a child process so that
   the overall deadline can stop it cleanly, with the notebook's own folder as working directory (so
   relative paths in it mean what they mean when you open it in Jupyter; `cwd=` changes that).
3. The executed `.ipynb` and its HTML (`zlab.report.html`: one page, images embedded, nothing loaded from
   the network) are written to `out`, by default `reports/<notebook stem>-<UTC timestamp>/`. A failed run
   keeps both.
4. Both files are scanned for the token (`zlab.report.scrub`); any hit is replaced and a warning says so.
"""

from __future__ import annotations

import dataclasses
import html
import json
import math
import os
import signal
import subprocess
import sys
import urllib.parse
import warnings
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from zlab.core.config import environment
from zlab.errors import ValidationError
from zlab.report.html import render_html
from zlab.report.kernel import kernel_for_current_python
from zlab.report.params import check_parameters, notebook_parameters, plain
from zlab.report.scrub import MASK, redact, scrub_file, scrub_text, secret_values

_ERROR_MARKER_TAG = "papermill-error-cell-tag"  # cells papermill inserts around a failure
_RESULT_PREFIX = "ZLAB-REPORT-RESULT "
_GRACE_S = 15.0  # after the deadline: time for the child to shut its kernel down after SIGINT


@dataclasses.dataclass(frozen=True)
class Report:
    """The outcome of one notebook run: where its files are, and whether it succeeded.

    `notebook` is the executed `.ipynb`, `html` its rendering (None if it could not be rendered),
    `error` a one-line description of the failure (None when `ok`).
    """

    notebook: Path
    html: Path | None
    out_dir: Path
    parameters: dict[str, Any] = dataclasses.field(hash=False)
    ok: bool
    error: str | None = None
    scrubbed: bool = False  # a secret was found in the output files and replaced by MASK

    def _repr_html_(self) -> str:
        status = "ok" if self.ok else f"failed: {html.escape(self.error or '')}"
        links = [
            f'<a href="{_href(p)}" target="_blank">{html.escape(p.name)}</a>'
            for p in (self.html, self.notebook)
            if p is not None
        ]
        return (
            f"<div><b>zlab report</b> ({status})<br>{' · '.join(links)}"
            f"<br><code>{html.escape(str(self.out_dir))}</code></div>"
        )


def _href(path: Path) -> str:
    # relative links work in Jupyter (served from the notebook's folder) and in a file browser
    try:
        return urllib.parse.quote(os.path.relpath(path))
    except ValueError:  # another drive on Windows
        return path.resolve().as_uri()


def report(
    notebook: str | Path,
    parameters: Mapping[str, Any] | None = None,
    out: str | Path | None = None,
    *,
    timeout: float = 600,
    hide_code: bool = False,
    kernel_name: str | None = None,
    cwd: str | Path | None = None,
) -> Report:
    """Run `notebook` with `parameters` and write the executed notebook and its HTML to `out`.

    `timeout` (seconds) bounds the whole run, kernel start included (and so each cell). The working
    directory is the notebook's folder unless `cwd` is given. Parameter problems raise
    `ValidationError` before anything runs; a failing or timed-out notebook returns a `Report` with
    `ok=False` and `error` naming the cell, its first line and the exception.

    >>> rep = report("notebooks/seed-grid.ipynb", {"seeds": [1, 2, 3]}, hide_code=True)  # doctest: +SKIP
    """
    src = Path(notebook)
    if not src.is_file() or src.suffix != ".ipynb":
        raise ValidationError("notebook", str(notebook), "an existing .ipynb file")
    params = {name: plain(value) for name, value in (parameters or {}).items()}
    check_parameters(params, notebook_parameters(src) if params else {})
    try:
        yaml.safe_dump(params)
    except yaml.YAMLError as exc:
        raise ValidationError(
            "parameters", "…", "plain values (str, number, bool, None, lists, dicts)", str(exc).splitlines()[0]
        ) from None
    if cwd is not None and not Path(cwd).is_dir():
        raise ValidationError("cwd", str(cwd), "an existing folder")
    out_dir = Path(out) if out is not None else _default_out_dir(src)
    out_dir.mkdir(parents=True, exist_ok=True)
    out_nb, out_html = out_dir / f"{src.stem}.ipynb", out_dir / f"{src.stem}.html"
    if out_nb.resolve() == src.resolve():
        raise ValidationError(
            "out",
            str(out),
            "a folder other than the notebook's own",
            "The executed notebook would overwrite the source.",
        )
    out_nb.unlink(missing_ok=True)
    out_html.unlink(missing_ok=True)

    job = {
        "input": str(src.resolve()),
        "output": str(out_nb.resolve()),
        "parameters": params,
        "kernel_name": kernel_name or kernel_for_current_python(),
        "cwd": str(Path(cwd).resolve() if cwd is not None else src.resolve().parent),
        "execution_timeout": max(1, math.ceil(timeout)),
    }
    child_error = _run_child(job, timeout)
    secrets = secret_values()
    scrubbed = scrub_file(out_nb, secrets)
    error = _describe_failure(out_nb, child_error) if child_error is not None else None
    rendered = render_html(out_nb, out_html, hide_code) if out_nb.is_file() else None
    scrubbed = scrub_file(out_html, secrets) or scrubbed
    if scrubbed:
        warnings.warn(
            f"a RunComfy token appeared in the report in {out_dir} and was replaced by {MASK}; "
            "don't print or display secrets in notebooks",
            stacklevel=2,
        )
    if error is not None:
        error = scrub_text(error, secrets)
    shown = {name: redact(value, secrets) for name, value in params.items()}  # reprs show no token
    return Report(
        notebook=out_nb,
        html=rendered,
        out_dir=out_dir,
        parameters=shown,
        ok=error is None,
        error=error,
        scrubbed=scrubbed,
    )


def _default_out_dir(src: Path) -> Path:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    base = Path("reports") / f"{src.stem}-{stamp}"
    candidate, n = base, 1
    while candidate.exists():  # two reports in the same second
        n += 1
        candidate = base.with_name(f"{base.name}-{n}")
    return candidate


def _run_child(job: dict[str, Any], timeout: float) -> dict[str, Any] | None:
    """Run papermill in a child process; None on success, else what the child knows about the failure.

    A child keeps papermill's `chdir` out of this process, works from inside Jupyter (where an event
    loop is already running), and can be interrupted at the deadline: SIGINT makes it shut its kernel
    down; it is killed if it has not gone `_GRACE_S` later.
    """
    cmd = [sys.executable, "-c", "from zlab.report.run import _child_main; _child_main()"]
    # PYDEVD_…: quiets a debugger warning per kernel. ZLAB_REPORT: tells code in the notebook it runs
    # unattended (no terminal progress line; zlab's HTML progress still leaves its final state).
    env = {**environment(), "PYDEVD_DISABLE_FILE_VALIDATION": "1", "ZLAB_REPORT": "1"}
    proc = subprocess.Popen(
        cmd,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        text=True,
        start_new_session=True,
    )
    payload = yaml.safe_dump(job)
    try:
        stdout, stderr = proc.communicate(payload, timeout=timeout)
    except subprocess.TimeoutExpired:
        _stop(proc)
        return {"ename": "Timeout", "evalue": f"the notebook did not finish within {timeout:g} s", "timed_out": True}
    except BaseException:  # Ctrl-C here: stop the kernel too, then let it propagate
        _stop(proc)
        raise
    if proc.returncode == 0:
        return None
    for line in reversed(stdout.splitlines()):
        if line.startswith(_RESULT_PREFIX):
            result: dict[str, Any] = json.loads(line[len(_RESULT_PREFIX) :])
            return result
    tail = "\n".join(stderr.strip().splitlines()[-5:])
    return {"ename": "ChildError", "evalue": f"papermill exited with status {proc.returncode}: {tail}"}


def _stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.communicate(timeout=_GRACE_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()


def _child_main() -> None:
    """Entry point of the child process: read the job (YAML) on stdin, run papermill, report on stdout."""
    import papermill

    job = yaml.safe_load(sys.stdin.read())
    try:
        papermill.execute_notebook(
            job["input"],
            job["output"],
            parameters=job["parameters"] or None,
            kernel_name=job["kernel_name"],
            language="python",
            cwd=job["cwd"],
            progress_bar=False,
            execution_timeout=job["execution_timeout"],
            # Widget state in the report would be megabytes of thumbnails that no one can render
            # offline; every zlab widget leaves a static copy in the outputs instead.
            store_widget_state=False,
            start_timeout=min(60, job["execution_timeout"]),
        )
    except BaseException as exc:  # KeyboardInterrupt at the deadline too
        info = {
            "ename": getattr(exc, "ename", type(exc).__name__),
            "evalue": str(getattr(exc, "evalue", exc)),
            "cell_index": getattr(exc, "cell_index", None),
            "timed_out": type(exc).__name__ in ("CellTimeoutError", "KeyboardInterrupt"),
        }
        print(_RESULT_PREFIX + json.dumps(info), flush=True)
        sys.exit(1)


def _describe_failure(out_nb: Path, info: dict[str, Any]) -> str:
    """'cell 2 (`raise ValueError("x")`): ValueError: x', the cell's index as in the source notebook."""
    what = f"{info.get('ename')}: {info.get('evalue')}".rstrip(": ")
    cell = _failed_cell(out_nb, bool(info.get("timed_out"))) if out_nb.is_file() else None
    if cell is None:
        return f"{what} (executed notebook so far: {out_nb})" if out_nb.is_file() else what
    index, first = cell
    return f"cell {index} (`{first}`): {what}"


def _failed_cell(out_nb: Path, timed_out: bool) -> tuple[int, str] | None:
    import nbformat

    nb = nbformat.read(str(out_nb), as_version=4)
    # count cells as the user sees them: without papermill's injected parameters and error markers
    cells = [c for c in nb.cells if not {"injected-parameters", _ERROR_MARKER_TAG} & set(c.metadata.get("tags", []))]
    for index, cell in enumerate(cells):
        if cell.cell_type != "code":
            continue
        meta = cell.metadata.get("papermill", {})
        errored = any(o.get("output_type") == "error" for o in cell.get("outputs", []))
        running = timed_out and meta.get("status") == "running"
        if errored or meta.get("exception") or running:
            first = next((ln.strip() for ln in cell.source.splitlines() if ln.strip()), "")
            return index, first[:80]
    if timed_out:  # nbclient marks a timed-out cell completed; the first never-run cell follows it
        for index, cell in enumerate(cells):
            if cell.cell_type == "code" and cell.metadata.get("papermill", {}).get("status") == "pending":
                prev = max((i for i in range(index) if cells[i].cell_type == "code"), default=index)
                first = next((ln.strip() for ln in cells[prev].source.splitlines() if ln.strip()), "")
                return prev, first[:80]
    return None
