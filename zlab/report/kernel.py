"""Which Jupyter kernel runs a report: one for this very interpreter, installed once if needed."""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

from zlab.errors import ConfigError


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
