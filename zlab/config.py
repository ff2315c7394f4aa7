"""Settings, read when a client is built (never at import): argument → environment → default.

The token is held in a `Secret`, whose repr and str hide it, so it cannot leak through a repr,
a log line, an exception or a file by accident; only the HTTP layer calls `.reveal()`.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping

from zlab.errors import ConfigError

RUNCOMFY_BASE_URL = "https://model-api.runcomfy.net"
LOCAL = "local"  # ZLAB_BASE_URL=local asks for the built-in server even when a token is set
DEFAULT_PRICE_PER_MP = 0.0085  # USD per megapixel, a peer host's price (RunComfy's is unpublished)


class Secret:
    """A string that does not show itself: `repr(Secret("x"))` is `Secret('**********')`."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('**********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __reduce__(self) -> tuple[object, ...]:  # never pickled into a file by accident
        raise TypeError("a Secret cannot be pickled")


@dataclasses.dataclass(frozen=True)
class Settings:
    """Where the API is and how to authenticate; `local` means: start the built-in server."""

    base_url: str | None  # None: use the built-in local server
    token: Secret | None
    price_per_mp: float = DEFAULT_PRICE_PER_MP

    @property
    def local(self) -> bool:
        return self.base_url is None


def resolve_settings(
    token: str | Secret | None = None,
    base_url: str | None = None,
    env: Mapping[str, str] | None = None,
    price_per_mp: float | None = None,
) -> Settings:
    """Argument → RUNCOMFY_TOKEN → RUNCOMFY_API_KEY; base URL argument → ZLAB_BASE_URL → RunComfy's.

    With neither a token nor a base URL (or with base URL `local`), the result asks for the local server.
    """
    env = os.environ if env is None else env
    raw_token = token if token is not None else env.get("RUNCOMFY_TOKEN") or env.get("RUNCOMFY_API_KEY") or None
    secret = raw_token if isinstance(raw_token, Secret) or raw_token is None else Secret(raw_token)
    url = base_url if base_url is not None else env.get("ZLAB_BASE_URL") or None
    price = price_per_mp if price_per_mp is not None else float(env.get("ZLAB_PRICE_PER_MP", DEFAULT_PRICE_PER_MP))
    if url == LOCAL or (url is None and secret is None):
        return Settings(base_url=None, token=secret, price_per_mp=price)
    url = (url or RUNCOMFY_BASE_URL).rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise ConfigError(
            f"base URL {url!r} must start with http:// or https:// (or be 'local' for the built-in server)"
        )
    if secret is None and url == RUNCOMFY_BASE_URL:  # other servers (a LocalServer elsewhere) may need none
        raise ConfigError(
            f"no API token for {url}: set RUNCOMFY_TOKEN (or RUNCOMFY_API_KEY), "
            "or unset ZLAB_BASE_URL to use the built-in local server"
        )
    return Settings(base_url=url, token=secret, price_per_mp=price)
