"""Run a parameterised notebook with papermill and render it to HTML: `zlab report`.

>>> rep = report("notebooks/lora_scale_sweep.ipynb", {"seeds": [5, 6], "prompt": "a fox"})  # doctest: +SKIP
>>> rep.ok, rep.html                                                                   # doctest: +SKIP
(True, PosixPath('reports/lora-scale-20250101T120000Z/lora-scale.html'))

What happens, in order:

1. Parameter names are checked against the notebook's cell tagged `parameters` (an unknown name is a
   `ValidationError` listing the valid ones). Names that look like secrets (token, api_key, secret,
   password) are refused: papermill writes parameters into the notebook, so the RunComfy token must come
   from the environment (`RUNCOMFY_TOKEN`), which the kernel inherits.
2. The notebook runs in a kernel for *this* interpreter (`sys.executable`), in a child process so that
   the overall deadline can stop it cleanly, with the notebook's own folder as working directory (so
   relative paths in it mean what they mean when you open it in Jupyter; `cwd=` changes that).
3. The executed `.ipynb` and its HTML rendering (images embedded as data URIs) are written to `out`,
   by default `reports/<notebook stem>-<UTC timestamp>/`. A failed run keeps both.
4. Both files are scanned for the values of `RUNCOMFY_TOKEN` / `RUNCOMFY_API_KEY` (raw, base64, escaped);
   any hit is replaced by `**********` and a warning says so. The token never reaches these files
   through zlab; the scan catches a notebook that prints it.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import html
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
import urllib.parse
import warnings
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from zlab.errors import ConfigError, ValidationError, ZlabError

__all__ = ["Report", "kernel_for_current_python", "parse_param_pairs", "report", "report_main"]

SECRET_ENV = ("RUNCOMFY_TOKEN", "RUNCOMFY_API_KEY")
MASK = "**********"
_SECRET_NAME = re.compile(r"token|api_?key|secret|passw(or)?d", re.IGNORECASE)
_MIN_SECRET_LEN = 6  # shorter values would scrub ordinary text; real tokens are far longer
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


# ---------------------------------------------------------------- parameters (pure)


def parse_param_pairs(pairs: Iterable[tuple[str, str]]) -> dict[str, Any]:
    """Turn `-p NAME VALUE` pairs into a dict, reading each VALUE as YAML.

    `"[5, 6]"` → `[5, 6]`, `"0.5"` → `0.5`, `"a fox"` → `"a fox"`; an empty value or one that is not
    valid YAML stays the string it is. A name given twice keeps its last value.

    >>> parse_param_pairs([("seeds", "[5, 6]"), ("prompt", "a fox"), ("scale", "0.5")])
    {'seeds': [5, 6], 'prompt': 'a fox', 'scale': 0.5}
    """
    out: dict[str, Any] = {}
    for name, raw in pairs:
        try:
            out[name] = yaml.safe_load(raw) if raw.strip() else raw
        except yaml.YAMLError:
            out[name] = raw
    return out


def _secret_values(env: Mapping[str, str] | None = None) -> list[str]:
    env = os.environ if env is None else env
    return [v for k in SECRET_ENV if len(v := env.get(k, "")) >= _MIN_SECRET_LEN]


def _redact(value: Any, secrets: list[str]) -> Any:
    return MASK if any(s in str(value) for s in secrets) else value


def check_parameters(parameters: Mapping[str, Any], declared: Mapping[str, Any] | None) -> None:
    """Refuse secret-looking names and names the notebook does not declare (`declared` None: no cell)."""
    secrets = _secret_values()
    for name, value in parameters.items():
        if _SECRET_NAME.search(name):
            raise ValidationError(
                name,
                MASK,
                "no secrets as notebook parameters",
                "Papermill writes parameters into the executed notebook; set RUNCOMFY_TOKEN in the "
                "environment instead (the notebook's kernel inherits it).",
            )
        if declared is None:
            raise ValidationError(
                name,
                _redact(value, secrets),
                "no parameters: the notebook has no cell tagged 'parameters'",
                "Tag the cell that sets the defaults with 'parameters' (Jupyter: Property Inspector → "
                "Cell Tags), or run it without -p.",
            )
        if name not in declared:
            valid = ", ".join(sorted(declared)) or "(none: its parameters cell assigns nothing)"
            raise ValidationError(name, _redact(value, secrets), f"one of the notebook's parameters: {valid}")


def notebook_parameters(notebook: str | Path) -> dict[str, dict[str, Any]] | None:
    """The parameters a notebook declares (name → papermill's description), None with no such cell."""
    import nbformat
    import papermill

    nb = nbformat.read(str(notebook), as_version=4)
    cell = next((c for c in nb.cells if "parameters" in c.metadata.get("tags", [])), None)
    if cell is None:
        return None
    try:
        return papermill.inspect_notebook(str(notebook))
    except ValueError:  # no kernelspec in the notebook's metadata; zlab runs it as Python anyway
        from papermill.translators import PythonTranslator

        return {p.name: p._asdict() for p in PythonTranslator.inspect(cell)}


# ---------------------------------------------------------------- kernel


def kernel_for_current_python() -> str:
    """The name of a Jupyter kernel that runs this interpreter (`sys.executable`), installing one if needed.

    `python3` is used when it resolves to this interpreter (true inside a venv with ipykernel); otherwise
    a spec named `zlab-<hash of sys.executable>` is installed into `sys.prefix` (or the user's Jupyter
    folder when that is read-only), once.
    """
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    own = "zlab-" + hashlib.sha256(sys.executable.encode()).hexdigest()[:10]
    for name in ("python3", own):
        try:
            spec = KernelSpecManager().get_kernel_spec(name)
        except NoSuchKernel:
            continue
        if spec.argv and _is_current_python(spec.argv[0]):
            return name
    from ipykernel.kernelspec import install

    display = f"Python {sys.version_info.major}.{sys.version_info.minor} (zlab, {sys.prefix})"
    try:
        install(kernel_name=own, display_name=display, prefix=sys.prefix)
    except OSError:
        install(kernel_name=own, display_name=display, user=True)
    spec = KernelSpecManager().get_kernel_spec(own)
    if not _is_current_python(spec.argv[0]):
        raise ConfigError(f"installed kernel {own!r} does not run {sys.executable}; check JUPYTER_PATH")
    return own


def _is_current_python(argv0: str) -> bool:
    major, minor = sys.version_info[:2]
    if argv0 in {"python", f"python{major}", f"python{major}.{minor}"}:
        return True  # jupyter_client replaces these bare names by sys.executable of the launching process
    a, b = Path(os.path.abspath(argv0)), Path(os.path.abspath(sys.executable))
    # a venv's python is a symlink to the base interpreter: same binary, but only the venv's
    # folder gives the venv's packages, so the folder must match too
    return a.parent == b.parent and os.path.realpath(a) == os.path.realpath(b)


# ---------------------------------------------------------------- running


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
    params = {name: _plain(value) for name, value in (parameters or {}).items()}
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
    secrets = _secret_values()
    scrubbed = _scrub(out_nb, secrets)
    error = _describe_failure(out_nb, child_error) if child_error is not None else None
    rendered = _render_html(out_nb, out_html, hide_code) if out_nb.is_file() else None
    scrubbed = _scrub(out_html, secrets) or scrubbed
    if scrubbed:
        warnings.warn(
            f"a RunComfy token appeared in the report in {out_dir} and was replaced by {MASK}; "
            "don't print or display secrets in notebooks",
            stacklevel=2,
        )
    if error is not None:
        error = _scrub_text(error, secrets)
    shown = {name: _redact(value, secrets) for name, value in params.items()}  # reprs show no token
    return Report(
        notebook=out_nb,
        html=rendered,
        out_dir=out_dir,
        parameters=shown,
        ok=error is None,
        error=error,
        scrubbed=scrubbed,
    )


def _plain(value: Any) -> Any:
    """numpy scalars, tuples and paths as the plain values papermill writes into the notebook."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    item = getattr(value, "item", None)  # numpy scalar → Python scalar
    return item() if callable(item) and getattr(value, "shape", None) == () else value


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
    cmd = [sys.executable, "-c", "from zlab.report import _child_main; _child_main()"]
    # PYDEVD_…: quiets a debugger warning per kernel. ZLAB_REPORT: progress widgets render blank in HTML,
    # so sweeps run inside a report show only their summary line.
    env = {**os.environ, "PYDEVD_DISABLE_FILE_VALIDATION": "1", "ZLAB_REPORT": "1"}
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


def _render_html(out_nb: Path, out_html: Path, hide_code: bool) -> Path | None:
    import nbformat
    from nbconvert import HTMLExporter

    try:
        nb = nbformat.read(str(out_nb), as_version=4)
        exporter = HTMLExporter(
            exclude_input=hide_code, exclude_input_prompt=hide_code, exclude_output_prompt=hide_code, embed_images=True
        )
        body, _ = exporter.from_notebook_node(
            nb, resources={"metadata": {"name": out_nb.stem, "path": str(out_nb.parent)}}
        )
    except Exception as exc:  # a failed run still keeps its .ipynb; the HTML is a bonus there
        warnings.warn(f"could not render {out_nb} to HTML: {exc}", stacklevel=3)
        return None
    out_html.write_text(body, encoding="utf-8")
    return out_html


# ---------------------------------------------------------------- secrets


def _secret_forms(secret: str) -> set[str]:
    """Ways a secret can show up in an output file: raw, JSON/HTML/URL-escaped, inside base64 text."""
    forms = {secret, json.dumps(secret)[1:-1], html.escape(secret), urllib.parse.quote(secret, safe="")}
    raw = secret.encode()
    for shift in range(3):  # base64 of text that contains the secret at any byte offset
        for enc in (base64.b64encode, base64.urlsafe_b64encode):
            full = enc(b"\0" * shift + raw).decode()
            start = math.ceil(shift * 4 / 3)  # drop chars that mix in the preceding bytes
            end = (shift + len(raw)) * 8 // 6  # and the ones that mix in what follows
            if end - start >= 8:
                forms.add(full[start:end])
    return {f for f in forms if f}


def _scrub_text(text: str, secrets: list[str]) -> str:
    for secret in secrets:
        for form in sorted(_secret_forms(secret), key=len, reverse=True):
            text = text.replace(form, MASK)
    return text


def _scrub(path: Path, secrets: list[str]) -> bool:
    """Replace every secret form in `path` by MASK; True when something was replaced."""
    if not secrets or not path.is_file():
        return False
    text = path.read_text(encoding="utf-8")
    clean = _scrub_text(text, secrets)
    if clean == text:
        return False
    path.write_text(clean, encoding="utf-8")
    return True


# ---------------------------------------------------------------- command line


def report_main(
    notebook: str, param_pairs: list[tuple[str, str]], out: str | None, hide_code: bool, timeout: float
) -> int:
    """`zlab report NOTEBOOK [-p NAME VALUE]... [--out DIR] [--hide-code] [--timeout S]`: the exit code.

    0: the notebook ran; 1: it failed (the executed notebook and HTML are still written); 2: bad input.
    """
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            started = time.monotonic()
            rep = report(notebook, parse_param_pairs(param_pairs), out, timeout=timeout, hide_code=hide_code)
    except ZlabError as exc:
        print(f"zlab report: error: {exc}", file=sys.stderr)
        return 2
    for w in caught:
        print(f"zlab report: warning: {w.message}", file=sys.stderr)
    took = time.monotonic() - started
    if not rep.ok:
        print(f"zlab report: {notebook} failed: {rep.error}", file=sys.stderr)
        print(f"  executed notebook: {rep.notebook}" + (f"\n  html: {rep.html}" if rep.html else ""), file=sys.stderr)
        return 1
    print(f"zlab report: {notebook} ran in {took:.1f} s")
    print(f"  html: {rep.html}\n  executed notebook: {rep.notebook}")
    return 0
