"""zlab: sweep, compare and report Z-Image Turbo LoRAs through the RunComfy Model API.

>>> import zlab
>>> client = zlab.Client()   # no RUNCOMFY_TOKEN: the built-in local server (synthetic images)
>>> sweep = zlab.Sweep(zlab.Request("t3chnic4lly a fox"), axes={"lora1_scale": "0-1.5 [4]", "seed": [1, 2]})
>>> res = client.run(sweep, out="runs/fox")                     # doctest: +SKIP
>>> zlab.contact_sheet(res.df, x="lora1_scale", y="seed")       # doctest: +SKIP

Names are imported on first use, so `import zlab` stays fast and pulls in no plotting or notebook stack.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from zlab.core.request import LoRA, Request
from zlab.errors import ZlabError

__version__ = "0.1.0"

_LAZY = {
    "AsyncClient": "zlab.client",
    "Client": "zlab.client",
    "Generation": "zlab.api.jobs",
    "Job": "zlab.api.jobs",
    "Sweep": "zlab.runs.sweep",
    "ScaleSpec": "zlab.strength.driver",
    "Thresholds": "zlab.strength.definitions",
    "RunResult": "zlab.runs.result",
    "LocalServer": "zlab.server",
    "Faults": "zlab.server",
    "ContactSheet": "zlab.sheet",
    "StrengthCurve": "zlab.sheet",
    "contact_sheet": "zlab.sheet",
    "read_sheet": "zlab.sheet",
    "strength_curve": "zlab.sheet",
    "report": "zlab.report",
    "Report": "zlab.report",
    "thumbnail_table": "zlab.views.display",
    "SweepBuilder": "zlab.views.widgets",
    "Gallery": "zlab.views.widgets",
}
__all__ = ["LoRA", "Request", "ZlabError", *sorted(_LAZY)]

if TYPE_CHECKING:
    from zlab.api.jobs import Generation, Job
    from zlab.client import AsyncClient, Client
    from zlab.report import Report, report
    from zlab.runs.result import RunResult
    from zlab.runs.sweep import Sweep
    from zlab.server import Faults, LocalServer
    from zlab.sheet import ContactSheet, StrengthCurve, contact_sheet, read_sheet, strength_curve
    from zlab.strength.definitions import Thresholds
    from zlab.strength.driver import ScaleSpec
    from zlab.views.display import thumbnail_table
    from zlab.views.widgets import Gallery, SweepBuilder


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    if name == "widgets":
        return importlib.import_module("zlab.views.widgets")
    raise AttributeError(f"module 'zlab' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*__all__, "widgets", "__version__"])
