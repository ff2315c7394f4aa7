"""Running the local server: `LocalServer` on a background thread, `serve` in the foreground.

`LocalServer` starts uvicorn on its own thread and event loop, so it works from scripts, tests and
Jupyter alike (where the notebook's loop is already running). It binds the socket itself, so with
`port=0` the real port is known at once (`base_url`), and every wait (start, stop) has a deadline.

>>> with LocalServer(latency=0.05, capacity=2) as srv:       # doctest: +SKIP
...     httpx.post(f"{srv.base_url}/v1/models/tongyi-mai/z-image/turbo/lora", json={"prompt": "a fox"})
"""

from __future__ import annotations

import socket
import sys
import threading
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, TextIO

from zlab.errors import ConfigError
from zlab.server.faults import NO_FAULTS, Faults
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
    tokens: Iterable[str | None], latency: str | float | Latency, capacity: int, expire_after: float | None
) -> ServerConfig:
    from zlab.server.app import ServerConfig

    return ServerConfig.make(tokens, latency=latency, capacity=capacity, expire_after=expire_after)


def _build(
    config: ServerConfig, faults: Faults, sock: socket.socket, log_config: Any
) -> tuple[ServerState, uvicorn.Server]:
    import uvicorn

    from zlab.server.app import ServerState, create_app

    state = ServerState(config, faults)
    host, port = sock.getsockname()[:2]
    settings = uvicorn.Config(
        create_app(state),
        host=host,
        port=port,
        http="h11",
        loop="asyncio",
        lifespan="off",
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
    as a number or text ("0.5", "0.5+0.2/mp"); at most `capacity` jobs run at once. `faults` sets fault
    injection (change it later with `set_faults`); `expire_after` makes ids older than that 404.
    The server keeps only hashes of the tokens, and its repr shows none.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        token: str | None = None,
        tokens: Iterable[str] = (),
        latency: str | float | Latency = 0.0,
        capacity: int = 4,
        faults: Faults = NO_FAULTS,
        expire_after: float | None = None,
    ) -> None:
        self.host, self.port = host, port
        # Settings are checked here, not on the server thread; the config keeps only token hashes.
        self._config = _config((token, *tokens), latency, capacity, expire_after)
        self._faults = faults
        self._state: ServerState | None = None
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    def start(self, timeout: float = 10.0) -> LocalServer:
        """Start listening; returns once the server accepts connections, or raises within `timeout`."""
        if self._thread is not None:
            return self
        sock = _bind(self.host, self.port)
        self.port = sock.getsockname()[1]
        self._state, self._server = _build(self._config, self._faults, sock, log_config=None)
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

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<LocalServer {self.base_url} {state}, {'token required' if self._config.token_hashes else 'no auth'}>"


def serve(
    host: str = "127.0.0.1",
    port: int = 8000,
    token: str | None = None,
    latency: str | float | Latency = 0.0,
    capacity: int = 4,
    faults: Faults = NO_FAULTS,
    expire_after: float | None = None,
    tokens: Iterable[str] = (),
    out: TextIO | None = None,
) -> None:
    """Run the local server in the foreground until Ctrl-C (`zlab serve`); prints one line with its URL."""
    config = _config((token, *tokens), latency, capacity, expire_after)
    sock = _bind(host, port)
    _, server = _build(config, faults, sock, log_config=_LOG_CONFIG)
    auth = "token required" if config.token_hashes else "no token needed"
    print(
        f"zlab local server on {_url(host, sock.getsockname()[1])} (synthetic images, {auth}, "
        f"latency {config.latency} s, capacity {capacity}); Ctrl-C stops it",
        file=out or sys.stdout,
        flush=True,
    )
    server.run(sockets=[sock])


_LOG_CONFIG: dict[str, Any] = {  # uvicorn's warnings and errors to stderr, and no access log
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(levelname)s: %(message)s"}},
    "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "plain", "stream": "ext://sys.stderr"}},
    "loggers": {"uvicorn": {"handlers": ["stderr"], "level": "WARNING", "propagate": False}},
}
