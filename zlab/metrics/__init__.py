"""Learned image metrics (`pip install "zlab[metrics]"`): CLIP prompt adherence, CLIP/DINOv2 distance to the
no-LoRA baseline and similarity to reference images, LPIPS, seed variety; per image, cached by image hash,
added as columns of the results table (`add_metrics`). See `zlab.metrics.compute` for the columns and
`zlab.metrics.models` for the models, their licences, local weights and the offline message.

`import zlab.metrics` is light: torch, open_clip, timm and lpips are imported when a model is built.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_LAZY = {
    "add_metrics": "zlab.metrics.compute",
    "clip_adherence": "zlab.metrics.compute",
    "METRICS": "zlab.metrics.compute",
    "ClipModel": "zlab.metrics.models",
    "TimmEmbedder": "zlab.metrics.models",
    "LpipsModel": "zlab.metrics.models",
    "WeightsMissing": "zlab.metrics.models",
}
__all__ = ["METRICS", "ClipModel", "LpipsModel", "TimmEmbedder", "WeightsMissing", "add_metrics", "clip_adherence"]

if TYPE_CHECKING:
    from zlab.metrics.compute import METRICS, add_metrics, clip_adherence
    from zlab.metrics.models import ClipModel, LpipsModel, TimmEmbedder, WeightsMissing


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'zlab.metrics' has no attribute {name!r}")
