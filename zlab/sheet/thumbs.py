"""Thumbnails: decode at reduced size and cache them on disk, so sheets never hold full images.

JPEGs are decoded straight at 1/2, 1/4 or 1/8 scale (`Image.draft`); PNGs must be decoded whole, one
at a time, then shrunk by an integer box filter (`reduce`, area averaging) and, only when the ratio is
not whole, a small Lanczos resample. Decoding is the floor of a cold sheet, so everything after it is
kept to a few percent of it: the box reduce costs ~1 ms where a Lanczos from full size costs ~5, and
thumbnails are cached as uncompressed PNG (written in ~0.3 ms where Pillow's fastest level takes ~5).
Thumbnails are cached under the run directory (`.zlab/thumbs/`), keyed by the image's path, mtime,
size and the thumbnail width, so a changed image is never served stale.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from zlab.sheet import png

CACHE_DIR = Path(".zlab") / "thumbs"
THUMB_WIDTH = 256  # contact_sheet's default cell width: the size a run caches as its images arrive
_VERSION = "2"  # bump when the thumbnail recipe changes, so old cache entries stop matching


@dataclass(frozen=True)
class Missing:
    """Why a cell has no thumbnail; drawn as the placeholder text."""

    reason: str


def cache_dir(root: str | os.PathLike[str]) -> Path:
    """Where a run directory keeps its thumbnails."""
    return Path(root) / CACHE_DIR


def cache_key(path: Path, stat: os.stat_result, width: int) -> str:
    """Cache file name for `path` at `width`: changes whenever the file does."""
    ident = f"{_VERSION}|{path.resolve()}|{stat.st_mtime_ns}|{stat.st_size}|{width}"
    return hashlib.sha1(ident.encode()).hexdigest() + ".png"


def _flatten(im: Image.Image) -> Image.Image:
    """RGB, with transparency composited onto white (the sheet's background)."""
    if im.mode == "RGB":
        return im
    if im.mode in ("RGBA", "LA") or "transparency" in im.info:
        rgba = im.convert("RGBA")
        out = Image.new("RGB", rgba.size, "white")
        out.paste(rgba, mask=rgba.getchannel("A"))
        return out
    return im.convert("RGB")


def decode_thumbnail(path: str | os.PathLike[str], width: int) -> Image.Image:
    """Open `path` and return an RGB image `width` pixels wide, true aspect ratio.

    Decodes at reduced size where the format allows; small images are scaled up to `width`.
    """
    with Image.open(path) as opened:
        w, h = opened.size
        # JPEG: the decoder itself skips detail (DCT scaling); other formats ignore draft.
        opened.draft("RGB", (width, max(1, round(h * width / w))))
        return shrink(opened, width, (w, h))


def shrink(im: Image.Image, width: int, size: tuple[int, int] | None = None) -> Image.Image:
    """The thumbnail recipe: RGB, `width` wide, true aspect ratio of `size` (default: the image's own)."""
    w, h = size or im.size
    height = max(1, round(h * width / w))
    if im.mode not in ("RGB", "RGBA", "L", "LA"):
        im = _flatten(im)  # P / CMYK / I;16 cannot be resampled well as they are
    factor = min(im.width // width, im.height // height)
    if factor > 1:
        # An integer box filter averages each factor×factor block: a proper downsample at a fifth of
        # the cost of a Lanczos from full size; a whole ratio (1024 → 256) needs nothing more.
        im = im.reduce(factor)
    if im.size != (width, height):
        im = im.resize((width, height), Image.Resampling.LANCZOS)
    out = _flatten(im)
    out.load()
    return out


def prime(path: str | os.PathLike[str], image: Image.Image, width: int, root: str | os.PathLike[str]) -> None:
    """Cache the thumbnail of an image already decoded (a run does this as it saves each image),
    so the first sheet of a run directory needs no full decodes."""
    path = Path(path)
    _store(cache_dir(root) / cache_key(path, path.stat(), width), shrink(image.copy(), width))


def load_thumbnail(
    path: str | os.PathLike[str], width: int, cache: str | os.PathLike[str] | None = None
) -> Image.Image:
    """A thumbnail of `path`, `width` wide, read from or written to the `cache` directory if given.

    Raises FileNotFoundError when the image is gone, OSError when it cannot be decoded.
    """
    path = Path(path)
    stat = path.stat()
    entry = Path(cache) / cache_key(path, stat, width) if cache is not None else None
    if entry is not None and entry.exists():
        try:
            with Image.open(entry) as im:
                im.load()
                return im.convert("RGB")
        except OSError:
            pass  # a torn or foreign file: decode again and overwrite it
    thumb = decode_thumbnail(path, width)
    if entry is not None:
        _store(entry, thumb)
    return thumb


def _store(entry: Path, thumb: Image.Image) -> None:
    """Write atomically (temp file + rename) so concurrent sheets never read half a thumbnail."""
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=entry.parent, suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            # Uncompressed (level 0): a cold sheet writes every thumbnail, and even PNG's fastest
            # compression costs as much as a fifth of the decode it saves next time.
            f.write(png.encode(thumb, level=0, workers=1))
        os.replace(tmp, entry)
    except OSError:
        pass  # read-only run directory: the sheet still works, just without a cache


def _one(path: Path | None, width: int, cache: Path | None) -> Image.Image | Missing:
    if path is None:
        return Missing("no image")
    try:
        return load_thumbnail(path, width, cache)
    except FileNotFoundError:
        return Missing(f"file missing: {path.name}")
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        return Missing(f"unreadable: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}")


def load_many(
    paths: Iterable[Path | None], width: int, cache: Path | None = None, workers: int | None = None
) -> Iterator[Image.Image | Missing]:
    """Thumbnails for `paths` in order, decoded on a few threads (Pillow's decoders release the GIL).

    At most about `workers` full-size images are in memory at once.
    """
    workers = workers or min(8, (os.cpu_count() or 2) + 1)
    items = list(paths)
    if workers <= 1 or len(items) <= 1:
        for p in items:
            yield _one(p, width, cache)
        return
    with ThreadPoolExecutor(workers) as pool:
        yield from pool.map(lambda p: _one(p, width, cache), items)
