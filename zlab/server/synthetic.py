"""The synthetic image backend: fast, deterministic stand-ins for Z-Image Turbo outputs.

An image depends only on (prompt, seed, loras, size): the prompt and seed choose the composition
(a gradient and a handful of shapes, placed in relative coordinates so a size sweep shows the same
scene), and each LoRA applies a style effect chosen by its path, blended in along that LoRA's own
known strength curve (`curve_of`): nothing below its onset, a linear rise to full effect at its
saturation, a plateau, and for some LoRAs an overcook past which the image loses its detail; one
path in eight is a LoRA that does nothing at any scale. `curve_of` is the ground truth that tests and
`benchmarks/bench_find_scale.py` check `zlab.strength` against. Every image carries a small
"synthetic" mark in its bottom-right corner and a `zlab-backend: synthetic` PNG text chunk, so it
is never mistaken for a real render.

>>> from zlab.core.request import DEFAULT_LORA_PATH, Request
>>> img = render(Request("a red fox", seed=1, width=256, height=320))
>>> img.size
(256, 320)

The module also builds the malformed outputs used by the server's `bad_output` fault
(`bomb_png`, `oversized_png_chunks`, `WRONG_TYPE_HTML`), and `ImageCache`, the bounded cache
that renders off the event loop.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import math
import struct
import threading
import zlib
from collections import OrderedDict
from collections.abc import Callable, Iterator
from concurrent.futures import Executor
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter, ImageFont, ImageOps

from zlab.core.request import DEFAULT_LORA_PATH, Request

MARK = "synthetic"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
WRONG_TYPE_HTML = b"<!doctype html><html><body><h1>Access denied</h1><p>Sign in to continue.</p></body></html>"
_EFFECTS = ("saturate", "posterize", "hue", "stripes", "duotone", "solarize")


def _rng(*parts: object) -> np.random.Generator:
    digest = hashlib.sha256("\x00".join(map(str, parts)).encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "big"))


def strength(scale: float) -> float:
    """A generic saturating response (0 at 0, rising steeply through 0.3–1.2); `render` now follows
    each LoRA's own `curve_of(path)` instead, and this stays for callers that used it."""
    return 1.0 - math.exp(-0.9 * max(scale, 0.0))


@dataclass(frozen=True)
class LoraCurve:
    """How a synthetic LoRA responds to its scale: the truth `zlab.strength` is measured against.

    - `amount(scale)`: the share of the LoRA's style blended in: 0 up to `onset`, rising linearly to
      1 at `saturation`, 1 beyond (a pixel distance to the no-LoRA image therefore grows linearly on
      the ramp and stops growing at `saturation`);
    - `burn(scale)`: how far past `overcook` the scale is (0 before it); `render` blurs the image by
      `burn × short side / 16` pixels, so detail (a quality measure) drops from `overcook` on.

    `onset` and `saturation` are None for a LoRA that does nothing (`inert`); `overcook` is None for
    a LoRA that never overcooks.
    """

    onset: float | None
    saturation: float | None
    overcook: float | None

    @property
    def inert(self) -> bool:
        """True for a LoRA that changes nothing at any scale (as a LoRA whose keys failed to load)."""
        return self.onset is None

    def amount(self, scale: float) -> float:
        """The share of the style shown at `scale`, in [0, 1]."""
        if self.onset is None or self.saturation is None or scale <= self.onset:
            return 0.0
        return min(1.0, (scale - self.onset) / (self.saturation - self.onset))

    def burn(self, scale: float) -> float:
        """How far `scale` is past the overcook point (0 when it is not, or never overcooks)."""
        return 0.0 if self.overcook is None else max(0.0, scale - self.overcook)


# The schema's default LoRA ("Technically Color") behaves as such LoRAs are used: acting from about
# 0.1, full by 1.2 and overcooked from 1.6.
_DEFAULT_CURVE = LoraCurve(onset=0.1, saturation=1.2, overcook=1.6)


def curve_of(path: str) -> LoraCurve:
    """The known strength curve of the LoRA at `path` (stable across runs and machines).

    From a hash of the path: one path in eight is inert; otherwise the onset lies in [0.05, 0.8], the
    saturation 0.3–1.1 above it, and half the LoRAs overcook 0.3–0.8 above their saturation (some
    beyond 2, outside the usual range). Values are rounded to 0.01 so they read well in docs and tests.

    >>> curve_of("owner/lora-1")
    LoraCurve(onset=0.33, saturation=1.27, overcook=1.86)
    """
    if path == DEFAULT_LORA_PATH:
        return _DEFAULT_CURVE
    digest = hashlib.sha256(("curve\x00" + path).encode()).digest()
    if digest[0] % 8 == 0:
        return LoraCurve(None, None, None)
    u = [b / 255 for b in digest[1:4]]
    onset = round(0.05 + 0.75 * u[0], 2)
    saturation = round(onset + 0.3 + 0.8 * u[1], 2)
    overcook = round(saturation + 0.3 + 0.5 * u[2], 2) if digest[4] % 2 else None
    return LoraCurve(onset, saturation, overcook)


def effect_of(path: str) -> str:
    """The style effect a LoRA path stands for (stable across runs and machines)."""
    if path == DEFAULT_LORA_PATH:
        return "saturate"  # the schema's default LoRA is "Technically Color": vivid colour suits it
    return _EFFECTS[hashlib.sha256(path.encode()).digest()[0] % len(_EFFECTS)]


def _compose(prompt: str, seed: int, width: int, height: int) -> Image.Image:
    """The scene before any LoRA: a gradient and 6–12 shapes from an RNG of (prompt, seed).

    Positions and sizes are fractions of the frame, so the same (prompt, seed) shows the same scene
    at every size. The gradient is a 2×2 image scaled up: far cheaper than computing it per pixel.
    """
    rng = _rng("compose", prompt, seed)
    corners = rng.integers(20, 236, size=(2, 2, 3)).astype(np.uint8)
    image = Image.fromarray(corners, "RGB").resize((width, height), Image.Resampling.BILINEAR)
    draw = ImageDraw.Draw(image)
    short = min(width, height)
    for _ in range(int(rng.integers(6, 13))):
        cx, cy = rng.random() * width, rng.random() * height
        r = (0.05 + 0.2 * rng.random()) * short
        colour = tuple(int(c) for c in rng.integers(0, 256, size=3))
        box = (cx - r, cy - r * (0.6 + rng.random()), cx + r, cy + r * (0.6 + rng.random()))
        kind = int(rng.integers(0, 3))
        if kind == 0:
            draw.ellipse(box, fill=colour)
        elif kind == 1:
            draw.rectangle(box, fill=colour)
        else:
            draw.ellipse(box, outline=colour, width=max(2, int(r * 0.25)))
    return image


def _hue_matrix(degrees: float) -> tuple[float, ...]:
    """A rotation about the grey axis (R=G=B): a hue shift that keeps brightness, as a convert() matrix."""
    cos, sin = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
    a, b = cos + (1 - cos) / 3, (1 - cos) / 3
    c = math.sqrt(1 / 3) * sin
    return (a, b - c, b + c, 0.0, b + c, a, b - c, 0.0, b - c, b + c, a, 0.0)


def _full_effect(image: Image.Image, path: str) -> Image.Image:
    """The LoRA's effect at full strength; `render` blends it in by `curve_of(path).amount(scale)`.

    Pillow's C operations (lookup tables, colour matrices, blends) keep this to a few milliseconds.
    """
    name = effect_of(path)
    rng = _rng("lora", path)
    if name == "saturate":
        return ImageEnhance.Color(image).enhance(2.6)
    if name == "posterize":
        step = int(rng.integers(64, 110))
        poster = image.point([min(255, v // step * step + step // 2) for v in range(256)] * 3)
        return ImageEnhance.Contrast(poster).enhance(1.8)
    if name == "hue":
        return image.convert("RGB", _hue_matrix(float(rng.integers(90, 270))))
    if name == "stripes":
        period, (width, height) = int(rng.integers(12, 28)), image.size
        line = (np.arange(width + height) // period % 2 * 255).astype(np.uint8)
        # Diagonal bands: row y is the line shifted by y, a strided view of one 1-D array.
        bands = np.lib.stride_tricks.as_strided(line, shape=(height, width), strides=(1, 1))
        mask = Image.fromarray(np.ascontiguousarray(bands), "L")
        return Image.composite(image.point([v * 3 // 10 for v in range(256)] * 3), image, mask)
    if name == "duotone":
        # A dark and a light tone, so the image keeps its contrast (and its detail) under the style.
        dark, light = (tuple(int(c) for c in rng.integers(lo, lo + 56, size=3)) for lo in (0, 200))
        return ImageOps.colorize(image.convert("L"), dark, light)
    # Only the brightest tones invert: blending a full inversion in would cancel edges half-way up the ramp.
    return ImageOps.solarize(image, 192)


def mark_box(width: int, height: int) -> tuple[int, int, int, int]:
    """Where the "synthetic" mark sits (left, top, right, bottom): a black box in the bottom-right corner."""
    size = max(10, min(width, height) // 32)
    box_w, box_h = int(size * 5.6), int(size * 1.6)
    return width - box_w - 4, height - box_h - 4, width - 4, height - 4


def _stamp(image: Image.Image) -> None:
    left, top, right, bottom = mark_box(*image.size)
    size = max(10, min(image.size) // 32)
    draw = ImageDraw.Draw(image)
    draw.rectangle((left, top, right, bottom), fill=(0, 0, 0))
    draw.text((left + size * 0.3, top + size * 0.25), MARK, fill=(255, 255, 255), font=ImageFont.load_default(size))


def render(request: Request) -> Image.Image:
    """The synthetic image for `request`: exactly width×height RGB, deterministic from its fields.

    LoRAs apply in order; each blends its effect in by its curve's `amount(scale)`, so scale 0 (and
    any scale below the onset) leaves the image untouched, and past an overcook point the image is
    blurred by the curve's `burn`. A seed of -1 is rendered as given (the server resolves it to a
    concrete seed before rendering).
    """
    image = _compose(request.prompt, request.seed, request.width, request.height)
    for lora in request.loras:
        curve = curve_of(lora.path)
        amount, burn = curve.amount(lora.scale), curve.burn(lora.scale)
        if amount > 0:
            image = Image.blend(image, _full_effect(image, lora.path), amount)
        if burn > 0:
            image = image.filter(ImageFilter.GaussianBlur(burn * min(image.size) / 16))
    _stamp(image)
    return image


def encode_png(image: Image.Image) -> bytes:
    """PNG bytes, labelled `zlab-backend: synthetic` in a text chunk.

    Hand-rolled because it is twice as fast as Pillow's encoder here (15 ms against 35 ms for
    1024×1536): every row uses the "Up" filter, computed in one numpy subtraction, then zlib level 1.
    """
    rgb = image if image.mode == "RGB" else image.convert("RGB")
    width, height = rgb.size
    rows = np.asarray(rgb).reshape(height, width * 3)
    filtered = np.empty((height, width * 3 + 1), dtype=np.uint8)
    filtered[0, 0], filtered[0, 1:] = 0, rows[0]  # filter 0 (None) for the first row
    filtered[1:, 0] = 2  # filter 2 (Up): each byte minus the byte above, modulo 256
    np.subtract(rows[1:], rows[:-1], out=filtered[1:, 1:])
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB, no interlace
    return b"".join(
        (
            PNG_SIGNATURE,
            _chunk(b"IHDR", header),
            _chunk(b"tEXt", b"zlab-backend\x00" + MARK.encode()),
            _chunk(b"IDAT", zlib.compress(filtered.data, 1)),
            _chunk(b"IEND", b""),
        )
    )


def render_png(request: Request) -> bytes:
    """`render` then `encode_png`: what the server's file route serves."""
    return encode_png(render(request))


def render_bytes(request: Request, fmt: str = "png") -> bytes:
    """`render`, encoded as `fmt`: "png" (`encode_png`), "jpeg" or "webp" (Pillow; quality 90 / 80)."""
    if fmt == "png":
        return render_png(request)
    out = io.BytesIO()
    options = {"quality": 90} if fmt == "jpeg" else {"quality": 80, "method": 0}  # method 0: fastest WebP
    render(request).save(out, format=fmt.upper(), **options)
    return out.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def bomb_png(width: int = 100_000, height: int = 100_000) -> bytes:
    """A tiny PNG whose header declares a huge image: a decompression bomb a client must refuse."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return PNG_SIGNATURE + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + _chunk(b"IEND", b"")


def oversized_png_chunks(png: bytes, extra: int, piece: int = 1 << 20) -> Iterator[bytes]:
    """`png` with `extra` bytes of padding in a private ancillary chunk: valid, decodable, and huge.

    Yielded in pieces so the server never holds the whole file; the padding sits right after IHDR.
    """
    ihdr_end = len(PNG_SIGNATURE) + 8 + 13 + 4
    yield png[:ihdr_end]
    kind = b"zlAb"  # ancillary (lower-case first letter), private, safe to copy: decoders skip it
    yield struct.pack(">I", extra) + kind
    crc, zeros, left = zlib.crc32(kind), bytes(piece), extra
    while left > 0:
        part = zeros[: min(piece, left)]
        crc, left = zlib.crc32(part, crc), left - len(part)
        yield part
    yield struct.pack(">I", crc)
    yield png[ihdr_end:]


class ImageCache:
    """Rendered PNG bytes by key, bounded in bytes (least recently used go first), rendered off the loop.

    Concurrent requests for the same key share one render. Evicted images are simply rendered again:
    rendering is deterministic, so the cache changes speed, never content. Use from one event loop.
    """

    def __init__(self, executor: Executor, max_bytes: int = 256 << 20) -> None:
        self._executor, self._max_bytes = executor, max_bytes
        self._done: OrderedDict[object, bytes] = OrderedDict()
        self._pending: dict[object, asyncio.Future[bytes]] = {}
        self._size = 0
        self._lock = threading.Lock()  # `len()` and `nbytes` may be read from other threads

    async def get(self, key: object, make: Callable[[], bytes]) -> bytes:
        """The bytes for `key`, calling `make` in the executor when they are not cached."""
        with self._lock:
            if key in self._done:
                self._done.move_to_end(key)
                return self._done[key]
        pending = self._pending.get(key)
        if pending is None:
            pending = asyncio.get_running_loop().run_in_executor(self._executor, make)
            self._pending[key] = pending
            pending.add_done_callback(lambda done: self._settle(key, done))
        # Shielded: a caller that gives up (its client went away) must not cancel the others' render.
        return await asyncio.shield(pending)

    def _settle(self, key: object, done: asyncio.Future[bytes]) -> None:
        del self._pending[key]
        if not done.cancelled() and done.exception() is None:
            self._store(key, done.result())

    def _store(self, key: object, data: bytes) -> None:
        if len(data) > self._max_bytes:
            return
        with self._lock:
            self._done[key] = data
            self._size += len(data)
            while self._size > self._max_bytes:
                _, old = self._done.popitem(last=False)
                self._size -= len(old)

    @property
    def nbytes(self) -> int:
        """Bytes held now."""
        with self._lock:
            return self._size

    def __len__(self) -> int:
        with self._lock:
            return len(self._done)
