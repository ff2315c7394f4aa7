"""The synthetic backend: deterministic, seed- and scale-sensitive, exactly sized, marked, and fast."""

from __future__ import annotations

import asyncio
import io
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image, ImageFilter

from zlab.core.request import DEFAULT_LORA_PATH, LoRA, Request
from zlab.server import synthetic
from zlab.server.synthetic import ImageCache, bomb_png, encode_png, mark_box, oversized_png_chunks, render, render_png

# One LoRA path per style effect, so every effect is covered (effect_of is stable, so these are too);
# only LoRAs that act, and whose effect is full and not yet overcooked at scale 1.5.
PATHS = {
    synthetic.effect_of(p): p
    for p in [DEFAULT_LORA_PATH, *(f"owner/lora-{i}" for i in range(80))]
    if (c := synthetic.curve_of(p)).amount(1.0) > 0 and c.burn(1.5) == 0
}


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.float64)


def diff(a: Image.Image, b: Image.Image) -> float:
    return float(np.abs(pixels(a) - pixels(b)).mean())


def req(**changes: object) -> Request:
    fields = {"prompt": "a red fox under a tree", "width": 320, "height": 256, "seed": 5}
    return Request(**{**fields, **changes})


def test_every_effect_has_a_path() -> None:
    assert set(PATHS) == {"saturate", "posterize", "hue", "stripes", "duotone", "solarize"}


def test_the_same_input_gives_the_same_bytes() -> None:
    assert render_png(req()) == render_png(req())


@pytest.mark.parametrize("change", [{"seed": 6}, {"prompt": "a blue heron"}])
def test_seed_and_prompt_change_the_composition(change: dict) -> None:
    assert diff(render(req()), render(req(**change))) > 10


@pytest.mark.parametrize("effect", sorted(PATHS))
def test_a_lora_scale_sweep_follows_the_loras_known_curve(effect: str) -> None:
    path = PATHS[effect]
    curve = synthetic.curve_of(path)
    assert curve.onset is not None and curve.saturation is not None
    base = render(req(loras=[LoRA(path, 0.0)]))
    assert diff(base, render(req(loras=[]))) == 0  # scale 0 is no LoRA at all
    assert diff(base, render(req(loras=[LoRA(path, curve.onset - 0.01)]))) == 0  # nothing before the onset
    ramp = np.linspace(curve.onset + 0.05, curve.saturation, 4)
    distances = [diff(base, render(req(loras=[LoRA(path, float(s))]))) for s in ramp]
    assert distances == sorted(distances) and len(set(distances)) == len(distances), distances
    assert distances[-1] > 10, distances
    # On the ramp the pixel distance grows in proportion to the amount (up to 8-bit rounding) ...
    per_amount = [d / curve.amount(float(s)) for d, s in zip(distances, ramp, strict=True)]
    assert max(per_amount) - min(per_amount) < 0.1 * max(per_amount), per_amount
    # ... and past the saturation (before any overcook) it stops growing.
    plateau = diff(base, render(req(loras=[LoRA(path, curve.saturation + 0.2)])))
    assert plateau == pytest.approx(distances[-1], abs=0.05)


def test_some_loras_do_nothing_and_some_overcook() -> None:
    curves = {p: synthetic.curve_of(p) for p in (f"owner/lora-{i}" for i in range(80))}
    inert = next(p for p, c in curves.items() if c.inert)
    assert diff(render(req(loras=[])), render(req(loras=[LoRA(inert, 2.0)]))) == 0
    path, curve = next((p, c) for p, c in curves.items() if c.overcook is not None and c.overcook < 1.9)
    assert curve.overcook is not None and curve.saturation is not None and curve.overcook > curve.saturation

    def detail(image: Image.Image) -> float:  # what a 3×3 box blur takes away: falls when the image blurs
        grey = image.convert("L")
        return float(np.abs(pixels(grey) - pixels(grey.filter(ImageFilter.BoxBlur(1)))).mean())

    cooked = [detail(render(req(loras=[LoRA(path, curve.overcook + d)]))) for d in (-0.05, 0.0, 0.1, 0.3)]
    assert cooked[0] == cooked[1] and cooked[1] > 1.2 * cooked[2] > 1.2 * cooked[3], cooked


def test_each_lora_path_has_its_own_style() -> None:
    styled = [render(req(loras=[LoRA(path, 1.0)])) for path in PATHS.values()]
    assert all(diff(a, b) > 3 for i, a in enumerate(styled) for b in styled[i + 1 :])


@pytest.mark.parametrize("size", [(256, 256), (1536, 256), (256, 1536), (784, 560)])
def test_images_have_exactly_the_requested_size(size: tuple[int, int]) -> None:
    width, height = size
    decoded = Image.open(io.BytesIO(render_png(req(width=width, height=height))))
    assert decoded.size == size and decoded.mode == "RGB"


def test_encode_png_round_trips_the_pixels_and_labels_the_file() -> None:
    image = render(req(loras=[LoRA(PATHS["hue"], 0.8)]))
    decoded = Image.open(io.BytesIO(encode_png(image)))
    assert np.array_equal(np.asarray(decoded), np.asarray(image))
    assert decoded.info["zlab-backend"] == "synthetic"


def test_the_synthetic_mark_sits_in_the_bottom_right_corner() -> None:
    one, other = render(req()), render(req(seed=99, loras=[LoRA(PATHS["solarize"], 2.0)]))
    box = mark_box(*one.size)
    assert box[2] <= one.size[0] and box[3] <= one.size[1] and box[0] > one.size[0] // 2
    mark = pixels(one.crop(box))
    assert np.array_equal(mark, pixels(other.crop(box)))  # drawn after every effect, the same on every image
    assert (mark == 0).all(axis=2).mean() > 0.5 and (mark > 200).all(axis=2).sum() > 20  # white text on black
    outside = (box[0] - 40, box[1] - 40, box[0], box[1])
    assert not np.array_equal(pixels(one.crop(outside)), pixels(other.crop(outside)))


def test_a_full_size_image_renders_and_encodes_at_its_size() -> None:
    # How fast is measured beside a baseline in benchmarks/bench_scale.py (the synthetic render), not timed here.
    big = Request("t3chnic4lly a woman under a tree", loras=[LoRA(DEFAULT_LORA_PATH, 0.8)], seed=1)
    assert (big.width, big.height) == (1024, 1536)
    with Image.open(io.BytesIO(render_png(big))) as image:
        assert image.format == "PNG" and image.size == (1024, 1536)
        assert np.array_equal(np.asarray(image.convert("RGB")), np.asarray(render(big).convert("RGB")))


def test_bomb_png_is_tiny_and_declares_a_huge_image() -> None:
    data = bomb_png(100_000, 100_000)
    assert len(data) < 200
    with pytest.raises(Image.DecompressionBombError):
        Image.open(io.BytesIO(data))


def test_oversized_png_is_valid_and_as_big_as_asked() -> None:
    png = render_png(req())
    data = b"".join(oversized_png_chunks(png, 2_500_000, piece=1 << 20))
    assert len(data) == len(png) + 2_500_000 + 12  # one chunk: length, type, padding, CRC
    image = Image.open(io.BytesIO(data))
    image.load()  # a CRC or layout error would raise here
    assert np.array_equal(np.asarray(image), np.asarray(render(req())))


def test_image_cache_renders_a_key_once_and_stays_within_its_bound() -> None:
    calls: list[str] = []

    def make(name: str) -> bytes:
        calls.append(name)
        time.sleep(0.02)
        return name.encode() * 100

    async def scenario(cache: ImageCache) -> list[bytes]:
        same = await asyncio.gather(*(cache.get("a", lambda: make("a")) for _ in range(5)))
        await cache.get("b", lambda: make("b"))
        await cache.get("c", lambda: make("c"))  # over 250 bytes: "a" is evicted
        await cache.get("a", lambda: make("a"))
        return same

    with ThreadPoolExecutor(2) as pool:
        cache = ImageCache(pool, max_bytes=250)
        same = asyncio.run(scenario(cache))
    assert same == [b"a" * 100] * 5
    assert calls == ["a", "b", "c", "a"]
    assert cache.nbytes <= 250 and len(cache) == 2
