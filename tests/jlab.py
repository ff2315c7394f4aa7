"""A real JupyterLab in headless Chromium, for the tests that use widgets as a person would.

`JupyterLab(root)` starts ``jupyter lab`` on a free loopback port with private config, data-less
settings and runtime folders (nothing of the developer's own setup is read or written), and drives
Debian's Chromium (never a downloaded browser) with Playwright. The lab is started with
``expose_app_in_browser`` so a test can run commands (run all, save, restart) without menus and dialogs.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser") if shutil.which(n)), None)
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def missing() -> str | None:
    """Why the JupyterLab checks cannot run here (None when they can)."""
    if CHROMIUM is None:
        return "headless Chromium is not installed (apt-get install -y chromium): the JupyterLab checks did not run"
    for module in ("jupyterlab", "playwright", "anywidget"):
        try:
            __import__(module)
        except ImportError:
            return f"{module} is not installed (pip install -e '.[test]'): the JupyterLab checks did not run"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def notebook(path: Path, *sources: str) -> Path:
    """Write a notebook of code cells (no outputs) for the lab to open."""
    cells = [
        {"cell_type": "code", "execution_count": None, "metadata": {}, "outputs": [], "source": src} for src in sources
    ]
    nb = {
        "cells": cells,
        "metadata": {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"}},
        "nbformat": 4,
        "nbformat_minor": 5,
    }
    path.write_text(json.dumps(nb), encoding="utf-8")
    return path


def launch_chromium(playwright: Any, profile: Path, offline: bool = False) -> Any:
    """A persistent Chromium context with a fresh profile (`offline`: the network is off)."""
    context = playwright.chromium.launch_persistent_context(
        str(profile),
        executable_path=CHROMIUM,
        headless=True,
        args=FLAGS,
        viewport={"width": 1400, "height": 1000},
        offline=offline,
    )
    return context


class JupyterLab:
    """``jupyter lab`` serving `root` on loopback, and one Chromium page on it."""

    app = "jupyterlab"  # the module run with -m
    path = "lab/tree"  # where a notebook opens

    def __init__(self, root: Path, work: Path) -> None:
        self.root, self.work = root, work
        self.port = free_port()
        self.token = "zlab-test-" + os.urandom(6).hex()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {
            **os.environ,
            "JUPYTER_CONFIG_DIR": str(work / "config"),
            "JUPYTER_RUNTIME_DIR": str(work / "runtime"),
            "JUPYTERLAB_SETTINGS_DIR": str(work / "settings"),
            "JUPYTERLAB_WORKSPACES_DIR": str(work / "workspaces"),
            "PYDEVD_DISABLE_FILE_VALIDATION": "1",
        }
        cmd = [
            sys.executable, "-m", self.app, "--no-browser", f"--port={self.port}", "--ip=127.0.0.1",
            f"--IdentityProvider.token={self.token}", f"--ServerApp.root_dir={root}", "--allow-root",
            "--LabApp.expose_app_in_browser=True", "--JupyterNotebookApp.expose_app_in_browser=True",
            "--LabApp.news_url=",
            "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
            "--ServerApp.disable_check_xsrf=True", "--LanguageServerManager.autodetect=False",
        ]  # fmt: skip
        # No "get notified about Jupyter news?" toast over the widgets in screenshots.
        news = work / "settings" / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings"
        news.parent.mkdir(parents=True, exist_ok=True)
        news.write_text('{"fetchNews": "false"}')
        self.log = (work / "lab.log").open("w")
        self.proc = subprocess.Popen(cmd, env=env, stdout=self.log, stderr=subprocess.STDOUT, cwd=root)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"{self.url}/api/status?token={self.token}", timeout=2).read()
                break
            except OSError:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"jupyter lab exited: {(work / 'lab.log').read_text()[-2000:]}") from None
                time.sleep(0.2)
        else:
            raise RuntimeError("jupyter lab did not start within 60 s")

    def open(self, page: Any, name: str) -> None:
        """Open notebook `name` and wait until its kernel is ready."""
        page.goto(f"{self.url}/{self.path}/{name}?token={self.token}&reset")
        page.wait_for_function("() => window.jupyterapp && window.jupyterapp.shell.currentWidget"
                               " && window.jupyterapp.shell.currentWidget.sessionContext", timeout=60_000)  # fmt: skip
        page.wait_for_function(
            "() => { const s = window.jupyterapp.shell.currentWidget.sessionContext;"
            " return s.session && s.session.kernel && s.session.kernel.status === 'idle'; }",
            timeout=60_000,
        )

    @staticmethod
    def run_all(page: Any) -> None:
        page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")

    @staticmethod
    def save(page: Any) -> None:
        page.evaluate("() => window.jupyterapp.commands.execute('docmanager:save')")
        page.wait_for_function("() => !window.jupyterapp.shell.currentWidget.context.model.dirty", timeout=20_000)

    @staticmethod
    def restart_kernel(page: Any) -> None:
        """Restart without the confirmation dialog, and wait for the new kernel to be idle."""
        page.evaluate("() => window.jupyterapp.shell.currentWidget.sessionContext.session.kernel.restart()")
        page.wait_for_function(
            "() => window.jupyterapp.shell.currentWidget.sessionContext.session.kernel.status === 'idle'",
            timeout=60_000,
        )

    @staticmethod
    def active_cell(page: Any) -> int:
        return int(page.evaluate("() => window.jupyterapp.shell.currentWidget.content.activeCellIndex"))

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


class Notebook7(JupyterLab):
    """``jupyter notebook`` (Notebook 7: one document per tab, its own page layout) on loopback."""

    app = "notebook"
    path = "notebooks"
