"""LoRA strength curves: how far each image moves from its group's reference as the scale rises: the no-LoRA
image where the sweep has one (`baseline: true`), else the group's lowest-scale image.

Two distances, both 0 for identical images: the mean absolute pixel difference (RGB, 0..1) and a
structural distance, 1 − SSIM, computed here with numpy on grayscale thumbnails (256 px wide by
default) with a 7×7 uniform window, as scikit-image does by default. From a curve, `onsets` reads
where the LoRA "starts to bite" (first scale past 10% of the group's largest distance) and where it
"saturates" (first scale reaching 90% of it).
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from zlab.core.table import is_lora_column
from zlab.errors import ValidationError
from zlab.sheet import thumbs
from zlab.sheet.cells import (
    VaryingColumnsError,
    norm_value,
    parameter_columns,
    placeholder_reason,
    sort_key,
)
from zlab.sheet.layout import NO_LORA, format_value


def _box_mean(x: np.ndarray, k: int) -> np.ndarray:
    """Mean over every k×k window ("valid" positions only), via 2-D cumulative sums: O(pixels)."""
    c = np.cumsum(np.cumsum(np.pad(x, ((1, 0), (1, 0))), axis=0), axis=1)
    return (c[k:, k:] - c[:-k, k:] - c[k:, :-k] + c[:-k, :-k]) / (k * k)


def ssim(a: np.ndarray, b: np.ndarray, window: int = 7) -> float:
    """Mean structural similarity of two grayscale images with values in [0, 1] (1 = identical).

    Uniform `window`, sample covariance and the usual constants K1=0.01, K2=0.03.
    """
    if a.shape != b.shape:
        raise ValueError(f"images differ in shape: {a.shape} vs {b.shape}")
    a, b = a.astype(np.float64), b.astype(np.float64)
    k = min(window, *a.shape)
    n = k * k
    cov = n / (n - 1) if n > 1 else 1.0
    ma, mb = _box_mean(a, k), _box_mean(b, k)
    va = cov * (_box_mean(a * a, k) - ma * ma)
    vb = cov * (_box_mean(b * b, k) - mb * mb)
    vab = cov * (_box_mean(a * b, k) - ma * mb)
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * ma * mb + c1) * (2 * vab + c2)) / ((ma * ma + mb * mb + c1) * (va + vb + c2))
    return float(s.mean())


def mean_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    """Mean absolute difference of two images with values in [0, 1]."""
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).mean())


def onsets(
    scales: Sequence[float], distances: Sequence[float], bite: float = 0.1, saturate: float = 0.9
) -> tuple[float | None, float | None]:
    """(bites, saturates): the first scale whose distance exceeds `bite`× the largest distance, and
    the first that reaches `saturate`× it. None where the curve never moves (or has no data).

    >>> onsets([0, 0.5, 1.0, 1.5], [0, 0.05, 0.3, 0.31])
    (0.5, 1.0)
    """
    pts = sorted((s, d) for s, d in zip(scales, distances, strict=True) if d is not None and np.isfinite(d))
    top = max((d for _, d in pts), default=0.0)
    if top <= 0:
        return None, None
    first_bite = next((s for s, d in pts if d > bite * top), None)
    first_sat = next((s for s, d in pts if d >= saturate * top), None)
    return first_bite, first_sat


def _distances(ref: Image.Image, image: Image.Image) -> tuple[float, float]:
    """(mean |Δ| over RGB, 1 − SSIM over grayscale) of `image` against `ref`, at `ref`'s size."""
    if image.size != ref.size:  # a different size inside one group: compare at the reference's
        image = image.resize(ref.size, Image.Resampling.LANCZOS)
    rgb_ref, rgb = (np.asarray(im, dtype=np.float64) / 255.0 for im in (ref, image))
    gray_ref, gray = (np.asarray(im.convert("L"), dtype=np.float64) / 255.0 for im in (ref, image))
    return mean_abs_diff(rgb_ref, rgb), 1.0 - ssim(gray_ref, gray)


def _group_label(by: Sequence[str], values: tuple[Any, ...]) -> str:
    return ", ".join(f"{c} {format_value(v)}" for c, v in zip(by, values, strict=True)) if by else "all"


@dataclass(frozen=True, repr=False)
class StrengthCurve:
    """Distances per (group, scale) in `.df` (columns: by, scale, mad, ssim_distance, key, …),
    `.summary()` with where each group bites and saturates, a matplotlib `.figure()`, `.save(path)`,
    and inline display in a notebook."""

    df: pd.DataFrame
    scale: str
    by: tuple[str, ...]
    strips: dict[str, list[tuple[Any, Image.Image]]] = field(default_factory=dict)
    bite: float = 0.1
    saturate: float = 0.9
    reference: str = "lowest scale"  # what the distances are from: "no LoRA" where every group has its baseline

    def __repr__(self) -> str:
        return f"<StrengthCurve {self.scale} by {', '.join(self.by) or 'all'}: {self.df['by'].nunique()} group(s)>"

    def summary(self, metric: str = "ssim_distance") -> pd.DataFrame:
        """Per group: the scale where the LoRA starts to bite, where it saturates, and the largest distances."""
        rows = []
        for label, g in self.df.groupby("by", sort=False):
            bites, sats = onsets(list(g["scale"]), list(g[metric]), self.bite, self.saturate)
            rows.append(
                {
                    "by": label,
                    "bites_at": bites,
                    "saturates_at": sats,
                    "max_ssim_distance": g["ssim_distance"].max(),
                    "max_mad": g["mad"].max(),
                }
            )
        return pd.DataFrame(rows)

    def figure(self, metric: str = "ssim_distance") -> Any:
        """A matplotlib Figure: one line per group (solid 1−SSIM, dashed mean |Δ|, ▲ bites, ■ saturates)
        above one film strip of thumbnails per group."""
        from matplotlib.figure import Figure

        groups = list(dict.fromkeys(self.df["by"]))
        fig = Figure(figsize=(9, 3.6 + 1.3 * len(groups)), layout="constrained")
        grid = fig.add_gridspec(1 + len(groups), 1, height_ratios=[3.2] + [1.2] * len(groups))
        ax = fig.add_subplot(grid[0])
        summary = self.summary(metric).set_index("by")
        for n, label in enumerate(groups):
            g = self.df[self.df["by"] == label]
            color = f"C{n % 10}"
            ax.plot(g["scale"], g["ssim_distance"], "-o", color=color, label=label, ms=4)
            ax.plot(g["scale"], g["mad"], "--", color=color, alpha=0.7)
            for col, mark in (("bites_at", "^"), ("saturates_at", "s")):
                at = summary.loc[label, col]
                if at is not None and pd.notna(at):
                    ax.plot(
                        [at], g.loc[g["scale"] == at, metric].iloc[:1], mark, color=color, ms=9, markeredgecolor="black"
                    )
        ax.set_xlabel(self.scale)
        ax.set_ylabel(f"distance from {self.reference}")
        ax.set_title(f"{self.scale}: solid 1−SSIM, dashed mean |Δpixel|; ▲ starts to bite, ■ saturates", fontsize=10)
        ax.grid(alpha=0.3)
        if len(groups) > 1:
            ax.legend(fontsize=8, ncols=min(4, len(groups)))
        for n, label in enumerate(groups):
            sax = fig.add_subplot(grid[1 + n])
            strip, centers, names = _film_strip(self.strips.get(label, []))
            if strip is not None:
                sax.imshow(np.asarray(strip))
            sax.set_xticks(centers, names, fontsize=8)
            sax.set_yticks([])
            sax.set_ylabel(label, fontsize=8, rotation=0, ha="right", va="center")
            for side in sax.spines.values():
                side.set_visible(False)
        return fig

    def save(self, path: str | os.PathLike[str], dpi: int = 100) -> Path:
        """Save the figure (format by suffix: png, svg, pdf, …)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.figure().savefig(path, dpi=dpi)
        return path

    def _repr_png_(self) -> bytes:
        buf = io.BytesIO()
        self.figure().savefig(buf, format="png", dpi=90)
        return buf.getvalue()


def _film_strip(items: Sequence[tuple[Any, Image.Image]], gap: int = 4) -> tuple[Image.Image | None, list, list]:
    """Thumbnails side by side on white; returns the strip, tick centres and scale labels."""
    if not items:
        return None, [], []
    height = max(im.height for _, im in items)
    width = sum(im.width for _, im in items) + gap * (len(items) - 1)
    strip = Image.new("RGB", (width, height), "white")
    x, centers, names = 0, [], []
    for s, im in items:
        strip.paste(im, (x, (height - im.height) // 2))
        centers.append(x + im.width / 2)
        names.append(format_value(s))
        x += im.width + gap
    return strip, centers, names


def strength_curve(
    df: pd.DataFrame,
    scale: str = "lora1_scale",
    by: str | Sequence[str] | None = "seed",
    *,
    root: str | os.PathLike[str] | None = None,
    width: int = 256,
    strip_width: int = 96,
    bite: float = 0.1,
    saturate: float = 0.9,
    cache: bool = True,
) -> StrengthCurve:
    """For each `by` group, the distance of each image from the group's reference: its no-LoRA image (the
    baseline, drawn at scale 0) where `scale` is a LoRA's scale and the group has one, else its lowest-scale image.

    Images are read relative to `root` (default ``df.attrs["run_dir"]``) and compared as `width`-px
    thumbnails. Cells without an image get NaN distances and a `note`. Raises `VaryingColumnsError`
    if another parameter varies within a group at one scale (add it to `by`, or filter the DataFrame).

    >>> curve = strength_curve(res.df, scale="lora1_scale", by="seed")   # doctest: +SKIP
    >>> curve.summary()                                                   # doctest: +SKIP
    """
    by_cols = (by,) if isinstance(by, str) else tuple(by or ())
    for col in (scale, *by_cols):
        if col not in df.columns:
            raise ValidationError("scale" if col == scale else "by", col, f"a column of: {', '.join(df.columns)}")
    run_dir = Path(root) if root is not None else (Path(df.attrs["run_dir"]) if df.attrs.get("run_dir") else None)
    cache_dir = thumbs.cache_dir(run_dir) if cache and run_dir is not None else None
    params = parameter_columns(df, exclude=(scale, *by_cols))

    groups: dict[tuple[Any, ...], list[int]] = {}
    for i in range(len(df)):
        groups.setdefault(tuple(norm_value(df[c].iat[i]) for c in by_cols), []).append(i)

    no_lora_first = is_lora_column(scale)  # no LoRA: the reference a LoRA's scales are read against
    references: set[bool] = set()  # per group: whether its reference is its no-LoRA image
    rows: list[dict[str, Any]] = []
    strips: dict[str, list[tuple[Any, Image.Image]]] = {}
    for gkey in sorted(groups, key=lambda t: tuple(sort_key(v) for v in t)):
        members = sorted(groups[gkey], key=lambda i: sort_key(norm_value(df[scale].iat[i]), no_lora_first))
        scales = [norm_value(df[scale].iat[i]) for i in members]
        if len(set(scales)) != len(scales):
            varying = [c for c in params if len({norm_value(df[c].iat[i]) for i in members}) > 1]
            raise VaryingColumnsError(
                {"scale": scale, "by": ", ".join(by_cols) or None},
                varying,
                1,
                f"pass by={[*by_cols, *varying]!r} or filter the DataFrame so each group has one image per scale",
            )
        label = _group_label(by_cols, gkey)
        ref: Image.Image | None = None
        for i, s in zip(members, scales, strict=True):
            r = df.iloc[i]
            no_lora = s is None and no_lora_first
            note = placeholder_reason(r.get("status"), r.get("error"), r.get("image_path"))
            mad = dist = float("nan")
            if note is None:
                path = (run_dir or Path()) / str(r["image_path"])
                try:
                    thumb = thumbs.load_thumbnail(path, width, cache_dir)
                except FileNotFoundError:
                    note = f"file missing: {path.name}"
                except OSError as exc:
                    note = f"unreadable: {exc}"
                else:
                    if ref is None:  # the first image in order is the reference: no LoRA, else the lowest scale
                        ref = thumb
                        references.add(no_lora)
                    mad, dist = _distances(ref, thumb)
                    small = thumb.copy()
                    small.thumbnail((strip_width * 4, strip_width), Image.Resampling.LANCZOS)  # one strip height
                    strips.setdefault(label, []).append((NO_LORA if no_lora else s, small))
            rows.append(
                {
                    "by": label,
                    "scale": 0.0 if no_lora else s,  # no LoRA draws where scale 0 would
                    "mad": mad,
                    "ssim_distance": dist,
                    "key": r.get("key"),
                    "image_path": r.get("image_path"),
                    "note": note,
                }
            )
    out = pd.DataFrame(rows, columns=["by", "scale", "mad", "ssim_distance", "key", "image_path", "note"])
    out.attrs = {"scale": scale, "by": list(by_cols)}
    reference = NO_LORA if references == {True} else "lowest scale"
    return StrengthCurve(out, scale, by_cols, strips, bite, saturate, reference)
