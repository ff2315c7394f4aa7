"""What an image costs, before it is sent (pure): the one rule that plans, budgets and rows all use.

RunComfy bills the Model API per request; its price for this model is not published where zlab could
read it. So, in order of trust:

1. the service's own price (`GET /v1/models/{id}`: `base_price_usd` per `image`/`output`, or per
   `second` times the expected run time);
2. `ZLAB_PRICE_PER_IMAGE` (USD per request), when the user knows their price;
3. `ZLAB_PRICE_PER_MP` (USD per megapixel; default a peer host's $0.0085).

After a job, the service's own `cost` from `/result?include_cost=true` replaces the estimate in the
results (`cost_source` says which one a row holds).
"""

from __future__ import annotations

import dataclasses
from typing import Literal

from zlab.core.config import Settings
from zlab.core.protocol import Price
from zlab.core.request import Request

EXPECTED_RUN_S = 4.0  # for a per-second price: a working guess of one Z-Image Turbo render on RunComfy
CostSource = Literal["service", "estimate"]


@dataclasses.dataclass(frozen=True)
class Pricing:
    """USD per image, or per megapixel (exactly one is set), and where the figure came from."""

    per_image: float | None
    per_mp: float | None
    source: str  # "the service's price", "ZLAB_PRICE_PER_IMAGE", "ZLAB_PRICE_PER_MP"

    def cost(self, request: Request) -> float:
        """The estimated cost of sending `request` once."""
        if self.per_image is not None:
            return self.per_image
        return request.megapixels * (self.per_mp or 0.0)

    def __str__(self) -> str:
        figure = f"${self.per_image:.4f}/image" if self.per_image is not None else f"${self.per_mp:.4f}/MP"
        return f"{figure} ({self.source})"


def resolve_pricing(service: Price | None, settings: Settings) -> Pricing:
    """The price to plan with: the service's own, else the settings' per image, else per megapixel."""
    if service is not None:
        per_image = service.usd * EXPECTED_RUN_S if service.unit == "second" else service.usd
        how = "the service's price" + (f" × {EXPECTED_RUN_S:g} s expected" if service.unit == "second" else "")
        return Pricing(per_image, None, how)
    if settings.price_per_image is not None:
        return Pricing(settings.price_per_image, None, "ZLAB_PRICE_PER_IMAGE")
    return Pricing(None, settings.price_per_mp, "ZLAB_PRICE_PER_MP")


def final_cost(service_cost: float | None, estimate: float) -> tuple[float, CostSource]:
    """A finished row's cost: the service's own figure when it gave one, else the estimate."""
    return (service_cost, "service") if service_cost is not None else (estimate, "estimate")
