"""Running the local server: `LocalServer` on a background thread, `serve` in the foreground.

`LocalServer` starts uvicorn on its own thread and event loop, so it works from scripts, tests and
Jupyter alike (where the notebook's loop is already running). It binds the socket itself, so with
`port=0` the real port is known at once (`base_url`), and every wait (start, stop) has a deadline.

>>> with LocalServer(latency=0.05, capacity=2) as srv:       # doctest: +SKIP
...     httpx.post(f"{srv.base_url}/v1/models/tongyi-mai/z-image/turbo/lora", json={"prompt": "a fox"})

Protocol variants (`quirks=["not_ready_400", "output_list"]`, see zlab.server.quirks), faults
(`faults=Faults(...)`) and the queue regime (other users' load, jitter, a capacity schedule such as
`capacity="4,8@5"`, cold starts; see zlab.server.regime) are all set here; quirks and faults can
be switched live with `set_quirks` and `set_faults`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import socket
import sys
import threading
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, TextIO

from zlab.errors import ConfigError
from zlab.server.backend import Renderer
from zlab.server.dialect import Dialect
from zlab.server.faults import NO_FAULTS, Faults
from zlab.server.quirks import Quirks
from zlab.server.regime import Regime, format_capacity, parse_capacity
from zlab.server.scheduler import Latency, Stats

if TYPE_CHECKING:  # uvicorn and starlette load only when a server starts: `import zlab` stays light
    import uvicorn

    from zlab.server.app import ServerConfig, ServerState


def _bind(host: str, port: int) -> socket.socket:
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a quick restart on a fixed port must not fail
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        message = f"cannot listen on {host}:{port} ({exc.strerror}); choose another --port, or 0 for any free one"
        raise ConfigError(message) from exc
    return sock


def _url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _config(
    tokens: Iterable[str | None],
    latency: str | float | Latency,
    capacity: int | str,
    expire_after: float | None,
    renderer: Renderer | None = None,
    regime: Regime | None = None,
) -> ServerConfig:
    from zlab.server.state import ServerConfig

    start, steps = parse_capacity(capacity)  # "4,8@5,16@10": a starting capacity and later steps
    regime = regime or Regime()
    if steps:
        regime = regime.replace(capacity_steps=steps)
    if renderer is not None:  # a real backend runs as many jobs at once as it has pipelines
        start, regime = renderer.capacity, regime.replace(capacity_steps=())
    return ServerConfig.make(
        tokens, latency=latency, capacity=start, expire_after=expire_after, renderer=renderer, regime=regime
    )


def _build(
    config: ServerConfig, faults: Faults, quirks: Quirks, sock: socket.socket, log_config: Any
) -> tuple[ServerState, uvicorn.Server]:
    import uvicorn

    from zlab.server.app import create_app
    from zlab.server.state import ServerState

    state = ServerState(config, faults, quirks)
    host, port = sock.getsockname()[:2]
    settings = uvicorn.Config(
        create_app(state),
        host=host,
        port=port,
        http="h11",
        loop="asyncio",
        lifespan="on",  # the app's startup begins the queue regime's timers on the server's loop
        log_level="warning",
        log_config=log_config,
        access_log=False,  # an access log could leak ids; never headers
        proxy_headers=False,
        server_header=False,
        timeout_graceful_shutdown=2,
    )
    return state, uvicorn.Server(settings)


class LocalServer:
    """The RunComfy-compatible local server on a background thread; a context manager.

    `token` and `tokens` are the accepted bearer tokens (none: no auth). `latency` is seconds per job,
    as a number or text ("0.5", "0.5+0.2/mp"); at most `capacity` jobs run at once (or a schedule,
    "4,8@5,16@10": 4, then 8 from t = 5 s, 16 from t = 10 s). `faults` sets fault injection (change
    it later with `set_faults`); `expire_after` makes ids older than that 404. `quirks` names the
    protocol variants to speak (zlab.server.quirks; change them with `set_quirks`).
    The queue regime (zlab.server.regime): `other_load` (other users' jobs as a fraction of
    capacity), `burst_size` jobs of theirs every `burst_every` s, `other_seconds` (their run time),
    `jitter` (lognormal sigma of run times), `cold_factor` × slower for the first `cold_jobs` jobs
    (None: the first wave), `seed` for the regime's draws; or pass a whole `regime=Regime(...)`.
    `renderer` makes the images instead of the synthetic backend (e.g. the diffusers backend on your
    GPU, `zlab.server.diffusers_backend`); its capacity replaces `capacity`, and the server closes it.
    The server keeps only hashes of the tokens, and its repr shows none.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        token: str | None = None,
        tokens: Iterable[str] = (),
        latency: str | float | Latency = 0.0,
        capacity: int | str = 4,
        faults: Faults = NO_FAULTS,
        expire_after: float | None = None,
        renderer: Renderer | None = None,
        quirks: Iterable[str] | str | Quirks = (),
        regime: Regime | None = None,
        other_load: float = 0.0,
        burst_size: int = 0,
        burst_every: float = 0.0,
        other_seconds: float | None = None,
        jitter: float = 0.0,
        cold_factor: float = 1.0,
        cold_jobs: int | None = None,
        seed: int = 0,
    ) -> None:
        self.host, self.port = host, port
        # Settings are checked here, not on the server thread; the config keeps only token hashes.
        regime = regime or Regime(
            other_load=other_load,
            burst_size=burst_size,
            burst_every=burst_every,
            other_seconds=other_seconds,
            jitter=jitter,
            cold_factor=cold_factor,
            cold_jobs=cold_jobs,
            seed=seed,
        )
        self._config = _config((token, *tokens), latency, capacity, expire_after, renderer, regime)
        self._faults = faults
        self._quirks = Quirks.parse(quirks)
        self._state: ServerState | None = None
        self._dialect: Dialect | None = None
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    def start(self, timeout: float = 10.0) -> LocalServer:
        """Start listening; returns once the server accepts connections, or raises within `timeout`."""
        if self._thread is not None:
            return self
        sock = _bind(self.host, self.port)
        self.port = sock.getsockname()[1]
        self._state, self._server = _build(self._config, self._faults, self._quirks, sock, log_config=None)
        self._state.dialect = self._dialect
        server = self._server
        self._thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="zlab-server", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise ConfigError(f"the local server did not start on {self.base_url} within {timeout:g} s")
            time.sleep(0.005)
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Shut down: close connections, stop the thread (forcefully after `timeout`), free the cache."""
        if self._thread is None or self._server is None or self._state is None:
            return
        self._server.should_exit = True
        self._thread.join(timeout)
        if self._thread.is_alive():
            self._server.force_exit = True
            self._thread.join(timeout)
        self._state.close()
        self._thread = None

    def __enter__(self) -> LocalServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        """Whether the server thread is up."""
        return self._thread is not None and self._thread.is_alive()

    @property
    def base_url(self) -> str:
        """Where the server listens, with the real port, e.g. `http://127.0.0.1:54321` (no trailing slash)."""
        return _url(self.host, self.port)

    @property
    def stats(self) -> Stats:
        """Live counters and records (thread-safe): calls, faults, submissions, job times."""
        if self._state is None:
            raise ConfigError("the server has not been started: use `with LocalServer() as srv:` or .start()")
        return self._state.stats

    @property
    def faults(self) -> Faults:
        """The fault settings in force (or to be, before `start`)."""
        return self._state.faults if self._state is not None else self._faults

    def set_faults(self, faults: Faults | None = None, **changes: Any) -> Faults:
        """Switch fault injection now: a new `Faults`, and/or changes to the current one. Returns it."""
        new = (faults or self.faults).replace(**changes) if changes else (faults or Faults())
        self._faults = new
        if self._state is not None:
            self._state.set_faults(new)
        return new

    @property
    def quirks(self) -> Quirks:
        """The protocol variants in force (or to be, before `start`)."""
        return self._state.quirks if self._state is not None else self._quirks

    def set_quirks(self, quirks: Iterable[str] | str | Quirks | None = ()) -> Quirks:
        """Switch protocol variants now, e.g. `set_quirks(["not_ready_400", "html_503=0.2"])`; () for none.

        The quirks' dice, the `balance_after` count and the gateway-error turn start again. Returns them.
        """
        new = Quirks.parse(quirks)
        self._quirks = new
        if self._state is not None:
            self._state.set_quirks(new)
        return new

    @property
    def dialect(self) -> Dialect | None:
        """The generated dialect in force, if any (`zlab.server.dialect`)."""
        return self._state.dialect if self._state is not None else self._dialect

    def set_dialect(self, dialect: int | Dialect | None) -> Dialect | None:
        """Speak a generated dialect now (a seed, or a `Dialect`); None returns to the named quirks.

        Its file formats, redirects and queue positions are set as quirks (replacing those in force)."""
        new = Dialect.from_seed(dialect) if isinstance(dialect, int) else dialect
        self._dialect = new
        self.set_quirks(new.quirks if new is not None else ())
        if self._state is not None:
            self._state.dialect = new
        return new

    @property
    def regime(self) -> Regime:
        """The queue regime (fixed when the server is built); its `capacity_steps` follow `capacity`."""
        return self._config.regime

    @property
    def capacity(self) -> int:
        """How many jobs run at once from the start (`regime.capacity_steps` says how it changes later;
        `stats.started_mono` is their t = 0)."""
        return self._config.capacity

    def set_capacity(self, capacity: int, timeout: float = 10.0) -> None:
        """Change how many jobs run at once, now (returns once the server's loop applied it): running
        jobs beyond it finish, and no queued job starts until fewer run; a larger one starts queued jobs."""
        state = self._state
        if state is None or state.loop is None:
            raise ConfigError("the server has not been started: use `with LocalServer() as srv:` or .start()")

        async def apply() -> None:
            state.scheduler.set_capacity(capacity)

        asyncio.run_coroutine_threadsafe(apply(), state.loop).result(timeout)

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<LocalServer {self.base_url} {state}, {'token required' if self._config.token_hashes else 'no auth'}>"


def serve(
    host: str = "127.0.0.1",
    port: int = 8000,
    token: str | None = None,
    latency: str | float | Latency = 0.0,
    capacity: int | str = 4,
    faults: Faults = NO_FAULTS,
    expire_after: float | None = None,
    tokens: Iterable[str] = (),
    out: TextIO | None = None,
    renderer: Renderer | None = None,
    quirks: Iterable[str] | str | Quirks = (),
    regime: Regime | None = None,
) -> None:
    """Run the local server in the foreground until Ctrl-C (`zlab serve`); prints one line with its URL."""
    config = _config((token, *tokens), latency, capacity, expire_after, renderer, regime)
    parsed = Quirks.parse(quirks)
    if parsed.price is None:  # like the built-in server, publish what it bills: nothing (the price quirk overrides)
        parsed = dataclasses.replace(parsed, price=0.0)
    sock = _bind(host, port)
    state, server = _build(config, faults, parsed, sock, log_config=_LOG_CONFIG)
    auth = "token required" if config.token_hashes else "no token needed"
    if renderer is None:
        images = f"synthetic images, {auth}, latency {config.latency} s"
    else:
        facts = renderer.describe()
        images = f"{renderer.name} images: {facts.get('model')} on {facts.get('devices')}, {auth}"
    print(
        f"zlab local server on {_url(host, sock.getsockname()[1])} ({images}, "
        f"capacity {format_capacity(config.capacity, config.regime.capacity_steps)}"
        f"{f'; quirks: {parsed}' if parsed.names else ''}); Ctrl-C stops it",
        file=out or sys.stdout,
        flush=True,
    )
    try:
        server.run(sockets=[sock])
    finally:
        state.close()  # frees the renderer's devices and threads


_LOG_CONFIG: dict[str, Any] = {  # uvicorn's warnings and errors to stderr, and no access log
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(levelname)s: %(message)s"}},
    "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "plain", "stream": "ext://sys.stderr"}},
    "loggers": {"uvicorn": {"handlers": ["stderr"], "level": "WARNING", "propagate": False}},
}
