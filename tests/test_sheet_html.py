"""The HTML sheet: self-contained (data-URI thumbnails), links that resolve, hover text, and a real render
in headless Chromium when one is installed."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import numpy as np
import pandas as pd
import pytest
from browser_check import CHROMIUM, MISSING, screenshot
from PIL import Image

from zlab.sheet import contact_sheet

COLOURS = {(1, 0.0): (220, 30, 30), (1, 1.0): (30, 200, 40), (2, 0.0): (30, 60, 220), (2, 1.0): (240, 200, 20)}


def make_run(root: Path, failed: bool = True) -> pd.DataFrame:
    (root / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for (seed, scale), rgb in COLOURS.items():
        key = f"s{seed}x{scale}"
        path = f"images/{key} #1.png"  # a space and '#' must survive URL quoting
        Image.new("RGB", (64, 96), rgb).save(root / path)
        rows.append(
            {
                "key": key,
                "prompt": "a <b>bold</b> fox",
                "width": 64,
                "height": 96,
                "seed": seed,
                "lora1_path": "a/b",
                "lora1_scale": scale,
                "status": "succeeded",
                "error": None,
                "image_path": path,
            }
        )
    if failed:
        rows.append(
            {
                "key": "s3x0.0",
                "prompt": "a <b>bold</b> fox",
                "width": 64,
                "height": 96,
                "seed": 3,
                "lora1_path": "a/b",
                "lora1_scale": 0.0,
                "status": "failed",
                "error": "boom & bust",
                "image_path": None,
            }
        )
    df = pd.DataFrame(rows)
    df.attrs["run_dir"] = str(root)
    return df


class _Collect(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.imgs: list[dict] = []
        self.links: list[str] = []
        self.headers: list[str] = []
        self._in_th = False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.imgs.append(a)
        elif tag == "a":
            self.links.append(a["href"])
        elif tag == "th":
            self._in_th = True

    def handle_endtag(self, tag):
        if tag == "th":
            self._in_th = False

    def handle_data(self, data):
        if self._in_th and data.strip():
            self.headers.append(data.strip())


def parse(path: Path) -> _Collect:
    p = _Collect()
    p.feed(path.read_text(encoding="utf-8"))
    return p


def test_html_is_self_contained_and_links_resolve(tmp_path):
    df = make_run(tmp_path / "run")
    sheet = contact_sheet(df, x="lora1_scale", y="seed", cell_width=64)
    out = sheet.to_html(tmp_path / "elsewhere" / "sheet.html")  # not in the run dir: links must still work
    doc = parse(out)
    assert len(doc.imgs) == 4
    assert all(img["src"].startswith("data:image/jpeg;base64,") for img in doc.imgs)
    assert len(doc.links) == 4
    for href in doc.links:
        assert not href.startswith(("/", "file:")), href  # relative, so the folder can move
        url = urlsplit(href)  # read as a browser does: '#' starts a fragment, '%20' is a space
        assert not url.scheme and not url.fragment, href
        assert (out.parent / unquote(url.path)).resolve().is_file(), href
    assert doc.headers == ["lora1_scale 0", "lora1_scale 1", "seed 1", "seed 2", "seed 3"]
    text = out.read_text()
    assert 'src="http' not in text and "<script" not in text
    assert "failed: boom &amp; bust" in text  # placeholder, escaped
    assert "<b>bold</b>" not in text and "a &lt;b&gt;bold&lt;/b&gt; fox" in text


def test_hover_shows_parameters(tmp_path):
    sheet = contact_sheet(make_run(tmp_path), x="lora1_scale", y="seed", cell_width=64)
    doc = parse(sheet.to_html(tmp_path / "sheet.html"))
    tips = {img["alt"]: img["title"] for img in doc.imgs}
    assert set(tips) == {"s1x0.0", "s1x1.0", "s2x0.0", "s2x1.0"}
    tip = tips["s2x1.0"].splitlines()
    assert "key: s2x1.0" in tip and "lora1_scale: 1" in tip and "seed: 2" in tip and "lora1_path: a/b" in tip


def test_thumbnails_are_the_images(tmp_path):
    import base64
    import io

    sheet = contact_sheet(make_run(tmp_path, failed=False), x="lora1_scale", y="seed", cell_width=64)
    doc = parse(sheet.to_html(tmp_path / "sheet.html"))
    for img in doc.imgs:
        data = base64.b64decode(img["src"].split(",", 1)[1])
        thumb = Image.open(io.BytesIO(data)).convert("RGB")
        seed, scale = re.fullmatch(r"s(\d)x([\d.]+)", img["alt"]).groups()
        expect = COLOURS[(int(seed), float(scale))]
        assert thumb.size == (64, 96)
        assert all(abs(a - b) <= 6 for a, b in zip(thumb.getpixel((32, 48)), expect, strict=True))


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason=MISSING)
def test_renders_in_headless_chromium(tmp_path):
    sheet = contact_sheet(make_run(tmp_path / "run"), x="lora1_scale", y="seed", cell_width=96)
    page = sheet.to_html(tmp_path / "sheet.html")
    screen = screenshot(page, tmp_path / "shot.png", tmp_path / "profile", size=(800, 800))
    pixels = screen.reshape(-1, 3).astype(int)
    assert pixels.std() > 10, "screenshot is blank"
    for rgb in COLOURS.values():  # every thumbnail decoded and painted
        near = (np.abs(pixels - rgb).sum(axis=1) <= 24).sum()
        assert near > 1000, f"colour {rgb} not found in the screenshot"
