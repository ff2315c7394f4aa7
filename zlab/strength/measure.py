"""The built-in measures the scale search runs on: cheap, numpy only, no learned model.

- `change(baseline, image)`: how far an image moved from its no-LoRA baseline: the mean absolute
  pixel difference (RGB, 0..1; default, it grows in proportion to how much of a style is blended in)
  or 1 − SSIM (structure), both from `zlab.sheet.curves`;
- `detail(image)`: fine detail, the mean absolute difference between the grey image and its 3×3
  box blur; an overcooked image that melts into mush loses it. Compared with the baseline's as a ratio.

Images are compared at `WIDTH` px wide (the thumbnails the run already caches), at the baseline's size.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from PIL import Image, ImageFilter

from zlab.sheet.curves import mean_abs_diff, ssim

WIDTH = 256
ChangeMetric = Literal["mad", "ssim"]


def _rgb(image: Image.Image) -> Image.Image:
    return image if image.mode == "RGB" else image.convert("RGB")


def change(baseline: Image.Image, image: Image.Image, metric: ChangeMetric = "mad") -> float:
    """Distance of `image` from `baseline` (0 = identical), compared at the baseline's size."""
    baseline, image = _rgb(baseline), _rgb(image)
    if image.size != baseline.size:
        image = image.resize(baseline.size, Image.Resampling.LANCZOS)
    if metric == "ssim":
        grey = [np.asarray(im.convert("L"), dtype=np.float64) / 255.0 for im in (baseline, image)]
        return 1.0 - ssim(grey[0], grey[1])
    return mean_abs_diff(np.asarray(baseline, dtype=np.float64) / 255.0, np.asarray(image, dtype=np.float64) / 255.0)


def detail(image: Image.Image) -> float:
    """Fine detail: mean |grey − 3×3 box blur of grey|, in 0..1."""
    grey = _rgb(image).convert("L")
    sharp = np.asarray(grey, dtype=np.float64)
    soft = np.asarray(grey.filter(ImageFilter.BoxBlur(1)), dtype=np.float64)
    return float(np.abs(sharp - soft).mean() / 255.0)


def relative_detail(baseline: Image.Image, image: Image.Image) -> float:
    """`detail(image) / detail(baseline)` (1 = as detailed as the baseline; 1 for a flat baseline)."""
    base = detail(baseline)
    return detail(image) / base if base > 0 else 1.0
