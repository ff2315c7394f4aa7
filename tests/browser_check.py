"""Headless Chromium for the tests that look at pages as a person would (HTML sheets, reports)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
from PIL import Image

CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser") if shutil.which(n)), None)
MISSING = "headless Chromium is not installed (apt-get install -y chromium): the browser check did not run"


def screenshot(page: Path, png: Path, profile: Path, size: tuple[int, int] = (1200, 2000)) -> np.ndarray:
    """Render `page` offline with a fresh profile; returns the screenshot as an RGB array."""
    assert CHROMIUM is not None, MISSING
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--hide-scrollbars",
    ]
    subprocess.run(
        [CHROMIUM, *flags, f"--user-data-dir={profile}", f"--screenshot={png}", f"--window-size={size[0]},{size[1]}",
         page.resolve().as_uri()],
        capture_output=True, timeout=60, check=False,
    )  # fmt: skip
    assert png.is_file(), "chromium wrote no screenshot"
    with Image.open(png) as shot:
        return np.asarray(shot.convert("RGB"))
