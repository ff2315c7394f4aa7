"""What a saved sheet says about itself: axes and each cell's key and parameters, as JSON in the file.

PNG pages carry it in an iTXt chunk named ``zlab:sheet``, JPEG pages in their comment segment; WebP
pages carry none. `read_sheet` turns it back into a DataFrame, so a sheet found on disk can be
traced to the exact requests behind it.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

import pandas as pd
from PIL import Image, PngImagePlugin

META_KEY = "zlab:sheet"
FORMAT_VERSION = 1


def jsonable(value: Any) -> Any:
    """`value` as something `json.dumps` accepts: numpy -> Python, NaN -> None, other objects -> str."""
    if hasattr(value, "tolist") and not isinstance(value, str | bytes):
        value = value.tolist()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    try:
        if pd.isna(value):
            return None
    except (TypeError, ValueError):
        pass
    return str(value)


def dumps(meta: dict[str, Any]) -> str:
    """Compact JSON for a page's metadata."""
    return json.dumps(jsonable(meta), separators=(",", ":"), ensure_ascii=False)


def png_info(meta: dict[str, Any]) -> PngImagePlugin.PngInfo:
    """A PngInfo carrying `meta` as an iTXt chunk (UTF-8, so prompts in any language survive)."""
    info = PngImagePlugin.PngInfo()
    info.add_itxt(META_KEY, dumps(meta), zip=True)
    return info


def save_kwargs(fmt: str, meta: dict[str, Any]) -> dict[str, Any]:
    """Extra `Image.save` arguments that embed `meta` in format `fmt` (PNG, JPEG; nothing for others)."""
    if fmt == "PNG":
        return {"pnginfo": png_info(meta)}
    if fmt == "JPEG":
        text = dumps(meta).encode()
        # A JPEG COM segment holds at most 65,533 bytes; a bigger sheet's metadata is left out there.
        return {"comment": text} if len(text) <= 65_000 else {}
    return {}


def read_meta(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The raw metadata dict of a saved sheet. Raises ValueError if the file has none."""
    with Image.open(path) as im:
        text = getattr(im, "text", {}).get(META_KEY) if im.format == "PNG" else im.info.get("comment")
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    if not text:
        raise ValueError(f"{path} has no zlab sheet metadata (only PNG and JPEG sheets carry it)")
    meta = json.loads(text)
    if not isinstance(meta, dict) or "cells" not in meta:
        raise ValueError(f"{path}: the {META_KEY} metadata is not a zlab sheet")
    return meta


def read_sheet(path: str | os.PathLike[str]) -> pd.DataFrame:
    """The cells of a saved sheet page as a DataFrame: key, grid position, pixel box and parameters.

    ``df.attrs`` holds the axes (``x``, ``y``, ``page``), their values and the page number.

    >>> df = read_sheet("runs/tc/sheet.png")      # doctest: +SKIP
    >>> df[["key", "lora1_scale", "seed"]]       # doctest: +SKIP
    """
    meta = read_meta(path)
    df = pd.DataFrame(meta["cells"])
    df.attrs.update({k: v for k, v in meta.items() if k != "cells"})
    return df
