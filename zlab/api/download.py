"""Fetching output files: their own HTTP client, no token, bounded in size and time, bytes checked.

Output URLs are pre-signed or public CDN links on other hosts, of undocumented lifetime, so they
are fetched at once by a client that never carries the API token, follows a few redirects to any
host, and gives each file a total deadline (a trickling body cannot hold a cell). The bytes decide
what the file is (PNG, JPEG or WebP), never the Content-Type, which CDNs often leave generic; an
HTML page, an empty body or a truncated image is refused before anything is written. Writing is
atomic: a crash never leaves half a file that a later run could mistake for a finished image.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import dataclasses
import io
import os
import secrets
from pathlib import Path
from urllib.parse import unquote_to_bytes, urlsplit

import httpx
from PIL import Image

from zlab.api.http import tls
from zlab.core.retry import RetryPolicy, backoff_s
from zlab.errors import DownloadError

MAX_BYTES = 64 * 1024 * 1024  # a 1536×1536 PNG is ~7 MB at worst; 64 MB is clearly not an image we asked for
MAX_PIXELS = 1536 * 1536 * 4
MAX_REDIRECTS = 5
FILE_DEADLINE_S = 180.0  # one file, all its bytes, at most
FILE_FIRST_BYTES_S = 20.0  # until the answer's headers, and the base of a file's deadline
MIN_RATE = 64 * 1024  # bytes/s a file must at least arrive at: its deadline scales with its announced size
FETCH_TOTAL_S = 150.0  # one file with all its retries: a trickling file never holds a cell much longer
_RETRYABLE = {408, 425, 429, 500, 502, 503, 504}
_TIMEOUT = httpx.Timeout(connect=10.0, read=30.0, write=30.0, pool=30.0)


@dataclasses.dataclass(frozen=True, eq=False)
class Downloaded:
    """An output file that is a whole, decodable image: its bytes as served, the decoded image, its kind."""

    url: str
    data: bytes = dataclasses.field(repr=False)
    image: Image.Image = dataclasses.field(repr=False)
    suffix: str  # ".png", ".jpg" or ".webp", from the bytes

    @property
    def size(self) -> tuple[int, int]:
        return self.image.size


class Downloader:
    """Fetches output files: no credentials, redirects followed (a few, to any host), size and time capped."""

    def __init__(
        self,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        retry: RetryPolicy = RetryPolicy(attempts=5),
        max_bytes: int = MAX_BYTES,
        deadline_s: float = FILE_DEADLINE_S,
    ) -> None:
        self.retry, self.max_bytes, self.deadline_s = retry, max_bytes, deadline_s
        self.files = 0  # files fetched (for benchmarks)
        self._http = httpx.AsyncClient(
            transport=transport, verify=tls(), timeout=_TIMEOUT, follow_redirects=True, max_redirects=MAX_REDIRECTS
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def get(self, url: str) -> Downloaded:
        """Fetch and check one output image (an inline `data:` URI is read, not fetched); raises
        DownloadError saying what was wrong."""
        data = read_data_uri(url, self.max_bytes) if url[:5].lower() == "data:" else await self.fetch(url)
        image = decode_image(data, url=url)
        return Downloaded(url, data, image, image_suffix(data))

    async def fetch(self, url: str) -> bytes:
        """GET `url` with no credentials; retry passing faults; refuse non-http(s) URLs and oversized bodies."""
        if urlsplit(url).scheme not in ("http", "https"):
            raise DownloadError(f"refusing to fetch output URL {url!r}: only http(s) URLs are downloaded", url=url)
        self.files += 1
        give_up = asyncio.get_running_loop().time() + max(self.deadline_s, FETCH_TOTAL_S)
        for attempt in range(1, self.retry.attempts + 1):
            try:
                first = min(self.deadline_s, FILE_FIRST_BYTES_S, give_up - asyncio.get_running_loop().time())
                async with asyncio.timeout(max(0.0, first)) as limit:
                    status, data = await self._once(url, limit, give_up)
            except DownloadError:
                raise
            except (httpx.TooManyRedirects, httpx.InvalidURL, httpx.UnsupportedProtocol) as exc:
                raise DownloadError(f"could not download {url}: {exc}", url=url) from exc
            except (httpx.TransportError, TimeoutError) as exc:
                if attempt >= self.retry.attempts:
                    what = "took longer than the file deadline" if isinstance(exc, TimeoutError) else type(exc).__name__
                    raise DownloadError(f"could not download {url}: {what}", url=url, transient=True) from exc
                wait = backoff_s(self.retry, attempt, "lost")
                if asyncio.get_running_loop().time() + wait >= give_up:
                    raise DownloadError(f"could not download {url}: out of time", url=url, transient=True) from exc
                await asyncio.sleep(wait)
                continue
            if status == 200:
                return data
            if status in _RETRYABLE and attempt < self.retry.attempts:
                await asyncio.sleep(backoff_s(self.retry, attempt, "unavailable"))
                continue
            raise DownloadError(f"output file answered HTTP {status}: {url}", url=url, transient=True)
        raise DownloadError(f"could not download {url} after {self.retry.attempts} attempts", url=url, transient=True)

    async def _once(self, url: str, limit: asyncio.Timeout, give_up: float) -> tuple[int, bytes]:
        async with self._http.stream("GET", url, headers={"Accept": "image/*"}) as response:
            if response.status_code != 200:
                return response.status_code, b""
            declared = response.headers.get("Content-Length")
            if declared and declared.isdigit() and int(declared) > self.max_bytes:
                raise DownloadError(f"output file is {int(declared):,} bytes, over the {self.max_bytes:,} cap", url=url)
            # The body's deadline scales with its size (unknown: the most a file may take), within the total.
            size = int(declared) if declared and declared.isdigit() else self.max_bytes
            body_s = min(self.deadline_s, FILE_FIRST_BYTES_S + size / MIN_RATE)
            limit.reschedule(min(asyncio.get_running_loop().time() + body_s, give_up))
            chunks, size = [], 0
            async for chunk in response.aiter_bytes():
                size += len(chunk)
                if size > self.max_bytes:
                    raise DownloadError(f"output file exceeds the {self.max_bytes:,}-byte cap: {url}", url=url)
                chunks.append(chunk)
            return 200, b"".join(chunks)


def read_data_uri(uri: str, max_bytes: int = MAX_BYTES) -> bytes:
    """The bytes of a `data:[type][;base64],…` URI (an image a service returned inline)."""
    head, sep, payload = uri.partition(",")
    if not sep:
        raise DownloadError("output is a data: URI with no data", url=uri[:64])
    if len(payload) > max_bytes * 4 // 3 + 4:
        raise DownloadError(f"output data: URI is over the {max_bytes:,}-byte cap", url=uri[:64])
    try:
        if head.lower().endswith(";base64"):
            return base64.b64decode("".join(payload.split()), validate=True)
        return unquote_to_bytes(payload)
    except (binascii.Error, ValueError) as exc:
        raise DownloadError(f"output data: URI does not decode ({exc})", url=uri[:64]) from exc


def decode_image(data: bytes, *, url: str | None = None) -> Image.Image:
    """Decode fully (a truncated file fails here), refusing bombs and anything that is not PNG/JPEG/WebP."""
    if not data:
        raise DownloadError("output file is empty (0 bytes)", url=url, transient=True)
    if image_suffix(data) == ".img":
        head = data[:64].lstrip().lower()
        kind = "an HTML page" if head.startswith((b"<!doctype", b"<html", b"<")) else "not a PNG, JPEG or WebP image"
        raise DownloadError(f"output file is {kind}, not an image", url=url, transient=True)
    try:
        with Image.open(io.BytesIO(data)) as probe:
            width, height = probe.size
            if width * height > MAX_PIXELS:
                raise DownloadError(f"output image claims {width}×{height} pixels: refusing to decode it", url=url)
            probe.load()
            return probe.copy()
    except DownloadError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise DownloadError(f"output image is a decompression bomb: refusing to decode it ({exc})", url=url) from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise DownloadError(f"output file is not a valid image ({exc})", url=url, transient=True) from exc


def write_atomic(path: Path, data: bytes) -> None:
    """Write to a temporary file beside `path`, fsync, then rename: readers see all or nothing.
    The file gets the mode any new file gets here (0644 under the usual umask), not mkstemp's 0600."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = str(path.parent / f".{path.name}.{secrets.token_hex(6)}.part")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
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


IMAGE_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}


def write_image_as(path: Path, data: bytes, image: Image.Image) -> bool:
    """Write an output image at `path` in the format its suffix names: the bytes as served when they are
    that format already, else `image` re-encoded (JPEG and WebP at quality 95). True when converted."""
    wanted = IMAGE_FORMATS.get(path.suffix.lower())
    if wanted is None:
        raise ValueError(f"{path}: not one of {', '.join(IMAGE_FORMATS)}")
    if wanted == IMAGE_FORMATS.get(image_suffix(data)):
        write_atomic(path, data)
        return False
    buffer = io.BytesIO()
    picture = image.convert("RGB") if wanted == "JPEG" else image
    picture.save(buffer, format=wanted, **({"quality": 95} if wanted != "PNG" else {}))
    write_atomic(path, buffer.getvalue())
    return True
