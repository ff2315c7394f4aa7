"""The local server's shared state: fixed settings (`ServerConfig`) and what changes live (`ServerState`).

`ServerState` is what the app and its owner (`LocalServer`, `serve`) share: the config, the
scheduler, the stats, the image cache, and the faults and quirks in force, which any thread may
switch. The app keeps no token: only SHA-256 hashes of accepted tokens.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import threading
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from zlab.server import synthetic
from zlab.server.backend import Renderer
from zlab.server.faults import NO_FAULTS, Dice, Faults
from zlab.server.quirks import Quirks

if TYPE_CHECKING:
    from zlab.server.dialect import Dialect
from zlab.server.regime import Regime
from zlab.server.scheduler import Latency, Scheduler, Stats

MAX_BODY = 1 << 20


def token_hash(token: str) -> str:
    """What the server keeps of a token: enough to recognise it, useless to replay."""
    return hashlib.sha256(token.encode()).hexdigest()[:32]


@dataclasses.dataclass(frozen=True)
class ServerConfig:
    """The server's fixed settings. Build with `ServerConfig.make(tokens=...)` to hash tokens."""

    token_hashes: frozenset[str] = frozenset()  # empty: no auth (any or no bearer token is accepted)
    capacity: int = 4
    latency: Latency = dataclasses.field(default_factory=Latency)
    expire_after: float | None = None
    max_body: int = MAX_BODY
    cache_bytes: int = 256 << 20
    renderer: Renderer | None = None  # None: synthetic images (see zlab.server.backend)
    regime: Regime = dataclasses.field(default_factory=Regime)  # other users, jitter, capacity steps, cold starts

    @classmethod
    def make(cls, tokens: Iterable[str | None] = (), latency: str | float | Latency = 0.0, **kw: Any) -> ServerConfig:
        """Settings from plain values: tokens are hashed at once (None and "" are skipped)."""
        hashes = frozenset(token_hash(t) for t in tokens if t)
        return cls(token_hashes=hashes, latency=Latency.parse(latency), **kw)


class ServerState:
    """What the app shares with its owner: config, scheduler, stats, image cache, current faults."""

    def __init__(self, config: ServerConfig, faults: Faults = NO_FAULTS, quirks: Quirks | None = None) -> None:
        self.config, self.stats = config, Stats()
        self.scheduler = Scheduler(
            self.stats,
            config.capacity,
            config.latency,
            config.expire_after,
            renderer=config.renderer,
            regime=config.regime,
        )
        self._executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="zlab-render")
        self.images = synthetic.ImageCache(self._executor, config.cache_bytes)
        self._lock = threading.Lock()
        self.loop: asyncio.AbstractEventLoop | None = None  # the server's loop, once it runs
        self.accepted = 0  # jobs accepted since the quirks were last set (for `balance_after`)
        self.gateway_turn = 0  # which gateway error `submit_5xx_after_accept` answers next
        self.set_faults(faults)
        self.set_quirks(quirks or Quirks())
        self.dialect: Dialect | None = None  # a generated dialect (`zlab.server.dialect`) speaks instead, when set

    @property
    def quirks(self) -> Quirks:
        """The protocol variants in force now."""
        return self._quirks

    def set_quirks(self, quirks: Quirks) -> None:
        """Switch protocol variants now (from any thread): the quirks' dice and balance restart."""
        with self._lock:
            self._quirks, self._quirk_dice = quirks, Dice(quirks.seed)
            self.accepted = self.gateway_turn = 0
        if self.loop is not None and not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self.scheduler.set_other_load, self.other_load)

    @property
    def other_load(self) -> float:
        """Other users' load: the `other_users` quirk when set, else the regime's."""
        return self._quirks.other_users or self.config.regime.other_load

    def quirk_draw(self) -> float:
        """The next uniform draw from the quirks' dice."""
        with self._lock:
            dice = self._quirk_dice
        return dice.draw()

    async def started(self) -> None:
        """Called on the server's loop as it starts: begin the regime's timers."""
        self.loop = asyncio.get_running_loop()
        self.scheduler.start()
        self.scheduler.set_other_load(self.other_load)

    @property
    def faults(self) -> Faults:
        """The fault settings in force now."""
        return self._faults

    def set_faults(self, faults: Faults) -> None:
        """Switch faults now (from any thread); the dice restart from `faults.seed`."""
        with self._lock:
            self._faults, self._dice = faults, Dice(faults.seed)

    def draw(self) -> float:
        """The next uniform draw in [0, 1) from the current dice."""
        with self._lock:
            dice = self._dice
        return dice.draw()

    def close(self) -> None:
        """Stop timers and the render threads (the server has stopped)."""
        self.scheduler.close()
        self._executor.shutdown(wait=False, cancel_futures=True)
        if self.config.renderer is not None:
            self.config.renderer.close()
