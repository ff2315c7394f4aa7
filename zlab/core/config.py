"""Settings, read when a client is built (never at import): argument → environment → default.

The token is held in a `Secret`, whose repr and str hide it, so it cannot leak through a repr,
a log line, an exception or a file by accident; only the HTTP layer calls `.reveal()`.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlsplit

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
    """Where the API is, how to authenticate, and the fallback price; `base_url=None` means the built-in server."""

    base_url: str | None  # None: use the built-in local server
    token: Secret | None
    price_per_mp: float = DEFAULT_PRICE_PER_MP
    price_per_image: float | None = None  # RunComfy bills per request: set ZLAB_PRICE_PER_IMAGE when you know it

    @property
    def local(self) -> bool:
        return self.base_url is None


def resolve_settings(
    token: str | Secret | None = None,
    base_url: str | None = None,
    env: Mapping[str, str] | None = None,
    price_per_mp: float | None = None,
    price_per_image: float | None = None,
) -> Settings:
    """Argument → RUNCOMFY_TOKEN → RUNCOMFY_API_KEY; base URL argument → ZLAB_BASE_URL → RunComfy's.

    With neither a token nor a base URL (or with base URL `local`), the result asks for the local server.
    Everything is checked here, before anything is sent; a bad token is named, never shown.
    """
    env = environment() if env is None else env
    raw_token = token if token is not None else env.get("RUNCOMFY_TOKEN") or env.get("RUNCOMFY_API_KEY") or None
    secret = check_token(raw_token) if raw_token is not None else None
    url = base_url if base_url is not None else (env.get("ZLAB_BASE_URL") or "").strip() or None
    per_mp = _price("ZLAB_PRICE_PER_MP", price_per_mp, env.get("ZLAB_PRICE_PER_MP"), DEFAULT_PRICE_PER_MP)
    assert per_mp is not None  # it has a default
    per_image = _price("ZLAB_PRICE_PER_IMAGE", price_per_image, env.get("ZLAB_PRICE_PER_IMAGE"), None)
    if url == LOCAL or (url is None and secret is None):
        return Settings(base_url=None, token=secret, price_per_mp=per_mp, price_per_image=per_image)
    url = check_base_url(url or RUNCOMFY_BASE_URL)
    if secret is None and url == RUNCOMFY_BASE_URL:  # other servers (a LocalServer elsewhere) may need none
        raise ConfigError(
            f"no API token for {url}: set RUNCOMFY_TOKEN (or RUNCOMFY_API_KEY), "
            "or unset ZLAB_BASE_URL to use the built-in local server"
        )
    return Settings(base_url=url, token=secret, price_per_mp=per_mp, price_per_image=per_image)


def check_token(raw: str | Secret) -> Secret | None:
    """Strip whitespace (a token file with Windows line endings ends in "\r\n") and refuse characters
    no HTTP header may carry. The message names the variable and the problem, never the value."""
    value = raw.reveal() if isinstance(raw, Secret) else raw
    if not isinstance(value, str):
        raise ConfigError("the API token must be text (RUNCOMFY_TOKEN)")
    value = value.strip()
    if not value:
        return None
    bad = [ch for ch in value if not (33 <= ord(ch) <= 126)]
    if bad:
        kind = "non-ASCII characters" if any(ord(ch) > 126 for ch in bad) else "spaces or control characters"
        raise ConfigError(
            f"the API token (RUNCOMFY_TOKEN / RUNCOMFY_API_KEY) contains {kind}, which cannot be sent in an "
            "HTTP header: copy the key again from your RunComfy account"
        )
    return Secret(value)


def check_base_url(url: str) -> str:
    """An http(s) URL with a host, no spaces, no credentials; the message says what to write instead."""
    hint = "(or 'local' for the built-in server), e.g. https://model-api.runcomfy.net or http://127.0.0.1:8188"
    text = url.strip().rstrip("/")
    try:
        parts = urlsplit(text)
        port = parts.port  # raises on a port that is not a number
    except ValueError:
        raise ConfigError(f"ZLAB_BASE_URL {text[:100]!r} is not a valid URL {hint}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname or any(ch.isspace() for ch in text):
        raise ConfigError(f"ZLAB_BASE_URL {text[:100]!r} must be an http:// or https:// URL with a host {hint}")
    if parts.username or parts.password or parts.query or parts.fragment:
        raise ConfigError(f"ZLAB_BASE_URL {text[:100]!r} must not carry credentials, a query or a fragment {hint}")
    del port
    return text


def _price(name: str, given: float | None, raw: str | None, default: float | None) -> float | None:
    """A price from an argument or the environment: a finite number >= 0, else a ConfigError naming it."""
    value: object = given if given is not None else raw
    if value is None or (isinstance(value, str) and not value.strip()):
        return default
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ConfigError(f"{name}={str(value)[:40]!r} is not a number: give USD as a number >= 0, e.g. 0.01") from None
    if not math.isfinite(number) or number < 0:
        raise ConfigError(f"{name}={number!r} is not allowed: give a finite number of USD >= 0")
    return number


def environment() -> Mapping[str, str]:
    """The process environment: the one place zlab reads it (a test checks that no other module does)."""
    return os.environ


@dataclasses.dataclass(frozen=True)
class LocalSettings:
    """How the built-in local server runs: ZLAB_LOCAL_LATENCY (seconds per job), ZLAB_LOCAL_CAPACITY (jobs at
    once) and ZLAB_BACKEND (`synthetic`, or `diffusers` for Z-Image Turbo on this machine)."""

    latency: float = 0.3
    capacity: int = 8
    backend: str = "synthetic"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> LocalSettings:
        env = environment() if env is None else env
        latency = _number("ZLAB_LOCAL_LATENCY", env.get("ZLAB_LOCAL_LATENCY"), cls.latency, "seconds >= 0, e.g. 0.3")
        capacity = _number("ZLAB_LOCAL_CAPACITY", env.get("ZLAB_LOCAL_CAPACITY"), cls.capacity, "an integer >= 1")
        if capacity != int(capacity) or capacity < 1:
            raise ConfigError(f"ZLAB_LOCAL_CAPACITY={env.get('ZLAB_LOCAL_CAPACITY')!r} must be an integer >= 1, e.g. 8")
        backend = (env.get("ZLAB_BACKEND") or cls.backend).strip()
        if backend not in ("synthetic", "diffusers"):
            raise ConfigError(f"ZLAB_BACKEND={backend[:40]!r} is not one of synthetic, diffusers")
        return cls(latency, int(capacity), backend)


def cache_root(env: Mapping[str, str] | None = None) -> Path:
    """zlab's cache directory: ZLAB_CACHE_DIR, else $XDG_CACHE_HOME/zlab, else ~/.cache/zlab."""
    env = environment() if env is None else env
    if env.get("ZLAB_CACHE_DIR"):
        return Path(env["ZLAB_CACHE_DIR"])
    return Path(env.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "zlab"


def in_report(env: Mapping[str, str] | None = None) -> bool:
    """Whether this process runs inside `zlab report` (its kernel sets ZLAB_REPORT): no terminal redraws there."""
    return (environment() if env is None else env).get("ZLAB_REPORT") is not None


def _number(name: str, raw: str | None, default: float, what: str) -> float:
    if raw is None or not raw.strip():
        return default
    try:
        number = float(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw[:40]!r} is not a number: give {what}") from None
    if not math.isfinite(number) or number < 0:
        raise ConfigError(f"{name}={raw[:40]!r} is not allowed: give {what}")
    return number


def is_loopback(url: str) -> bool:
    """Whether `url` points at this machine (the built-in or a `zlab serve` server)."""
    host = (urlsplit(url).hostname or "").lower()
    return host == "localhost" or host.startswith("127.") or host == "::1"
