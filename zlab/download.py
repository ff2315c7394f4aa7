"""Fetching output files: no token, retries on CDN faults, and proof that the bytes are the image asked for.

Output URLs are public CDN links of undocumented lifetime, so they are fetched at once, without the
API token, with a size cap, and checked (an image, fully decodable, of the requested size, not a
decompression bomb) before anything is written. Writing is atomic: a crash never leaves half a file
that a later run could mistake for a finished image.
"""

from __future__ import annotations

import asyncio
import io
import os
import tempfile
from pathlib import Path
from urllib.parse import urlsplit

import httpx
from PIL import Image

from zlab.errors import DownloadError
from zlab.retry import RetryPolicy, backoff_s

MAX_BYTES = 64 * 1024 * 1024  # a 1536×1536 PNG is ~7 MB at worst; 64 MB is clearly not an image we asked for
MAX_PIXELS = 1536 * 1536 * 4
_RETRYABLE = {408, 425, 429, 500, 502, 503, 504}


async def fetch(
    http: httpx.AsyncClient,
    url: str,
    *,
    retry: RetryPolicy = RetryPolicy(attempts=5),
    max_bytes: int = MAX_BYTES,
) -> bytes:
    """GET `url` with no credentials; retry transient faults; refuse non-http(s) URLs and oversized bodies."""
    if urlsplit(url).scheme not in ("http", "https"):
        raise DownloadError(f"refusing to fetch output URL {url!r}: only http(s) URLs are downloaded", url=url)
    for attempt in range(1, retry.attempts + 1):
        try:
            async with http.stream("GET", url, headers={"Accept": "image/*"}) as response:
                if response.status_code in _RETRYABLE and attempt < retry.attempts:
                    await asyncio.sleep(backoff_s(retry, attempt, "unavailable"))
                    continue
                if response.status_code != 200:
                    raise DownloadError(
                        f"output file answered HTTP {response.status_code}: {url}",
                        url=url,
                        transient=response.status_code in _RETRYABLE or response.status_code == 404,
                    )
                declared = response.headers.get("Content-Length")
                if declared and declared.isdigit() and int(declared) > max_bytes:
                    raise DownloadError(f"output file is {int(declared):,} bytes, over the {max_bytes:,} cap", url=url)
                chunks, size = [], 0
                async for chunk in response.aiter_bytes():
                    size += len(chunk)
                    if size > max_bytes:
                        raise DownloadError(f"output file exceeds the {max_bytes:,}-byte cap: {url}", url=url)
                    chunks.append(chunk)
                content_type = response.headers.get("Content-Type", "")
                if content_type and not content_type.startswith(("image/", "application/octet-stream")):
                    raise DownloadError(f"output file is {content_type!r}, not an image: {url}", url=url)
                return b"".join(chunks)
        except (httpx.TransportError, httpx.TimeoutException) as exc:
            if attempt >= retry.attempts:
                raise DownloadError(f"could not download {url}: {type(exc).__name__}", url=url, transient=True) from exc
            await asyncio.sleep(backoff_s(retry, attempt, "lost"))
    raise DownloadError(f"could not download {url} after {retry.attempts} attempts", url=url, transient=True)


def decode_image(data: bytes, *, expected_size: tuple[int, int] | None = None, url: str | None = None) -> Image.Image:
    """Decode fully (a truncated file fails here), refusing bombs and images of the wrong size."""
    try:
        with Image.open(io.BytesIO(data)) as probe:
            width, height = probe.size
            if width * height > MAX_PIXELS:
                raise DownloadError(f"output image claims {width}×{height} pixels: refusing to decode it", url=url)
            if expected_size and (width, height) != expected_size:
                w, h = expected_size
                raise DownloadError(f"output image is {width}×{height}, but {w}×{h} was requested", url=url)
            probe.load()
            return probe.copy()
    except DownloadError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise DownloadError(f"output image is a decompression bomb: refusing to decode it ({exc})", url=url) from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise DownloadError(f"output file is not a valid image ({exc})", url=url) from exc


def write_atomic(path: Path, data: bytes) -> None:
    """Write to a temporary file beside `path`, fsync, then rename: readers see all or nothing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def image_suffix(data: bytes) -> str:
    """The file suffix for image bytes, from their signature (outputs may be PNG, JPEG or WebP)."""
    if data.startswith(b"\x89PNG"):
        return ".png"
    if data.startswith(b"\xff\xd8"):
        return ".jpg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return ".webp"
    return ".img"
